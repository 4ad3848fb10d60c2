"""``continuum``: plan placements offline, generate CRDs, run the operator, run the demo.

Exit codes of ``continuum plan``: 0 every workload placed, 2 some unschedulable, 1 invalid input
(the message names the file, the document and the field).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from continuum import __version__
from continuum import plan as plan_cli

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNSCHEDULABLE = 2


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="continuum",
        description="Place AI workloads across device, near-edge, regional MEC and cloud; explain why.",
    )
    parser.add_argument("--version", action="version", version=f"continuum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan_cli.add_parser(sub)

    crds = sub.add_parser("crds", help="generate the CustomResourceDefinitions from the API models")
    crds.add_argument("--out", type=Path, help="folder to write (default: print to stdout)")
    crds.add_argument("--chart", type=Path, help="also write the chart's copy under CHART/files/crds")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")

    run = sub.add_parser("run", help="run the operator (kubeconfig or in-cluster)")
    run.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        default=None,
        help="namespace to watch for EdgeWorkloads (repeatable; default: all) [CONTINUUM_NAMESPACES]",
    )
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("CONTINUUM_METRICS_PORT", "9090") or 9090),
        help="Prometheus /metrics port, 0 to disable [CONTINUUM_METRICS_PORT]",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=int(_env("CONTINUUM_LIVENESS_PORT", "8080") or 8080),
        help="kopf liveness endpoint port, 0 to disable [CONTINUUM_LIVENESS_PORT]",
    )
    run.add_argument(
        "--peering",
        default=_env("CONTINUUM_PEERING"),
        help="kopf peering name for HA; unset: standalone [CONTINUUM_PEERING]",
    )
    run.add_argument(
        "--worker-image",
        default=_env("CONTINUUM_WORKER_IMAGE"),
        help="default worker image [CONTINUUM_WORKER_IMAGE]",
    )
    run.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("CONTINUUM_GRACE_SECONDS", "60") or 60),
        help="how long a pool may be unhealthy before its workloads move [CONTINUUM_GRACE_SECONDS]",
    )
    run.add_argument(
        "--stabilization-seconds",
        type=float,
        default=float(_env("CONTINUUM_STABILIZATION_SECONDS", "300") or 300),
        help="how long a more preferred pool must stay feasible before fail-back "
        "[CONTINUUM_STABILIZATION_SECONDS]",
    )
    run.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("CONTINUUM_RESYNC_SECONDS", "10") or 10),
        help="how often every workload and pool is re-evaluated (grace, fail-back, readiness) [CONTINUUM_RESYNC_SECONDS]",
    )
    run.add_argument(
        "--worker-url-template",
        default=_env("CONTINUUM_WORKER_URL_TEMPLATE", "http://{service}.{namespace}.svc:{port}"),
        help="where workers are asked for their state's sync health; outside the cluster e.g. "
        "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy "
        "[CONTINUUM_WORKER_URL_TEMPLATE]",
    )
    run.add_argument(
        "--state-poll-seconds",
        type=float,
        default=float(_env("CONTINUUM_STATE_POLL_SECONDS", "30") or 30),
        help="how often workers with state are asked for their sync health [CONTINUUM_STATE_POLL_SECONDS]",
    )
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
    from continuum.controller.runner import RunOptions, run_operator

    namespaces = args.namespaces
    if namespaces is None and not args.all_namespaces:
        env = _env("CONTINUUM_NAMESPACES")
        namespaces = [n.strip() for n in env.split(",") if n.strip()] if env else None
    options = RunOptions(
        namespaces=None if args.all_namespaces else namespaces,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        peering=args.peering,
        worker_image=args.worker_image,
        grace_seconds=args.grace_seconds,
        stabilization_seconds=args.stabilization_seconds,
        kubeconfig=args.kubeconfig,
        verbose=args.verbose,
        resync_seconds=args.resync_seconds,
        worker_url_template=args.worker_url_template,
        state_poll_seconds=args.state_poll_seconds,
    )
    return run_operator(options)


def cmd_demo(args: argparse.Namespace) -> int:
    from continuum.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            keep_open=args.keep_open,
            grace_seconds=args.grace_seconds,
            examples=args.examples,
            live=not args.no_live,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"plan": plan_cli.cmd_plan, "crds": cmd_crds, "run": cmd_run, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
