"""The shared conformance corpus (../shared/conformance/public.jsonl, spec
section 13) against both implementations."""

from __future__ import annotations

import pytest

from tests.language.support import PUBLIC_CASES, SHARED, check_case, load_cases

if not SHARED.is_dir():
    pytest.skip(f"shared spec directory {SHARED} is absent; conformance corpus unavailable",
                allow_module_level=True)

CASES = load_cases(PUBLIC_CASES)


def test_corpus_is_not_empty():
    assert len(CASES) >= 50
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_public_case(impl, case):
    check_case(impl, case)
