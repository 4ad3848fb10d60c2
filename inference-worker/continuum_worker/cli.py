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

LIST_FIELDS = ("load_model", "sync_to", "sync_peers")


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
    return parser


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
        _run(serve(settings))
    except ConfigError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
