"""Clause text -> AST, with errors a person can act on.

Lark (LALR) does the parsing with the grammar in engine/grammars/rule.lark;
this module adds the checks a context-free grammar cannot express well
(clause length, `--`, keywords used as names, integer indices, nesting depth)
and turns every parser failure into a `RuleSyntaxError`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import re
import sys

import lark
from lark import (
    Lark,
    Token,
    Transformer_NonRecursive,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import VisitError

from engine.language import ast
from engine.language.errors import RuleSyntaxError

MAX_CLAUSE_CHARS = 2500
# Expression depth guard. The spec sets no nesting limit, and a 2500-character
# clause can nest about 1250 levels (`- - - … x`, `a+a+…+a`, 300+ ANDs), so the
# guard must not be below the clause length: every valid clause is accepted.
MAX_NESTING = MAX_CLAUSE_CHARS
_BLANK = " \t\r\n"   # the dialect's whitespace (spec 3.2); other characters are not blank

KEYWORDS = frozenset(
    ["SELECT", "WHERE", "AS", "AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "TRUE", "FALSE", "BETWEEN", "CASE", "WHEN", "THEN", "ELSE", "END", "FROM"]
)

_TERMINAL_NAMES = {
    "IDENT": "a name", "QIDENT": 'a "quoted name"', "STRING": "a 'string'", "NUMBER": "a number",
    "COMP_OP": "a comparison operator", "CONCAT": "'||'", "PLUS": "'+'", "MINUS": "'-'",
    "STAR": "'*'", "SLASH": "'/'", "LPAR": "'('", "RPAR": "')'", "COMMA": "','", "DOT": "'.'",
    "LSQB": "'['", "RSQB": "']'", "$END": "end of clause",
}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = importlib.resources.files("engine.grammars").joinpath("rule.lark").read_text()
    return Lark(grammar, parser="lalr", start=["select_clause", "where_clause"],
                propagate_positions=True, maybe_placeholders=True, cache=_cache_file())


def _cache_file() -> str | bool:
    """Where Lark keeps the analysed grammar between starts (0.1 s of every
    start otherwise): the user's own cache directory, never the shared temp
    directory Lark would pick, since the file is a pickle. Lark checks the
    grammar's hash in it and rebuilds a stale one; no directory, no cache."""
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    if not os.path.isabs(base):      # no home directory to be found
        return False
    folder = os.path.join(base, "iot-forwarding-engine")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return False
    version = ".".join(map(str, sys.version_info[:2]))
    return os.path.join(folder, f"rule-grammar-lark{lark.__version__}-py{version}.pickle")


def grammar_text() -> str:
    return importlib.resources.files("engine.grammars").joinpath("rule.lark").read_text()


def parse_select(text: str | None) -> ast.Select:
    """Parse a SELECT clause; empty text means `*`."""
    if _is_blank(text):
        return ast.Select((ast.SelectItem(None, None, (1, 1)),))
    return _parse(text, "select")


def parse_where(text: str | None) -> ast.Expr | None:
    """Parse a WHERE clause; empty text (always true) gives None."""
    if _is_blank(text):
        return None
    return _parse(text, "where")


def _is_blank(text) -> bool:
    """None, or a str of at most MAX_CLAUSE_CHARS spaces/TABs/CRs/LFs."""
    return text is None or (isinstance(text, str) and len(text) <= MAX_CLAUSE_CHARS
                            and not text.strip(_BLANK))


def _parse(text: str, clause: str):
    if not isinstance(text, str):
        raise RuleSyntaxError(f"the {clause} clause must be a string, not {type(text).__name__}",
                              clause=clause)
    return _parse_text(text, clause)


# Trees are immutable, so clause texts seen before (a reload or an API update
# of a large rule set changes few rules) are parsed once. Errors are raised,
# never cached.
@functools.lru_cache(maxsize=32768)
def _parse_text(text: str, clause: str):
    if len(text) > MAX_CLAUSE_CHARS:
        raise RuleSyntaxError(
            f"clause is {len(text)} characters long; the limit is {MAX_CLAUSE_CHARS}",
            clause=clause, text=text, **_position(text, MAX_CLAUSE_CHARS))
    strings = _prescan(text, clause)
    shape = _shape(text, strings) if strings else None
    if shape is not None and (cached := _SHAPES.get((shape, clause))) is not None:
        return ast.with_strings(cached, {_pos_at(text, start): _unquote(text, start, end)
                                         for start, end in strings})
    try:
        tree = _parser().parse(text, start=f"{clause}_clause")
        to_ast = _ToAst(text, clause)
        node = to_ast.transform(tree)
        if shape is not None and len(_SHAPES) < _MAX_SHAPES \
                and max(to_ast._depths.values(), default=0) <= _MAX_SHAPE_DEPTH:
            _SHAPES[(shape, clause)] = node
        return node
    except RuleSyntaxError:
        raise
    except VisitError as e:
        if isinstance(e.orig_exc, RuleSyntaxError):
            raise e.orig_exc from None
        raise RuleSyntaxError(f"cannot parse clause ({e.orig_exc})", clause=clause, text=text) from None
    except UnexpectedInput as e:
        raise _syntax_error(e, text, clause) from None
    except Exception as e:  # the contract: nothing but RuleError escapes
        raise RuleSyntaxError(f"cannot parse clause ({type(e).__name__}: {e})",
                              clause=clause, text=text) from None


