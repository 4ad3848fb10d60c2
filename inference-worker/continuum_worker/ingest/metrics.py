"""Prometheus metrics of streaming ingestion (on the worker's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 50 µs .. 120 s: the stages span sub-millisecond compute to minutes of uplink outage
BUCKETS = (
    2.5e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 1.5e-2, 2e-2, 3e-2,
    5e-2, 7.5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
STAGES = ("source_to_receive", "receive_to_infer", "batch_wait", "compute", "to_durable", "to_published",
          "durable_to_published", "receive_to_published")  # fmt: skip


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.messages = Counter(
            "continuum_ingest_messages", "Source messages by outcome (ok, malformed, failed, duplicate)",
            ["source", "outcome"], registry=r,
        )  # fmt: skip
        self.stage = Histogram(
            "continuum_ingest_stage_seconds",
            "Per-stage latency of streamed messages: source_to_receive (publisher's clock: skew shows here only), "
            "receive_to_infer, batch_wait, compute, to_durable (result ready -> commit), to_published (result "
            "ready -> upstream PUBACK), durable_to_published (commit -> PUBACK, records published after their "
            "commit only), receive_to_published (these on this worker's monotonic clock)",
            ["stage"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("continuum_ingest_in_flight", "Source messages received and not yet acknowledged",
                               registry=r)  # fmt: skip
        self.pending = Gauge(
            "continuum_ingest_outbox_pending", "Outbox records not yet published upstream", registry=r
        )
        self.pending_bytes = Gauge("continuum_ingest_outbox_pending_bytes", "Payload bytes in the outbox not yet "
                                   "published", registry=r)  # fmt: skip
        self.last_seq = Gauge("continuum_ingest_outbox_last_seq", "Sequence number of the newest outbox record",
                              registry=r)  # fmt: skip
        self.published_seq = Gauge("continuum_ingest_outbox_published_seq", "Outbox watermark: every record up to "
                                   "it is acknowledged upstream", registry=r)  # fmt: skip
        self.dropped = Counter("continuum_ingest_outbox_dropped", "Outbox records dropped unpublished "
                               "(--outbox-full-policy drop-oldest)", registry=r)  # fmt: skip
        self.full_waits = Counter("continuum_ingest_outbox_full_waits", "Times intake waited for outbox space "
                                  "(--outbox-full-policy block)", registry=r)  # fmt: skip
        self.published = Counter("continuum_ingest_published", "Records published upstream by kind", ["kind"],
                                 registry=r)  # fmt: skip
        self.upstream_bytes = Counter("continuum_ingest_upstream_bytes", "Payload bytes published upstream by kind",
                                      ["kind"], registry=r)  # fmt: skip
        self.result_bytes = Counter("continuum_ingest_result_bytes", "Bytes the full results would take upstream "
                                    "(the raw baseline of edge filtering)", registry=r)  # fmt: skip
        self.republished = Counter("continuum_ingest_republished", "Records published again after a reconnect "
                                   "or restart (possible duplicates, marked redelivered)", registry=r)  # fmt: skip
        self.connected = Gauge("continuum_ingest_broker_connected", "1 while connected (role source or sink; endpoint HOST:PORT/TOPIC)",
                               ["role", "endpoint"], registry=r)  # fmt: skip
        self.commits = Histogram("continuum_ingest_outbox_commit_seconds", "Outbox group-commit durations",
                                 buckets=BUCKETS, registry=r)  # fmt: skip
