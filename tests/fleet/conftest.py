"""The operator harness (emulator + operator over HTTP) of tests/operator, for the fleet tests."""

from tests.operator.conftest import harness  # noqa: F401  (the fixture)
