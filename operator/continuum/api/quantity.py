"""Kubernetes resource quantities (``500m``, ``2``, ``512Mi``, ``1.5Gi``, ``1e9``) as plain numbers.

Only what placement needs: CPU in millicores and memory in bytes, both exact integers so that sums
and comparisons never drift. The grammar follows ``k8s.io/apimachinery/pkg/api/resource``.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from functools import lru_cache

_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([eE][+-]?[0-9]+)|[numkMGTPE]i?)?$"
_QUANTITY_RE = re.compile(
    r"^\+?(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$"
)


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity into an exact Decimal of base units."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        if value < 0:
            raise QuantityError(f"{value!r} is negative")
        return Decimal(str(value))
    text = str(value).strip()
    match = _QUANTITY_RE.match(text)
    if match is None:
        raise QuantityError(f"{value!r} is not a quantity (examples: 500m, 2, 512Mi, 1.5Gi)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise QuantityError(f"{value!r} is not a quantity") from exc
    if match["exp"]:
        return number * (Decimal(10) ** int(match["exp"][1:]))
    return number * _SUFFIX[match["suffix"] or ""]


@lru_cache(maxsize=4096)
def cpu_millis(value: str | int | float) -> int:
    """CPU quantity in millicores, rounded up (``"250m"`` → 250, ``"1.5"`` → 1500)."""
    return int((parse_quantity(value) * 1000).to_integral_value(rounding=ROUND_CEILING))


@lru_cache(maxsize=4096)
def memory_bytes(value: str | int | float) -> int:
    """Memory quantity in bytes, rounded up."""
    return int(parse_quantity(value).to_integral_value(rounding=ROUND_CEILING))


def format_cpu(millis: int) -> str:
    """Millicores as a quantity string (``1500`` → ``"1500m"``, ``2000`` → ``"2"``)."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(num_bytes: int) -> str:
    """Bytes as the largest exact binary quantity (``2**30`` → ``"1Gi"``)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if num_bytes >= unit and num_bytes % unit == 0:
            return f"{num_bytes // unit}{suffix}"
    return str(num_bytes)


def gib(num_bytes: int) -> float:
    return num_bytes / 2**30
