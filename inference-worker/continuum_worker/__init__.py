"""Continuum inference worker: an Open Inference Protocol (KServe v2) server for edge nodes."""

__version__ = "0.1.0"
