from decimal import Decimal

import pytest
from continuum.api.quantity import (
    QuantityError,
    cpu_millis,
    format_cpu,
    format_memory,
    memory_bytes,
    parse_quantity,
)
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "millis"),
    [("500m", 500), ("2", 2000), ("1.5", 1500), ("0.1", 100), (4, 4000), ("250000u", 250)],
)
def test_cpu_millis(text, millis):
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "num"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("1e9", 10**9),
        ("128974848", 128974848),
    ],
)
def test_memory_bytes(text, num):
    assert memory_bytes(text) == num


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "-1", "5 Gi", "1Gb", "Mi"])
def test_invalid_quantities_raise(bad):
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_rounds_up_fractional_millicores():
    assert cpu_millis("0.0001") == 1


@given(st.integers(min_value=0, max_value=10**7))
def test_cpu_roundtrip(millis):
    assert cpu_millis(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=2**50))
def test_memory_roundtrip(num):
    assert memory_bytes(format_memory(num)) == num
    assert parse_quantity(format_memory(num)) == Decimal(num)
