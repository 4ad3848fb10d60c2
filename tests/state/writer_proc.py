"""Writer subprocess for the crash tests: writes, prints an ack only after the write is durable.

    python writer_proc.py STATE_DIR START_ID MODE

MODE ``single``: one durable commit per event; ``group``: batches of events share a commit;
``compact``: single writes plus a compaction after every 50. Each acked line is ``ack <id>``.
"""

from __future__ import annotations

import random
import sys

from continuum_worker.state.compaction import compact
from continuum_worker.state.doc import StateDoc
from continuum_worker.state.store import Store


def main() -> None:
    state_dir, next_id, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    doc = StateDoc(retention=1_000_000)
    store = Store(state_dir, commit_window=0.001 if mode == "group" else 0.0)
    store.open(doc.load)
    doc.on_update(store.submit)
    print("ready", flush=True)
    while True:
        batch = random.randint(1, 40) if mode == "group" else 1
        ids = list(range(next_id, next_id + batch))
        for i in ids:
            doc.append_event("acks", {"id": i, "pad": "x" * random.randint(0, 300)})
            doc.increment("writes")
        store.wait()
        sys.stdout.write("".join(f"ack {i}\n" for i in ids))
        sys.stdout.flush()
        next_id += batch
        if mode == "compact" and next_id % 50 < batch:
            compact(doc.doc, store)
            store.flush()
            print("compacted", flush=True)


if __name__ == "__main__":
    main()
