"""The validator the pre-filter relies on: it may only call an input a valid
JSON object when orjson agrees (else malformed input could be skipped
instead of reported)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _core


def orjson_object(b: bytes) -> bool:
    try:
        return isinstance(orjson.loads(b), dict)
    except orjson.JSONDecodeError:
        return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**18, 10**18) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=5), json_values, max_size=5), indent=st.sampled_from([None, 1]))
def test_valid_documents_are_accepted(doc, indent):
    raw = json.dumps(doc, ensure_ascii=False, indent=indent).encode()
    if b"\\" in raw:
        return   # the pre-filter never validates inputs with escapes
    assert _core.is_json_object(raw)


@settings(max_examples=3000, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
       cut=st.integers(0, 200), junk=st.binary(max_size=3))
def test_never_accepts_what_orjson_rejects(doc, cut, junk):
    raw = json.dumps(doc, ensure_ascii=False).encode()
    mutated = raw[:cut] + junk + raw[cut:]
    if b"\\" in mutated:
        return
    if _core.is_json_object(mutated):
        assert orjson_object(mutated), mutated


@pytest.mark.parametrize("raw", [
    b'{"a": 01}', b'{"a": 1.}', b'{"a": .5}', b'{"a": +1}', b'{"a": NaN}', b'{"a": tru}',
    b'{"a": 1,}', b'{"a" 1}', b'{,}', b'{"a": [1, 2,]}', b'{"a": "\x01"}', b'{"a": "\xff"}',
    b'{"a": "\xed\xa0\x80"}', b'{"a": "\xc0\xaf"}', b'[1]', b'"x"', b'{} {}', b'{"a": 1}}',
    b'{"a": [1}', b'', b'   ',
])
def test_rejects_malformed(raw):
    assert not _core.is_json_object(raw)
    assert not orjson_object(raw)


def test_depth_limit():
    deep = b'{"a":' + b"[" * 400 + b"]" * 400 + b"}"
    assert not _core.is_json_object(deep)
    ok = b'{"a":' + b"[" * 398 + b"]" * 398 + b"}"
    assert _core.is_json_object(ok)


def test_malformed_input_is_reported_not_skipped_by_the_prefilter():
    import engine
    rule = engine.compile_rule(None, "notify_data.header.product_id = 'P0'")
    bad = b'{"notify_data": {"header": {"product_id": "P1"}}, oops}'
    assert isinstance(rule.apply_raw(bad), engine.MalformedEvent)
    rs = engine.compile_ruleset([engine.RuleSpec(1, None, "a = 'x'", "device.property", "report")])
    assert isinstance(rs.evaluate_raw(b'not json'), engine.MalformedEvent)
    assert rs.evaluate_raw(b'{"a": "y"}') == []
