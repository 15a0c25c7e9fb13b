"""Fixtures of the rule-language tests. Helpers shared by several modules live
in tests/language/support.py."""

from __future__ import annotations

import pytest

from tests.language.support import IMPLS


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    """Each implementation under test: "reference" and "compiled"."""
    return request.param
