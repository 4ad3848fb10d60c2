"""The worker with its outbox commits held while a gate file exists: a result handed to the outbox is then
published (``--ingest-publish-after written``) but not durable, the window the fast-path tests aim at.

    python tests/ingest/gated_worker.py --commit-gate PATH serve ...   (PYTHONPATH=inference-worker)

Only the commit waits (before its transaction begins); everything else is the real worker."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from continuum_worker import cli
from continuum_worker.ingest import outbox


def main() -> int:
    argv = sys.argv[1:]
    i = argv.index("--commit-gate")
    gate = argv[i + 1]
    del argv[i : i + 2]
    commit = outbox.Outbox._commit

    def gated(self: outbox.Outbox, db: Any, jobs: Any) -> Any:
        while os.path.exists(gate):
            time.sleep(0.005)
        return commit(self, db, jobs)

    outbox.Outbox._commit = gated  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
