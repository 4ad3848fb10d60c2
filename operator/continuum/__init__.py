"""Continuum: place AI workloads across the compute continuum."""

__version__ = "0.1.0"
