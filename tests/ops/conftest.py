"""Fixtures of the operability tests: the local servers' endpoints."""

from tests.runtime.conftest import kafka  # noqa: F401  (a fixture)
