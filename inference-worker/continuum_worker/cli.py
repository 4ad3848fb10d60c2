"""``continuum-worker``: serve a model over the Open Inference Protocol, or build a test model.

Every flag of ``serve`` is also read from a ``CONTINUUM_*`` variable (docs/contracts.md); a flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuum_worker import __version__

if TYPE_CHECKING:
    from continuum_worker.server import WorkerSettings


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


KINDS = ("mlp", "fixed", "dtypes", "slow", "heavy")  # continuum_worker.modelgen.KINDS (onnx not imported here)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continuum-worker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"continuum-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model (KServe v2 / Triton HTTP)")
    add = serve.add_argument
    add("--model-name", default=_env("CONTINUUM_MODEL_NAME"), help="[CONTINUUM_MODEL_NAME] (required)")
    add(
        "--model-uri",
        default=_env("CONTINUUM_MODEL_URI"),
        help="path, file://, http(s):// [CONTINUUM_MODEL_URI] (required)",
    )
    add("--model-version", default=_env("CONTINUUM_MODEL_VERSION", "1"), help="[CONTINUUM_MODEL_VERSION]")
    add(
        "--model-sha256",
        default=_env("CONTINUUM_MODEL_SHA256"),
        help="checksum to verify [CONTINUUM_MODEL_SHA256]",
    )
    add(
        "--backends",
        default=_env("CONTINUUM_BACKENDS"),
        help="preference list, ';'-separated, e.g. 'onnxruntime:tensorrt,cuda,openvino,cpu;openvino:GPU,CPU' "
        "[CONTINUUM_BACKENDS]",
    )
    add(
        "--fallback-model-uri",
        default=_env("CONTINUUM_FALLBACK_MODEL_URI"),
        help="[CONTINUUM_FALLBACK_MODEL_URI]",
    )
    add("--host", default=_env("CONTINUUM_HOST", "0.0.0.0"), help="[CONTINUUM_HOST]")
    add("--port", type=int, default=int(_env("CONTINUUM_PORT", "8000") or 8000), help="[CONTINUUM_PORT]")
    add(
        "--upstream",
        default=_env("CONTINUUM_UPSTREAM"),
        help="base URL of an upstream v2 server [CONTINUUM_UPSTREAM]",
    )
    add(
        "--upstream-timeout-ms",
        type=float,
        default=float(_env("CONTINUUM_UPSTREAM_TIMEOUT_MS", "50") or 50),
        help="[CONTINUUM_UPSTREAM_TIMEOUT_MS]",
    )
    add(
        "--max-batch-size",
        type=int,
        default=int(_env("CONTINUUM_MAX_BATCH_SIZE", "0") or 0),
        help="0: off [CONTINUUM_MAX_BATCH_SIZE]",
    )
    add(
        "--max-queue-delay-us",
        type=int,
        default=int(_env("CONTINUUM_MAX_QUEUE_DELAY_US", "500") or 500),
        help="[CONTINUUM_MAX_QUEUE_DELAY_US]",
    )
    add(
        "--model-cache-dir",
        type=Path,
        default=Path(_env("CONTINUUM_MODEL_CACHE_DIR", "/tmp/continuum-models") or "/tmp/continuum-models"),
        help="[CONTINUUM_MODEL_CACHE_DIR]",
    )
    add(
        "--state-dir",
        type=Path,
        default=_env("CONTINUUM_STATE_DIR"),
        help="CRDT state volume [CONTINUUM_STATE_DIR]",
    )
    add("--state-token", default=_env("CONTINUUM_STATE_TOKEN"), help="[CONTINUUM_STATE_TOKEN]")
    add(
        "--sync-to",
        default=_env("CONTINUUM_SYNC_TO"),
        help="comma-separated upstream URLs [CONTINUUM_SYNC_TO]",
    )
    add(
        "--sync-peers",
        default=_env("CONTINUUM_SYNC_PEERS"),
        help="comma-separated peer URLs [CONTINUUM_SYNC_PEERS]",
    )
    add(
        "--state-retention",
        type=int,
        default=int(_env("CONTINUUM_STATE_RETENTION", "1000") or 1000),
        help="events kept per log [CONTINUUM_STATE_RETENTION]",
    )
    add(
        "--event-threshold",
        type=float,
        default=float(_env("CONTINUUM_EVENT_THRESHOLD", "0.9") or 0.9),
        help="scores above it are recorded as events [CONTINUUM_EVENT_THRESHOLD]",
    )
    add(
        "--replica-id",
        default=_env("CONTINUUM_REPLICA_ID"),
        help="this replica's name (pod name) [CONTINUUM_REPLICA_ID]",
    )
    add(
        "--admin-token",
        default=_env("CONTINUUM_ADMIN_TOKEN"),
        help="bearer token for model (re)loads [CONTINUUM_ADMIN_TOKEN]",
    )
    add(
        "--threads",
        type=int,
        default=int(_env("CONTINUUM_THREADS", "2") or 2),
        help="executor threads [CONTINUUM_THREADS]",
    )
    add(
        "--intra-op-threads",
        type=int,
        default=int(_env("CONTINUUM_INTRA_OP_THREADS", "0") or 0),
        help="onnxruntime threads per run; 0: usable CPUs (cgroup quota) / --threads [CONTINUUM_INTRA_OP_THREADS]",
    )
    add("--log-level", default=_env("CONTINUUM_LOG_LEVEL", "INFO"), help="[CONTINUUM_LOG_LEVEL]")

    make = sub.add_parser("make-model", help="write a tiny ONNX test model (needs the onnx package)")
    make.add_argument("kind", choices=KINDS)
    make.add_argument("out", type=Path)
    make.add_argument("--seed", type=int, default=0)
    return parser


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    from continuum_worker.backends import parse_backends
    from continuum_worker.server import WorkerSettings

    missing = [
        flag
        for flag, value in (("--model-name", args.model_name), ("--model-uri", args.model_uri))
        if not value
    ]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or CONTINUUM_MODEL_NAME / CONTINUUM_MODEL_URI)")
    parse_backends(args.backends)  # fail on a typo before anything loads
    if args.max_batch_size < 0 or args.max_queue_delay_us < 0:
        raise ValueError("--max-batch-size and --max-queue-delay-us must be >= 0")
    if args.threads < 1 or args.intra_op_threads < 0:
        raise ValueError("--threads must be >= 1 and --intra-op-threads >= 0")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port")
    return WorkerSettings(
        model_name=args.model_name,
        model_uri=args.model_uri,
        model_version=args.model_version,
        model_sha256=args.model_sha256,
        backends=args.backends,
        fallback_model_uri=args.fallback_model_uri,
        host=args.host,
        port=args.port,
        upstream=args.upstream,
        upstream_timeout_ms=args.upstream_timeout_ms,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        model_cache_dir=args.model_cache_dir,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        state_token=args.state_token,
        sync_to=_list(args.sync_to),
        sync_peers=_list(args.sync_peers),
        state_retention=args.state_retention,
        event_threshold=args.event_threshold,
        replica_id=args.replica_id,
        admin_token=args.admin_token,
        threads=args.threads,
        intra_op_threads=args.intra_op_threads,
    )


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (about a third less per-request overhead here), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make-model":
        from continuum_worker.modelgen import make

        print(make(args.kind, args.out, seed=args.seed))
        return 0
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"continuum-worker: error: {exc}", file=sys.stderr)
        return 2
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
