"""The operator's settings: one class, read from ``CONTINUUM_*`` environment variables, from which the
``continuum run`` flags are derived (a flag wins over its variable). docs/contracts.md and the chart's
values.yaml carry the same defaults; tests/controller/test_settings.py checks all four agree.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from continuum.placement.hysteresis import HysteresisPolicy
from continuum.render.worker import DEFAULT_WORKER_IMAGE

ENV_PREFIX = "CONTINUUM_"
DEFAULT_WORKER_URL_TEMPLATE = "http://{service}.{namespace}.svc:{port}"


class OperatorSettings(BaseSettings):
    """What ``continuum run`` is configured with (the chart renders these as environment variables)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)

    namespaces: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="namespaces to watch for EdgeWorkloads (comma-separated in the variable); unset: all",
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Prometheus /metrics port, 0 to disable"
    )
    liveness_port: int = Field(
        default=8080, ge=0, le=65535, description="kopf liveness endpoint (/healthz) port, 0 to disable"
    )
    peering: str | None = Field(
        default=None,
        min_length=1,
        description="kopf peering name for HA (one replica acts); unset: standalone",
    )
    worker_image: str = Field(
        default=DEFAULT_WORKER_IMAGE, min_length=1, description="worker image for workloads that name none"
    )
    grace_seconds: float = Field(
        default=60.0, ge=0, description="how long a pool may be unhealthy before its workloads move"
    )
    stabilization_seconds: float = Field(
        default=300.0, ge=0, description="how long a more preferred pool must stay feasible before fail-back"
    )
    min_cost_gain: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="a running workload moves for cost alone only if that saves at least this fraction",
    )
    resync_seconds: float = Field(
        default=10.0,
        gt=0,
        description="how often every workload and pool is re-evaluated (grace, fail-back, readiness)",
    )
    workers: int = Field(
        default=16, ge=1, description="concurrent reconciles (decisions themselves are serialized)"
    )
    state_poll_seconds: float = Field(
        default=30.0, gt=0, description="how often workers with state are asked for their sync health"
    )
    worker_url_template: str = Field(
        default=DEFAULT_WORKER_URL_TEMPLATE,
        min_length=1,
        description="where workers are asked for their state's sync health; outside the cluster e.g. "
        "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [n.strip() for n in value.split(",")]
        if isinstance(value, list):
            value = [n for n in value if n] or None
        return value

    @property
    def policy(self) -> HysteresisPolicy:
        return HysteresisPolicy(self.grace_seconds, self.stabilization_seconds, self.min_cost_gain)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


_TYPES = {int: int, float: float, str: str}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags (None) leave the variable or the default in charge."""
    for name, info in OperatorSettings.model_fields.items():
        if name == "namespaces":
            parser.add_argument(
                "--namespace",
                "-n",
                dest="namespaces",
                action="append",
                default=None,
                help=f"namespace to watch for EdgeWorkloads (repeatable; default: all) [{env_name(name)}]",
            )
            parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
            continue
        kind = info.annotation if info.annotation in _TYPES else str
        default = (
            "none"
            if info.default is None
            else format(info.default, "g")
            if isinstance(info.default, float)
            else info.default
        )
        parser.add_argument(
            flag_name(name),
            dest=name,
            type=_TYPES[kind],
            default=None,
            metavar=name.upper(),
            help=f"{info.description} (default: {default}) [{env_name(name)}]".replace("%", "%%"),
        )


def from_args(args: argparse.Namespace) -> OperatorSettings:
    """Flags over ``CONTINUUM_*`` variables over defaults; raises pydantic's ValidationError."""
    given = {
        name: getattr(args, name)
        for name in OperatorSettings.model_fields
        if name != "namespaces" and getattr(args, name, None) is not None
    }
    if getattr(args, "all_namespaces", False):
        given["namespaces"] = None
    elif getattr(args, "namespaces", None):
        given["namespaces"] = args.namespaces
    return OperatorSettings(**given)
