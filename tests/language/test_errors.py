"""Compile errors a person can act on: the right class, the clause, a 1-based
line and column pointing at the culprit, a caret snippet, and a message that
says what was expected (spec section 11)."""

from __future__ import annotations

import pytest

import engine
from engine.language import RuleError, RuleSemanticError, RuleSyntaxError, parse_rule

# (select, where, kind, clause, line, column, words the message must contain)
ERRORS = [
    # parse errors
    ("*", "a = 1 AND", "parse", "where", 1, 10, ["end of clause", "expected", "name"]),
    ("*", "a >", "parse", "where", 1, 4, ["end of clause", "expected", "number"]),
    ("*", "a = 'abc", "parse", "where", 1, 5, ["unterminated", "'"]),
    ("*", 'a = "abc', "parse", "where", 1, 5, ["unterminated", '"']),
    ("*", "data.温度 > 1", "parse", "where", 1, 6, ["温", "quote"]),
    ("*", "a = 1 -- note", "parse", "where", 1, 7, ["--", "comment"]),
    ("*", "a = 12abc", "parse", "where", 1, 5, ["number"]),
    ("*", "a = 5.", "parse", "where", 1, 5, ["number"]),
    ("*", "a % 2 = 0", "parse", "where", 1, 3, ["%"]),
    ("*", "a == 1", "parse", "where", 1, 4, ["="]),
    ("*", "(a = 1", "parse", "where", 1, 7, ["expected", "')'"]),
    ("*", "a IN ()", "parse", "where", 1, 7, ["')'", "expected"]),
    ("*", "in = 1", "parse", "where", 1, 1, ["keyword", '"in"']),
    ("*", "a[1.5] = 1", "parse", "where", 1, 3, ["index", "1.5"]),
    ("*", "a[-1] = 1", "parse", "where", 1, 3, ["expected", "number"]),
    ("*", "a = b = c", "parse", "where", 1, 7, ["'='", "expected"]),
    ("*", 'a = ""', "parse", "where", 1, 5, ['""']),
    ("*", "a = 1 FROM t", "parse", "where", 1, 7, ["FROM"]),
    ("*", "from(1) = 1", "parse", "where", 1, 1, ["FROM"]),
    ("*", "WHERE", "parse", "where", 1, 6, ["end of clause", "expected"]),
    ("SELECT", "", "parse", "select", 1, 7, ["end of clause", "expected"]),
    ("a AS in", "", "parse", "select", 1, 6, ["keyword", '"in"']),
    ("a AS", "", "parse", "select", 1, 5, ["expected", "name"]),
    ("a x", "", "parse", "select", 1, 3, ["'x'", "AS"]),
    ("a AS a.b", "", "parse", "select", 1, 7, ["'.'"]),
    ("*", " " * 10 + "x" * 2491, "parse", "where", 1, 2501, ["2501", "2500"]),
    # semantic errors
    ("*", "FOO(1) = 1", "semantic", "where", 1, 1, ["unknown function", "FOO"]),
    ("*", "UPPPER(s) = 1", "semantic", "where", 1, 1, ["unknown function", "did you mean UPPER"]),
    ("*", "x = CONCAT('a')", "semantic", "where", 1, 5, ["CONCAT", "2", "got 1"]),
    ("*", "GET_SERVICE('a', 'b') IS NULL", "semantic", "where", 1, 18, ["fuzzy", "true"]),
    ("*", "a IN (1, 'x')", "semantic", "where", 1, 7, ["mixes"]),
    ("*", "a IN (b)", "semantic", "where", 1, 7, ["constant"]),
    ("*", "a = 99999999999999999999", "semantic", "where", 1, 5, ["64-bit"]),
    ("5", "", "semantic", "select", 1, 1, ["alias", "AS"]),
    ("CONCAT('a', 'b')", "", "semantic", "select", 1, 1, ["function", "AS"]),
    ("data.msg-type", "", "semantic", "select", 1, 1, ["AS", 'data."msg-type"']),
    ("* AS x", "", "semantic", "select", 1, 6, ["*", "alias"]),
    ("a AS " + "z" * 257, "", "semantic", "select", 1, 6, ["257", "256"]),
]


def _raise(select, where) -> RuleError:
    with pytest.raises(RuleError) as info:
        parse_rule(select, where)
    return info.value


@pytest.mark.parametrize(("select", "where", "kind", "clause", "line", "column", "words"), ERRORS,
                         ids=[f"{e[2]}-{i}" for i, e in enumerate(ERRORS)])