# Clause texts that differ only inside their string literals (the same rule
# for 10,000 device ids) lex into the same tokens at the same positions, so
# they parse to the same tree but for those literals' values: the tree of the
# first one, with the others' strings put in, is their tree. Keyed by the text
# with every string's characters masked (lengths kept, so positions agree);
# only shallow trees, so putting the strings in needs no deep recursion.
_SHAPES: dict[tuple[str, str], object] = {}
_MAX_SHAPES = 4096
_MAX_SHAPE_DEPTH = 64


def _shape(text: str, strings: list[tuple[int, int]]) -> str:
    parts, last = [], 0
    for start, end in strings:          # end: the index of the closing quote
        parts += (text[last:start + 1], "x" * (end - start - 1))
        last = end
    parts.append(text[last:])
    return "".join(parts)


def _unquote(text: str, start: int, end: int) -> str:
    return text[start + 1:end].replace("''", "'")


def _pos_at(text: str, offset: int) -> ast.Pos:
    return (text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset))


def _position(text: str, offset: int) -> dict:
    """1-based line/column of a 0-based character offset."""
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return {"line": line, "column": col}


# A clause the checks below pass, as one expression (possessive, so a string
# ends where the scan below ends it): most clauses need only this.
_CTRL = r"\x00-\x08\x0a-\x1f\x7f-\x9f"
_CLEAN = re.compile(rf"(?:[ !#-&(-,.-~\t\r\n]|-(?!-)|'(?:[^'{_CTRL}]|'')*+'|\"[^\"{_CTRL}]+\")*+")
_QUOTED = re.compile(r"'(?:[^']|'')*+'|\"[^\"]*\"")


def _prescan(text: str, clause: str) -> list[tuple[int, int]]:
    """Checks on the characters outside literals that the lexer can't phrase
    well; returns the (opening, closing) quote offsets of the string literals."""
    if _CLEAN.fullmatch(text):
        if "'" not in text:
            return []
        return [(m.start(), m.end() - 1) for m in _QUOTED.finditer(text) if text[m.start()] == "'"]
    strings: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":          # string literal: '' is an escaped quote
            j = i + 1
            while True:
                j = text.find("'", j)
                if j < 0:
                    raise RuleSyntaxError("unterminated string literal (missing closing ')",
                                          clause=clause, text=text, **_position(text, i))
                if j + 1 < n and text[j + 1] == "'":
                    j += 2
                    continue
                break
            bad = _first_control(text, i + 1, j)
            if bad >= 0:
                raise RuleSyntaxError("control character inside a string literal",
                                      clause=clause, text=text, **_position(text, bad))
            strings.append((i, j))
            i = j + 1
            continue
        if c == '"':
            j = text.find('"', i + 1)
            if j < 0:
                raise RuleSyntaxError('unterminated quoted name (missing closing ")',
                                      clause=clause, text=text, **_position(text, i))
            if j == i + 1:
                raise RuleSyntaxError('empty quoted name ""', clause=clause, text=text,
                                      **_position(text, i))
            bad = _first_control(text, i + 1, j)
            if bad >= 0:
                raise RuleSyntaxError("control character inside a quoted name",
                                      clause=clause, text=text, **_position(text, bad))
            i = j + 1
            continue
        if c == "-" and text.startswith("--", i):
            raise RuleSyntaxError("'--' is not allowed: the rule language has no comments",
                                  clause=clause, text=text, **_position(text, i))
        if not (" " <= c <= "~" or c in "\t\r\n"):
            raise RuleSyntaxError(
                f"character {c!r} is not allowed here: outside string literals and quoted "
                "names only printable ASCII may appear (quote the name: \"…\")",
                clause=clause, text=text, **_position(text, i))
        i += 1
    return strings


