"""Streaming ingestion at the edge: MQTT sources, durable store-and-forward of results (docs/streaming.md)."""

from continuum_worker.ingest.uri import EndpointError, MqttEndpoint, parse_endpoint

__all__ = ["EndpointError", "MqttEndpoint", "parse_endpoint"]
