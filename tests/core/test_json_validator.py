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


# Strings are classified 16 bytes at a time (SSE2) with a byte loop for the
# tail: put every kind of byte at every position of strings around those
# boundaries, and compare with orjson.
@pytest.mark.parametrize("length", [0, 1, 14, 15, 16, 17, 31, 32, 33, 47])
@pytest.mark.parametrize("bad", [b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"\xe2\x82",
                                 b"\xf0\x9f\x98\x80", b'"', b"x"])
def test_string_bytes_at_every_position(length, bad):
    for pos in range(length + 1):
        body = b"a" * pos + bad + b"a" * (length - pos)
        for raw in (b'{"k":"' + body + b'"}', b'{"' + body + b'":1}', b'{"k":"' + body + b'"',
                    b'{"k":["' + body + b'", 1]}' + b" " * (length % 3)):
            assert _core.is_json_object(raw) == orjson_object(raw), raw


@settings(max_examples=1500, deadline=None)
@given(prefix=st.text(max_size=40), junk=st.binary(max_size=4), suffix=st.text(max_size=40))
def test_long_strings_agree_with_orjson(prefix, junk, suffix):
    raw = b'{"k": "' + prefix.encode() + junk + suffix.encode() + b'", "n": 1}'
    if b"\\" in raw:
        return
    assert _core.is_json_object(raw) == orjson_object(raw), raw