def _first_control(text: str, start: int, end: int) -> int:
    for k in range(start, end):
        o = ord(text[k])
        if (o < 0x20 and o != 9) or 0x7F <= o <= 0x9F:
            return k
    return -1


def _syntax_error(e: UnexpectedInput, text: str, clause: str) -> RuleSyntaxError:
    line, col = getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else ""
        if ch.isdigit():
            msg = "malformed number (numbers are digits or digits.digits, not followed by a letter, '_' or '.')"
        elif ch == ".":
            msg = "unexpected '.': numbers need digits on both sides of the point"
        else:
            msg = f"unexpected character {ch!r}"
            if ch in "!|=&":
                msg += " (operators are = <> != < > <= >= + - * / ||)"
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            msg = "unexpected end of clause"
            line, col = _end_position(text)
        elif str(tok).upper() == "FROM":
            msg = "FROM is not part of the rule language (the rule's subject selects the data)"
        else:
            msg = f"unexpected {_describe(tok)}"
        expected = sorted({_TERMINAL_NAMES.get(t, t) for t in e.expected if not t.startswith("__")})
        if expected:
            msg += "; expected " + ", ".join(expected[:12]) + (", …" if len(expected) > 12 else "")
    else:
        msg = "unexpected input"
    return RuleSyntaxError(msg, clause=clause, text=text, line=line, column=col)


def _describe(tok: Token) -> str:
    if tok.type in ("IDENT", "QIDENT", "NUMBER", "STRING"):
        return f"{_TERMINAL_NAMES[tok.type].split(' ', 1)[1]} {str(tok)!r}"
    if tok.type.isalpha() and str(tok).upper() in KEYWORDS:
        return f"keyword {str(tok).upper()}"
    return repr(str(tok))


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    p = _position(text, len(stripped))
    return p["line"], p["column"]


