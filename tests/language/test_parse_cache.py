"""The parser's caches: clause texts that differ only inside their string
literals share one parse (engine/language/parser.py `_SHAPES`), and checked
rules are kept (`parse_rule`). Whatever is cached, each text must get exactly
the tree and the errors a fresh parse gives it."""

from __future__ import annotations

import random

import pytest

from engine.language import RuleSyntaxError, parse_rule, parser

CLAUSES = [
    ("where", "notify_data.header.product_id = '{}'"),
    ("where", "a = '{}' AND (b LIKE '{}%' OR c IN ('{}', 'x'))\n  AND d = '{}'"),
    ("where", "CASE WHEN a = '{}' THEN 'y' ELSE '{}' END = 'y'"),
    ("select", "'{}' AS k, upper('{}') AS u, notify_data.header.device_id"),
    ("select", "FOREACH notify_data.body.services AS s DO s.service_id AS id "
               "INCASE s.service_id = '{}'"),
]
# Same lengths as the first text's literals, but quotes, keywords, quoted-name
# quotes, comment dashes and non-ASCII inside them.
FILLERS = ["ab", "''", "--", '""', "OR", "é中", "x'", "a\"", " )"]


def _fresh(text: str, clause: str) -> str:
    """repr (positions included) or the error of an uncached parse."""
    shapes = dict(parser._SHAPES)
    parser._SHAPES.clear()
    parser._parse_text.cache_clear()
    try:
        return _result(text, clause)
    finally:
        parser._SHAPES.clear()
        parser._SHAPES.update(shapes)
        parser._parse_text.cache_clear()


def _result(text: str, clause: str) -> str:
    try:
        node = parser.parse_where(text) if clause == "where" else parser.parse_select(text)
        return repr(node)
    except RuleSyntaxError as e:
        return f"error: {e}"


@pytest.mark.parametrize(("clause", "template"), CLAUSES)
def test_texts_of_one_shape_parse_as_a_fresh_parse_would(clause, template):
    rnd = random.Random(template)
    first = template.format(*(["zz"] * template.count("{}")))
    _result(first, clause)          # the shape is now cached
    assert any(k[1] == clause for k in parser._SHAPES)
    for _ in range(40):
        text = template.format(*(rnd.choice(FILLERS) for _ in range(template.count("{}"))))
        parser._parse_text.cache_clear()
        cached = _result(text, clause)
        assert cached == _fresh(text, clause), text


def test_a_cached_shape_does_not_make_a_bad_text_good():
    parser.parse_where("a = 'ok'")
    for bad in ("a = 'o\x01'", "a = 'o''", "a = 'o\n'", "a = 'o' --"):
        with pytest.raises(RuleSyntaxError):
            parser.parse_where(bad)


def test_string_values_and_positions_come_from_the_text_itself():
    parser.parse_where("x = 'aaaa' OR y = 'bbbb'")
    tree = parser.parse_where("x = 'it''s' OR y = 'q\"-é'")
    assert tree.left.right.value == "it's" and tree.left.right.pos == (1, 5)
    assert tree.right.right.value == 'q"-é' and tree.right.right.pos == (1, 20)


def test_checked_rules_are_cached_and_errors_are_not():
    assert parse_rule("a", "b = 'c'") is parse_rule("a", "b = 'c'")
    with pytest.raises(RuleSyntaxError) as first:
        parse_rule(None, "b = ")
    with pytest.raises(RuleSyntaxError) as second:
        parse_rule(None, "b = ")
    assert first.value is not second.value
    # a value of the wrong type is named, not a TypeError of the cache
    with pytest.raises(RuleSyntaxError, match="must be a string"):
        parse_rule(None, ["b = 'c'"])
