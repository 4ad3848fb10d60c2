"""``continuum``: plan placements offline, generate CRDs, run the operator, run the demo.

Exit codes of ``continuum plan``: 0 every workload placed, 2 some unschedulable, 1 invalid input
(the message names the file, the document and the field).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from continuum import __version__
from continuum import explain as explain_cli
from continuum import plan as plan_cli

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNSCHEDULABLE = 2


EXTRA_HINT = "pip install 'continuum[{extra}]'"


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The ``run`` flags, derived from the operator's settings class (needs the operator extra)."""
    try:
        from continuum.controller.settings import add_arguments
    except ImportError as exc:  # base install: plan and crds work; run needs the operator extra
        run.epilog = f"unavailable: {exc}; install the operator extra: {EXTRA_HINT.format(extra='operator')}"
        return
    add_arguments(run)


def build_parser(run_flags: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser; ``run_flags=False`` leaves out the ``run`` flags, whose settings class imports
    pydantic-settings and the controller (a third of ``continuum plan``'s start-up)."""
    parser = argparse.ArgumentParser(
        prog="continuum",
        description="Place AI workloads across device, near-edge, regional MEC and cloud; explain why.",
    )
    parser.add_argument("--version", action="version", version=f"continuum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan_cli.add_parser(sub)
    explain_cli.add_parser(sub)

    crds = sub.add_parser("crds", help="generate the CustomResourceDefinitions from the API models")
    crds.add_argument("--out", type=Path, help="folder to write (default: print to stdout)")
    crds.add_argument("--chart", type=Path, help="also write the chart's copy under CHART/files/crds")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")

    run = sub.add_parser(
        "run",
        help="run the operator (kubeconfig or in-cluster)",
        description="Run the operator. Every setting is also read from the CONTINUUM_* environment "
        "variable named in brackets; a flag wins over its variable.",
    )
    if run_flags:
        _add_run_arguments(run)
    run.add_argument(
        "--kubeconfig", default=None, help="kubeconfig path (default: in-cluster, then $KUBECONFIG)"
    )
    run.add_argument("--verbose", "-v", action="store_true")

    demo = sub.add_parser(
        "demo",
        help="run the operator on the examples against an embedded API emulator (no cluster needed)",
    )
    demo.add_argument(
        "--keep-open",
        action="store_true",
        help="keep the emulator running at the end so kubectl can be used against it",
    )
    demo.add_argument(
        "--grace-seconds", type=float, default=3.0, help="re-placement grace period for the demo"
    )
    demo.add_argument("--examples", type=Path, default=None, help="examples folder (default: the repo's)")
    demo.add_argument("--no-live", action="store_true", help="plain output instead of a live table")
    demo.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="tell the story on this real control plane with kwok nodes (`make cluster` prints one) "
        "instead of the embedded emulator",
    )
    return parser


# --- crds -------------------------------------------------------------------------------------------


def cmd_crds(args: argparse.Namespace) -> int:
    from continuum.api.crd import CHART_CRD_DIR, render_crds, write_crds

    rendered = render_crds()
    if args.check:
        stale = []
        for folder in [args.out or Path("crds")] + ([args.chart / CHART_CRD_DIR] if args.chart else []):
            for name, text in rendered.items():
                path = folder / name
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
        if stale:
            print(
                "error: CRDs drifted from the models; run `make crds`: " + ", ".join(stale), file=sys.stderr
            )
            return 1
        return 0
    if args.out is None and args.chart is None:
        print("---\n".join(rendered.values()), end="")
        return 0
    for path in write_crds(args.out or Path("crds"), args.chart):
        print(f"wrote {path}")
    return 0


# --- run / demo (need the operator / demo extras) -------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from continuum.controller.runner import run_operator
        from continuum.controller.settings import env_name, flag_name, from_args
    except ImportError as exc:
        print(
            f"error: {exc}; `continuum run` needs the operator extra: {EXTRA_HINT.format(extra='operator')}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        settings = from_args(args)
    except ValidationError as exc:
        print("error: invalid operator settings", file=sys.stderr)
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            print(f"  {flag_name(name)} / {env_name(name)}: {err['msg']}", file=sys.stderr)
        return EXIT_INVALID
    _use_uvloop()
    return run_operator(settings, kubeconfig=args.kubeconfig, verbose=args.verbose)


def _use_uvloop() -> None:
    """uvloop's event loop when installed (as `kopf run` does): the operator's CPU per workload is mostly
    the loop, aiohttp and kopf's per-event work, and uvloop's loop and transports cost less of it."""
    try:
        import asyncio

        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_demo(args: argparse.Namespace) -> int:
    try:  # not shipped in the operator image: the demo extra installs the emulator's kmock
        from continuum_demo.demo import DemoOptions, run_demo
    except ImportError as exc:
        print(
            f"error: {exc}; `continuum demo` needs the demo extra: {EXTRA_HINT.format(extra='demo')}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return run_demo(
        DemoOptions(
            keep_open=args.keep_open,
            grace_seconds=args.grace_seconds,
            examples=args.examples,
            live=not args.no_live,
            kubeconfig=args.kubeconfig,
        )
    )


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word not starting with "-"), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    # only `run` (and help or errors without a command) needs the run flags
    args = build_parser(run_flags=_command_of(words) in (None, "run")).parse_args(words)
    handler = {
        "plan": plan_cli.cmd_plan,
        "explain": explain_cli.cmd_explain,
        "crds": cmd_crds,
        "run": cmd_run,
        "demo": cmd_demo,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