def _pos(meta_or_tok) -> ast.Pos:
    return (getattr(meta_or_tok, "line", 0) or 0, getattr(meta_or_tok, "column", 0) or 0)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Parse tree -> ast nodes. Non-recursive so deeply nested input cannot
    exhaust the Python stack."""

    def __init__(self, text: str, clause: str) -> None:
        super().__init__()
        self.text = text
        self.clause = clause

    def _err(self, msg: str, pos: ast.Pos) -> RuleSyntaxError:
        return RuleSyntaxError(msg, clause=self.clause, text=self.text, line=pos[0], column=pos[1])

    def _depth(self, node, meta, *kids):
        d = 1 + max((self._depths.get(id(k), 0) for k in kids), default=0)
        if d > MAX_NESTING:
            raise self._err(f"expression nested more than {MAX_NESTING} levels deep", _pos(meta))
        self._depths[id(node)] = d
        self._keep.append(node)   # ids stay valid while the tree is built
        return node

    def transform(self, tree):
        self._depths: dict[int, int] = {}
        self._keep: list = []
        return super().transform(tree)

    # clauses
    def select_clause(self, meta, ch):
        if isinstance(ch[-1], ast.Foreach):
            return ast.Select((), foreach=ch[-1])
        return ast.Select(tuple(ch[-1]))

    def foreach_clause(self, meta, ch):
        # [FOREACH, array, AS?, alias?, DO?, items?, INCASE?, condition?]
        alias = ch[3][0] if ch[3] is not None else "item"
        items = tuple(ch[5]) if ch[5] is not None else None
        return ast.Foreach(ch[1], alias, items, ch[7], _pos(meta))

    def where_clause(self, meta, ch):
        return ch[-1]

    def select_list(self, meta, ch):
        return ch

    def star_item(self, meta, ch):
        alias, apos = (ch[2] if len(ch) > 2 else (None, ast.NOPOS))
        return ast.SelectItem(None, alias, _pos(meta), apos)

    def expr_item(self, meta, ch):
        alias, apos = (ch[2] if len(ch) > 2 else (None, ast.NOPOS))
        return ast.SelectItem(ch[0], alias, _pos(meta), apos)

    def alias(self, meta, ch):
        tok = ch[0]
        if tok.type == "QIDENT":
            return tok[1:-1], _pos(tok)
        if tok.upper() in KEYWORDS:
            raise self._err(f'keyword {tok.upper()} cannot be an alias; quote it: "{tok}"', _pos(tok))
        return str(tok), _pos(tok)

    # boolean structure
    def or_(self, meta, ch):
        return self._depth(ast.Or(ch[0], ch[2], _pos(meta)), meta, ch[0], ch[2])

    def and_(self, meta, ch):
        return self._depth(ast.And(ch[0], ch[2], _pos(meta)), meta, ch[0], ch[2])

    def not_(self, meta, ch):
        return self._depth(ast.Not(ch[1], _pos(meta)), meta, ch[1])

    def compare(self, meta, ch):
        op = "<>" if ch[1] == "!=" else str(ch[1])
        return self._depth(ast.Compare(op, ch[0], ch[2], _pos(meta)), meta, ch[0], ch[2])

    def like(self, meta, ch):
        return self._depth(ast.Like(ch[0], ch[3], ch[1] is not None, _pos(meta)), meta, ch[0], ch[3])

    def in_(self, meta, ch):
        items = tuple(ch[3:])
        return self._depth(ast.InList(ch[0], items, ch[1] is not None, _pos(meta)), meta, ch[0], *items)

    def between(self, meta, ch):
        node = ast.Between(ch[0], ch[3], ch[5], ch[1] is not None, _pos(meta))
        return self._depth(node, meta, ch[0], ch[3], ch[5])

    def is_null(self, meta, ch):
        return self._depth(ast.IsNull(ch[0], ch[2] is not None, _pos(meta)), meta, ch[0])

    # values
    def concat(self, meta, ch):
        return self._depth(ast.Concat(ch[0], ch[2], _pos(meta)), meta, ch[0], ch[2])

    def arith(self, meta, ch):
        return self._depth(ast.Arith(str(ch[1]), ch[0], ch[2], _pos(meta)), meta, ch[0], ch[2])

    def neg(self, meta, ch):
        return self._depth(ast.Neg(ch[1], _pos(meta)), meta, ch[1])

    def paren(self, meta, ch):
        # Parentheses are not transparent where the spec looks at how a thing
        # is written (a SELECT path without alias, the literal fuzzy flag, IN
        # constants, -2**63): the few node kinds those rules read remember them.
        node = ch[0]
        if isinstance(node, (ast.Literal, ast.Path, ast.Neg)) and not node.paren:
            return self._depth(dataclasses.replace(node, paren=True), meta, node)
        return node

    def number(self, meta, ch):
        t = ch[0]
        return ast.Literal(float(t) if "." in t else int(t), _pos(t))

    def string(self, meta, ch):
        t = ch[0]
        return ast.Literal(t[1:-1].replace("''", "'"), _pos(t))

    def true(self, meta, ch):
        return ast.Literal(True, _pos(ch[0]))

    def false(self, meta, ch):
        return ast.Literal(False, _pos(ch[0]))

    def null(self, meta, ch):
        return ast.Literal(None, _pos(ch[0]))

    def func_call(self, meta, ch):
        if ch[0].upper() in KEYWORDS:   # only FROM can get here: the others are tokens
            raise self._err(f"{ch[0].upper()} is not part of the rule language", _pos(ch[0]))
        args = tuple(a for a in ch[1:] if a is not None)
        return self._depth(ast.Call(ch[0].upper(), args, _pos(meta)), meta, *args)

    def star_call(self, meta, ch):
        if ch[0].upper() in KEYWORDS:
            raise self._err(f"{ch[0].upper()} is not part of the rule language", _pos(ch[0]))
        return ast.Call(ch[0].upper(), (), _pos(meta), star=True)

    def case_expr(self, meta, ch):
        exprs = [c for c in ch if not isinstance(c, Token)]
        has_else = ch[-2] is not None and not isinstance(ch[-2], Token) and \
            isinstance(ch[-3], Token) and ch[-3].type == "ELSE"
        if has_else:
            else_, exprs = exprs[-1], exprs[:-1]
        else:
            else_ = None
            exprs = [e for e in exprs if e is not None]
        whens = tuple((exprs[i], exprs[i + 1]) for i in range(0, len(exprs), 2))
        kids = [x for w in whens for x in w] + ([else_] if else_ is not None else [])
        return self._depth(ast.Case(whens, else_, _pos(meta)), meta, *kids)

    def path(self, meta, ch):
        steps: list[str | int] = [ch[0]]
        for c in ch[1:]:
            if isinstance(c, Token):      # array index
                if "." in c:
                    raise self._err(f"array index must be a non-negative integer, not {c}", _pos(c))
                steps.append(int(c))
            else:
                steps.append(c)
        return ast.Path(tuple(steps), _pos(meta))

    def segment(self, meta, ch):
        tok = ch[0]
        if tok.type == "QIDENT":
            return tok[1:-1]
        if tok.upper() in KEYWORDS:
            raise self._err(
                f'keyword {tok.upper()} cannot start a path; quote the name: "{tok}"', _pos(tok))
        return str(tok)

    def member(self, meta, ch):
        tok = ch[0]
        return tok[1:-1] if tok.type == "QIDENT" else str(tok)
