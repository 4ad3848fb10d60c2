"""``continuum-worker``: serve models over the Open Inference Protocol (HTTP and gRPC).

Every flag of ``serve`` is a field of :class:`continuum_worker.settings.WorkerSettings` and is also
read from its ``CONTINUUM_*`` variable; a flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, get_args

from continuum_worker import __version__

LIST_FIELDS = ("load_model", "sync_to", "sync_peers", "ingest")


def build_parser() -> argparse.ArgumentParser:
    from continuum_worker.settings import WorkerSettings, default_text, env_var, flag

    parser = argparse.ArgumentParser(prog="continuum-worker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"continuum-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve models (KServe v2 / Triton HTTP and gRPC)")
    for name, info in WorkerSettings.model_fields.items():
        # defaults stay unset here: pydantic-settings fills them from the variable or the field
        extra: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
        if name in LIST_FIELDS:
            extra["action"] = "append"
        choices = get_args(info.annotation)
        if choices and all(isinstance(c, str) for c in choices):
            extra["choices"] = choices
        serve.add_argument(
            flag(name), help=f"{info.description} [{env_var(name)}; default: {default_text(name)}]", **extra
        )
    prof = sub.add_parser("profile", help="write a drift reference profile from sample data (docs/drift.md)")
    prof.add_argument("--model", required=True, help="ONNX model file the data is run through")
    prof.add_argument("--data", required=True, help=".npy array or numeric .csv, one sample per row")
    prof.add_argument("--out", required=True, help="where the reference profile (JSON) goes")
    prof.add_argument("--input", default=None, help="the model input the data feeds (when it has several)")
    prof.add_argument("--model-name", default=None, help="model name recorded in the profile (default: file stem)")
    prof.add_argument("--model-version", default="1", help="model version recorded in the profile")
    prof.add_argument("--k", type=int, default=1600, help="KLL sketch size (default 1600: 0.23 %% rank error)")
    prof.add_argument("--max-features", type=int, default=256, help="as the worker's --drift-max-features")
    prof.add_argument("--batch", type=int, default=256, help="rows per model run")
    return parser


def profile_command(args: argparse.Namespace) -> int:
    """``continuum-worker profile``: stderr and exit 2 on bad input, the summary line on stdout."""
    import json
    from pathlib import Path

    from continuum_worker.drift.reference import ProfileError, build_reference

    try:
        profile = build_reference(
            Path(args.model), Path(args.data), name=args.model_name, version=args.model_version,
            input_name=args.input, k=args.k, max_features=args.max_features, batch=args.batch,
        )  # fmt: skip
        text = json.dumps(profile.to_json(), separators=(",", ":"))
        Path(args.out).write_text(text)
    except ProfileError as exc:
        print(f"continuum-worker profile: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"continuum-worker profile: error: --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {profile.rows} rows, {len(profile.sketches)} features, {len(text)} bytes")
    return 0


def settings_from_args(args: argparse.Namespace) -> Any:
    """The settings from the flags given and the environment; ``ValueError`` names the flag."""
    from pydantic import ValidationError

    from continuum_worker.settings import WorkerSettings, flag

    given = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        return WorkerSettings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = flag(str(err["loc"][0])) if err["loc"] else "configuration"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}" if err["loc"] else
                            err["msg"].removeprefix("Value error, "))
        raise ValueError("; ".join(problems)) from None


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (about a third less per-request overhead here), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "profile":
        return profile_command(args)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=str(settings.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from continuum_worker.models import ModelError
    from continuum_worker.server import ConfigError, serve

    try:
        _run(serve(settings, freeze_heap=True))
    except ConfigError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