def test_error_position_and_message(select, where, kind, clause, line, column, words):
    e = _raise(select, where)
    assert e.kind == kind
    assert isinstance(e, RuleSyntaxError if kind == "parse" else RuleSemanticError)
    assert (e.clause, e.line, e.column) == (clause, line, column), e
    for w in words:
        assert w in e.message, f"{w!r} not in {e.message!r}"
    text = select if clause == "select" else where
    assert e.text == text
    # The caret sits under the reported column (long lines are cut around it).
    src, caret = e.snippet.splitlines()
    assert caret.strip() == "^"
    if len(text) <= 120:
        assert src == "  " + text.splitlines()[line - 1]
        assert caret.index("^") == 2 + column - 1
    else:
        assert src.startswith("  …") and len(src) <= 125
    # str() names the kind, the clause and the position.
    assert str(e).startswith(f"{kind} error in {clause} clause at line {line}, column {column}:")
    assert e.to_dict() == {"type": kind, "clause": clause, "line": line, "column": column,
                           "message": e.message}


@pytest.mark.parametrize(("where", "line", "column"), [
    ("a = 1\nAND b = = 2", 2, 9),
    ("a = 1\n  AND\n  b >", 3, 6),
    ("a = 1\r\nAND b = = 2", 2, 9),
    ("a = 1\nAND data.温度 = 2", 2, 10),
    ("a = 1\nOR 'abc", 2, 4),
    ("a = 1\n\n\nAND FOO(b)", 4, 5),
    ("\n\n   a IN (1, 'x')", 3, 10),
])
def test_multiline_where_reports_the_right_line(where, line, column):
    e = _raise("*", where)
    assert (e.line, e.column) == (line, column), e
    src, caret = e.snippet.splitlines()
    assert src == "  " + where.splitlines()[line - 1]
    assert caret.index("^") == 2 + column - 1


def test_multiline_select_reports_the_right_line():
    e = _raise("a AS x,\n  b AS y,\n  c AS x", "")
    assert isinstance(e, RuleSemanticError)
    assert (e.clause, e.line, e.column) == ("select", 3, 8)
    assert "duplicate" in e.message and "'x'" in e.message
    e = _raise("SELECT\n  a,\n  *,\n  *", "")
    assert (e.line, e.column) == (4, 3)


def test_parse_errors_come_before_semantic_errors():
    # The select clause has a semantic error, the where clause a parse error.
    e = _raise("5", "a =")
    assert isinstance(e, RuleSyntaxError) and e.clause == "where"


def test_compile_rule_raises_the_same_errors():
    for select, where, kind, clause, line, column, _ in ERRORS:
        with pytest.raises(RuleError) as info:
            engine.compile_rule(select=select, where=where)
        e = info.value
        assert (e.kind, e.clause, e.line, e.column) == (kind, clause, line, column)


def test_error_classes():
    assert issubclass(RuleSyntaxError, RuleError) and issubclass(RuleSemanticError, RuleError)
    assert issubclass(RuleError, ValueError)
    assert RuleSyntaxError.kind == "parse" and RuleSemanticError.kind == "semantic"


def test_front_end_fixes():
    """Spec disagreements fixed in parser.py (see the commit message)."""
    # 3.1: the 2500-character limit counts whitespace too, even in a blank clause.
    for select, where in ((" " * 2501, ""), ("*", "\n" * 2501)):
        with pytest.raises(RuleSyntaxError):
            parse_rule(select, where)
    parse_rule(" " * 2500, "\t" * 2500)
    # 3.1/3.2: only space, TAB, CR and LF are whitespace; other blanks are not allowed.
    for blank in ("\u3000", "\u00a0", "\x0c", "\x0b", "\u2028"):
        with pytest.raises(RuleSyntaxError):
            parse_rule(blank, "")
        with pytest.raises(RuleSyntaxError):
            parse_rule("*", blank)
    # 11.1: FROM anywhere is a parse error, also shaped like a function call.
    with pytest.raises(RuleSyntaxError):
        parse_rule("from(1) AS x", "")
    # 3.2: keywords are whole words; `ANDb`, `ISNULL` are names even where a name
    # cannot stand (the contextual lexer used to split them into keyword + rest).
    for where in ("a = 1 ANDb = 2", "a ISNULL", "a IS NOTNULL", "x BETWEEN 1 AND2",
                  "CASE WHEN a THEN b ELSEc END"):
        with pytest.raises(RuleSyntaxError):
            parse_rule("*", where)
    parse_rule("data.index AS i, data.ENDS AS e", "a = 1 and(b = 2) AND NOT(a = 2)")
    # No nesting limit within the clause length (4, 10): long AND/OR chains, deep
    # unary minus and long sums are valid rules.
    parse_rule("*", " OR ".join(["a=1"] * 300))
    parse_rule("- " * 1240 + "a AS x", "+".join(["a"] * 1240))
