# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled evaluators: the hot path of rule evaluation.

Rules are compiled (engine/language/compiler.py) into trees of the node
classes below. Evaluation never raises for any event shape: a missing
member or a type mismatch yields MISSING (values) or UNKNOWN (conditions),
exactly as the language reference says. Only this file runs per event; all
analysis (typing, constant folding, index and pre-filter derivation) is done
once, in Python, at compile time.
"""

cimport cython
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_EQ, Py_NE, Py_LT, Py_LE, Py_GT, Py_GE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import orjson

cdef extern from "_core_helpers.h":
    PyObject* PyDict_GetItem "eng_dict_get" (object d, object key)
    bint str_eq "eng_str_eq" (object a, object b)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow)
    bint PyDict_Check(object o)
    bint PyList_Check(object o)
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyLong_CheckExact(object o)
    bint PyFloat_Check(object o)
    bint PyFloat_CheckExact(object o)
    bint PyBool_Check(object o)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    double PyFloat_AS_DOUBLE(object o)

from cpython.number cimport PyNumber_Negative, PyNumber_Add, PyNumber_Multiply, PyNumber_Subtract, PyNumber_TrueDivide
from libc.math cimport isfinite

cdef extern from "string.h":
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen) nogil
    void* memchr(const void* s, int c, size_t n) nogil
    int memcmp(const void* a, const void* b, size_t n) nogil


# ---------------------------------------------------------------- values

cdef class _Missing:
    """The MISSING marker: a path that does not resolve, a function without a result."""

    def __repr__(self):
        return "MISSING"

    def __bool__(self):
        return False

    def __reduce__(self):
        return "MISSING"


MISSING = _Missing()
cdef object _MISSING = MISSING

# Truth values of the three-valued logic.
cdef enum:
    T_FALSE = 0
    T_TRUE = 1
    T_UNKNOWN = 2

# Value kinds, per the typing rules.
cdef enum:
    K_NULL = 0      # MISSING or JSON null
    K_BOOL = 1
    K_NUM = 2
    K_STR = 3
    K_OTHER = 4     # object, array, anything else

cdef inline int kind_of(object v) noexcept:
    if PyUnicode_CheckExact(v):
        return K_STR
    if PyLong_CheckExact(v) or PyFloat_CheckExact(v):
        return K_NUM
    if PyBool_Check(v):
        return K_BOOL
    if v is None or v is _MISSING:
        return K_NULL
    if PyUnicode_Check(v):
        return K_STR
    if PyLong_Check(v) or PyFloat_Check(v):
        return K_NUM
    return K_OTHER

cdef inline object truth_value(int t):
    if t == T_TRUE:
        return True
    if t == T_FALSE:
        return False
    return _MISSING

cdef inline int value_truth(object v) noexcept:
    if v is True:
        return T_TRUE
    if v is False:
        return T_FALSE
    return T_UNKNOWN


cdef object render(object v):
    """Text rendering of a scalar (5.1), or MISSING."""
    cdef int k = kind_of(v)
    if k == K_STR:
        return v
    if k == K_NUM:
        if PyFloat_Check(v):
            return repr(v)
        return str(v)
    if k == K_BOOL:
        return "true" if v else "false"
    return _MISSING


cdef inline object int64_or_missing(object r):
    """Integer results beyond the signed 64-bit range are MISSING (overflow),
    as float overflow is: no sink can write them."""
    cdef int overflow = 0
    if PyLong_CheckExact(r):
        PyLong_AsLongLongAndOverflow(r, &overflow)
        if overflow:
            return _MISSING
    return r


cdef object deep_copy(object v):
    """Outputs never alias the input: copy JSON containers."""
    cdef list out_l
    if PyDict_Check(v):
        return {k: deep_copy(x) for k, x in (<dict>v).items()}
    if PyList_Check(v):
        out_l = [deep_copy(x) for x in <list>v]
        return out_l
    return v


cdef inline int compare_values(object a, object b, int op) except -1:
    """Comparison under the dialect's typing rules (no coercion)."""
    cdef int ka = kind_of(a)
    cdef int kb = kind_of(b)
    if ka != kb or ka == K_NULL or ka == K_OTHER:
        return T_UNKNOWN
    if ka == K_BOOL:
        if op == Py_EQ:
            return T_TRUE if (a is b) else T_FALSE
        if op == Py_NE:
            return T_FALSE if (a is b) else T_TRUE
        return T_UNKNOWN
    if ka == K_NUM and PyFloat_CheckExact(a) and PyFloat_CheckExact(b):
        return _cmp_double(PyFloat_AS_DOUBLE(a), PyFloat_AS_DOUBLE(b), op)
    return T_TRUE if PyObject_RichCompareBool(a, b, op) else T_FALSE

cdef inline int _cmp_double(double x, double y, int op) noexcept:
    cdef bint r
    if op == Py_EQ:
        r = x == y
    elif op == Py_NE:
        r = x != y
    elif op == Py_LT:
        r = x < y
    elif op == Py_LE:
        r = x <= y
    elif op == Py_GT:
        r = x > y
    else:
        r = x >= y
    return T_TRUE if r else T_FALSE


# ---------------------------------------------------------------- nodes

# Compiled rules are trees without reference cycles, so their classes opt out
# of the cyclic GC: 10,000 rules then add nothing to every full collection.
@cython.no_gc
cdef class Expr:
    """A compiled expression. `value` gives a JSON value or MISSING;
    `truth` gives T_TRUE / T_FALSE / T_UNKNOWN."""

    cdef object value(self, object ev):
        return _MISSING

    cdef int truth(self, object ev) except -1:
        return value_truth(self.value(ev))

    def eval(self, event):
        """Python-level access (tests, the SQL tester)."""
        return self.value(event)


@cython.no_gc
cdef class Cond(Expr):
    """Base of condition nodes: their value is their truth as a boolean."""

    cdef object value(self, object ev):
        return truth_value(self.truth(ev))


@cython.no_gc
cdef class Const(Expr):
    cdef object v

    def __init__(self, v):
        self.v = v

    cdef object value(self, object ev):
        return self.v


cdef extern from "Python.h":
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)

cdef extern from "_core_dict.h":
    int eng_dict_mirror_ok
    bint eng_dict_layout_matches(object d)
    PyObject* p_dict_slot "eng_dict_slot" (PyObject* d, Py_ssize_t p, PyObject* key) noexcept


def _check_dict_layout():
    """Enable the direct entry read only if it agrees with PyDict_Next on
    dicts of both key kinds and several sizes (including one with a
    deleted entry)."""
    global eng_dict_mirror_ok
    samples = [orjson.loads(b'{"a":1,"b":[2],"c":{"d":null}}'),
               {f"k{i}": i for i in range(40)}, {1: "x", "y": 2, (3,): 4}]
    del samples[1]["k3"]
    eng_dict_mirror_ok = all(eng_dict_layout_matches(d) for d in samples)
    return bool(eng_dict_mirror_ok)


_check_dict_layout()


# Borrowed-pointer forms for Path: no reference-count writes to the event's
# objects (Cython increfs a temporary when a PyObject* is passed as object).
cdef extern from "Python.h":
    bint p_dict_check "PyDict_Check" (PyObject* o) noexcept nogil
    bint p_list_check "PyList_Check" (PyObject* o) noexcept nogil
    Py_ssize_t p_list_size "PyList_GET_SIZE" (PyObject* o) noexcept nogil
    PyObject* p_list_item "PyList_GET_ITEM" (PyObject* o, Py_ssize_t i) noexcept nogil
    PyObject* p_dict_get "eng_dict_get" (PyObject* d, PyObject* key) noexcept


@cython.final
@cython.no_gc
cdef class Path(Expr):
    """Member and index steps from the root; never raises."""
    cdef list keys             # member name (str) or index (int) per step
    cdef Py_ssize_t[16] idx    # -1 for a member step, else the index
    cdef Py_ssize_t[16] slot   # member step: the entry position last seen, -1 unknown
    cdef Py_ssize_t n
    cdef unsigned int calls

    def __init__(self, steps):
        self.keys = list(steps)
        self.n = len(self.keys)
        if self.n > 16:
            raise ValueError("path too long for the fast form")
        for i, s in enumerate(self.keys):
            self.idx[i] = s if isinstance(s, int) else -1
            self.slot[i] = -1

    @property
    def steps(self):
        return tuple(self.keys)

    cdef inline PyObject* _step(self, PyObject* cur, Py_ssize_t i) noexcept:
        """One step from `cur` (borrowed), or NULL when it does not apply."""
        cdef PyObject* key
        cdef PyObject* v
        cdef Py_ssize_t j = self.idx[i], p
        if j < 0:
            if not p_dict_check(cur):
                return NULL
            key = p_list_item(<PyObject*>self.keys, i)
            # Inline cache: events of one shape keep each member at the
            # same entry position, and the decoder reuses key objects, so
            # one entry read usually replaces a hash-table lookup.
            p = self.slot[i]
            if p >= 0:
                v = p_dict_slot(cur, p, key)
                if v != NULL:
                    return v
            return p_dict_get(cur, key)
        if not p_list_check(cur) or j >= p_list_size(cur):
            return NULL
        return p_list_item(cur, j)

    cdef object value(self, object ev):
        cdef PyObject* cur = <PyObject*>ev
        cdef Py_ssize_t i
        self.calls += 1
        if (self.calls & 4095) == 1:
            self._learn(ev)
        for i in range(self.n):
            cur = self._step(cur, i)
            if cur == NULL:
                return _MISSING
        return <object>cur

    cdef void _learn(self, object ev):
        """Refresh the inline cache from this event: adopt the event's own key
        objects (JSON decoders such as orjson reuse one object per key name,
        and identical keys skip string comparisons) and their entry
        positions. Runs once every 4096 lookups, so shape changes are picked
        up at negligible cost."""
        cdef PyObject* cur = <PyObject*>ev
        cdef PyObject* k
        cdef PyObject* v
        cdef Py_ssize_t i, j, pos
        for i in range(self.n):
            j = self.idx[i]
            if j >= 0:
                if not PyList_Check(<object>cur) or j >= PyList_GET_SIZE(<object>cur):
                    return
                cur = PyList_GET_ITEM(<object>cur, j)
                continue
            if not PyDict_Check(<object>cur):
                return
            ours = self.keys[i]
            pos = 0
            found = False
            while PyDict_Next(<object>cur, &pos, &k, &v):
                if PyUnicode_CheckExact(<object>k) and str_eq(<object>k, ours):
                    self.keys[i] = <object>k
                    self.slot[i] = pos - 1    # PyDict_Next leaves pos after the entry
                    cur = v
                    found = True
                    break
            if not found:
                return


@cython.no_gc
cdef class LongPath(Expr):
    """Paths of more than 16 steps (rare): same semantics, Python loop."""
    cdef tuple keys

    def __init__(self, steps):
        self.keys = tuple(steps)

    cdef object value(self, object ev):
        cdef object cur = ev
        cdef PyObject* p
        for s in self.keys:
            if type(s) is int:
                if not PyList_Check(cur) or s >= PyList_GET_SIZE(cur):
                    return _MISSING
                cur = <object>PyList_GET_ITEM(cur, s)
            else:
                if not PyDict_Check(cur):
                    return _MISSING
                p = PyDict_GetItem(cur, s)
                if p == NULL:
                    return _MISSING
                cur = <object>p
        return cur


@cython.no_gc
cdef class Neg(Expr):
    cdef Expr a

    def __init__(self, Expr a):
        self.a = a

    cdef object value(self, object ev):
        v = self.a.value(ev)
        if kind_of(v) != K_NUM:
            return _MISSING
        return int64_or_missing(PyNumber_Negative(v))


@cython.no_gc
cdef class Arith(Expr):
    cdef Expr a, b
    cdef int op   # '+', '-', '*', '/' as chars

    def __init__(self, str op, Expr a, Expr b):
        self.op = ord(op)
        self.a = a
        self.b = b

    cdef object value(self, object ev):
        x = self.a.value(ev)
        if kind_of(x) != K_NUM:
            return _MISSING
        y = self.b.value(ev)
        if kind_of(y) != K_NUM:
            return _MISSING
        try:
            # The C API calls, not Cython's inlined fast paths: those lose the
            # sign of zero in mixed float/int products (0.0 * -5 gave 0.0).
            if self.op == 43:      # +
                r = PyNumber_Add(x, y)
            elif self.op == 45:    # -
                r = PyNumber_Subtract(x, y)
            elif self.op == 42:    # *
                r = PyNumber_Multiply(x, y)
            elif not y:
                return _MISSING    # division by zero
            elif PyLong_Check(x) and PyLong_Check(y):
                q, rem = divmod(x, y)
                r = q if rem == 0 else PyNumber_TrueDivide(x, y)
            else:
                r = PyNumber_TrueDivide(x, y)
            if PyFloat_CheckExact(r):
                if not isfinite(PyFloat_AS_DOUBLE(r)):
                    return _MISSING    # beyond the float range: not a JSON number
                return r
            return int64_or_missing(r)
        except (OverflowError, ValueError):
            return _MISSING        # beyond float range: no value, never an error


@cython.no_gc
cdef class Concat(Expr):
    cdef Expr a, b

    def __init__(self, Expr a, Expr b):
        self.a = a
        self.b = b

    cdef object value(self, object ev):
        x = render(self.a.value(ev))
        if x is _MISSING:
            return _MISSING
        y = render(self.b.value(ev))
        if y is _MISSING:
            return _MISSING
        return x + y


@cython.no_gc
cdef class Compare(Cond):
    cdef Expr a, b
    cdef int op

    def __init__(self, int op, Expr a, Expr b):
        self.op = op
        self.a = a
        self.b = b

    cdef int truth(self, object ev) except -1:
        return compare_values(self.a.value(ev), self.b.value(ev), self.op)


@cython.no_gc
cdef class PathCompareStr(Cond):
    """path OP 'constant': the most common predicate, fused into one node."""
    cdef Path path
    cdef str c
    cdef int op

    def __init__(self, int op, Path path, str c):
        self.op = op
        self.path = path
        self.c = c

    cdef int truth(self, object ev) except -1:
        v = self.path.value(ev)
        if not PyUnicode_Check(v):
            return T_UNKNOWN
        if self.op == Py_EQ:
            return T_TRUE if str_eq(v, self.c) else T_FALSE
        if self.op == Py_NE:
            return T_FALSE if str_eq(v, self.c) else T_TRUE
        return T_TRUE if PyObject_RichCompareBool(v, self.c, self.op) else T_FALSE


cdef long long _EXACT_INT = 9007199254740992   # 2**53: larger ints may not be exact doubles


@cython.no_gc
cdef class PathCompareNum(Cond):
    """path OP number constant, fused; float paths compare in C."""
    cdef Path path
    cdef object c
    cdef double cd
    cdef bint exact_double   # the constant is exactly representable as a double
    cdef int op

    def __init__(self, int op, Path path, c):
        self.op = op
        self.path = path
        self.c = c
        self.cd = float(c)
        self.exact_double = isinstance(c, float) or abs(c) <= 2**53

    cdef int truth(self, object ev) except -1:
        cdef int overflow = 0
        cdef long long x
        v = self.path.value(ev)
        if self.exact_double:
            # Both sides exactly representable as doubles -> compare in C.
            if PyFloat_CheckExact(v):
                return _cmp_double(PyFloat_AS_DOUBLE(v), self.cd, self.op)
            if PyLong_CheckExact(v):
                x = PyLong_AsLongLongAndOverflow(v, &overflow)
                if not overflow and -_EXACT_INT <= x <= _EXACT_INT:
                    return _cmp_double(<double>x, self.cd, self.op)
        if kind_of(v) != K_NUM:
            return T_UNKNOWN
        return T_TRUE if PyObject_RichCompareBool(v, self.c, self.op) else T_FALSE


@cython.no_gc
cdef class And(Cond):
    """Kleene AND over n operands, short-circuit on FALSE."""
    cdef tuple items

    def __init__(self, items):
        self.items = tuple(items)

    cdef int truth(self, object ev) except -1:
        cdef int r = T_TRUE
        cdef int t
        for item in self.items:
            t = (<Expr>item).truth(ev)
            if t == T_FALSE:
                return T_FALSE
            if t == T_UNKNOWN:
                r = T_UNKNOWN
        return r


@cython.no_gc
cdef class Or(Cond):
    """Kleene OR over n operands, short-circuit on TRUE."""
    cdef tuple items

    def __init__(self, items):
        self.items = tuple(items)

    cdef int truth(self, object ev) except -1:
        cdef int r = T_FALSE
        cdef int t
        for item in self.items:
            t = (<Expr>item).truth(ev)
            if t == T_TRUE:
                return T_TRUE
            if t == T_UNKNOWN:
                r = T_UNKNOWN
        return r


@cython.no_gc
cdef class Not(Cond):
    cdef Expr a

    def __init__(self, Expr a):
        self.a = a

    cdef int truth(self, object ev) except -1:
        cdef int t = self.a.truth(ev)
        if t == T_UNKNOWN:
            return T_UNKNOWN
        return T_FALSE if t == T_TRUE else T_TRUE


@cython.no_gc
cdef class IsNull(Cond):
    cdef Expr a
    cdef bint negated

    def __init__(self, Expr a, bint negated):
        self.a = a
        self.negated = negated

    cdef int truth(self, object ev) except -1:
        v = self.a.value(ev)
        cdef bint is_null = v is None or v is _MISSING or (PyList_Check(v) and PyList_GET_SIZE(v) == 0)
        return T_TRUE if is_null != self.negated else T_FALSE


@cython.no_gc
cdef class Between(Cond):
    cdef Expr a, lo, hi
    cdef bint negated

    def __init__(self, Expr a, Expr lo, Expr hi, bint negated):
        self.a = a
        self.lo = lo
        self.hi = hi
        self.negated = negated

    cdef int truth(self, object ev) except -1:
        v = self.a.value(ev)
        cdef int t1 = compare_values(v, self.lo.value(ev), Py_GE)
        cdef int t2, r
        if t1 == T_FALSE:
            r = T_FALSE
        else:
            t2 = compare_values(v, self.hi.value(ev), Py_LE)
            if t2 == T_FALSE:
                r = T_FALSE
            elif t1 == T_TRUE and t2 == T_TRUE:
                r = T_TRUE
            else:
                r = T_UNKNOWN
        if self.negated and r != T_UNKNOWN:
            return T_FALSE if r == T_TRUE else T_TRUE
        return r


@cython.no_gc
cdef class InList(Cond):
    """x [NOT] IN (constants of one kind)."""
    cdef Expr a
    cdef frozenset items
    cdef int kind
    cdef bint negated

    def __init__(self, Expr a, items, int kind, bint negated):
        self.a = a
        self.items = frozenset(items)
        self.kind = kind
        self.negated = negated

    cdef int truth(self, object ev) except -1:
        v = self.a.value(ev)
        if kind_of(v) != self.kind:
            return T_UNKNOWN
        cdef bint found = v in self.items
        return T_TRUE if found != self.negated else T_FALSE


# LIKE modes, chosen at compile time from a constant pattern.
cdef enum:
    LIKE_EQ = 0
    LIKE_PREFIX = 1
    LIKE_SUFFIX = 2
    LIKE_CONTAINS = 3
    LIKE_REGEX = 4
    LIKE_DYNAMIC = 5


def like_to_regex(str pattern):
    """SQL LIKE -> anchored regex: % any run, _ one character, no escape."""
    import re
    parts = []
    for ch in pattern:
        if ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


@cython.no_gc
cdef class Like(Cond):
    cdef Expr a, pat
    cdef int mode
    cdef str lit
    cdef object rx
    cdef dict cache
    cdef bint negated

    def __init__(self, Expr a, Expr pat, bint negated, constant=None):
        self.a = a
        self.pat = pat
        self.negated = negated
        self.cache = {}
        if constant is None:
            self.mode = LIKE_DYNAMIC
            return
        body = constant
        lead = len(body) - len(body.lstrip("%"))
        trail = len(body) - len(body.rstrip("%"))
        inner = body.strip("%")
        if "_" not in body and "%" not in inner:
            # The common shapes need no regex: 'abc', 'abc%', '%abc', '%abc%'.
            self.lit = inner
            if lead == 0 and trail == 0:
                self.mode = LIKE_EQ
            elif lead == 0:
                self.mode = LIKE_PREFIX
            elif trail == 0:
                self.mode = LIKE_SUFFIX
            else:
                self.mode = LIKE_CONTAINS
            return
        self.mode = LIKE_REGEX
        self.rx = like_to_regex(body)

    cdef int truth(self, object ev) except -1:
        v = self.a.value(ev)
        if not PyUnicode_Check(v):
            return T_UNKNOWN
        cdef bint m
        cdef str s = v
        if self.mode == LIKE_EQ:
            m = s == self.lit
        elif self.mode == LIKE_PREFIX:
            m = s.startswith(self.lit)
        elif self.mode == LIKE_SUFFIX:
            m = s.endswith(self.lit)
        elif self.mode == LIKE_CONTAINS:
            m = self.lit in s
        elif self.mode == LIKE_REGEX:
            m = self.rx.fullmatch(s) is not None
        else:
            p = self.pat.value(ev)
            if not PyUnicode_Check(p):
                return T_UNKNOWN
            rx = self.cache.get(p)
            if rx is None:
                if len(self.cache) > 256:
                    self.cache.clear()
                rx = like_to_regex(p)
                self.cache[p] = rx
            m = rx.fullmatch(s) is not None
        return T_TRUE if m != self.negated else T_FALSE


@cython.no_gc
cdef class Case(Expr):
    cdef tuple conds, values
    cdef Expr else_

    def __init__(self, conds, values, Expr else_=None):
        self.conds = tuple(conds)
        self.values = tuple(values)
        self.else_ = else_

    cdef object value(self, object ev):
        cdef Py_ssize_t i
        for i in range(len(self.conds)):
            if (<Expr>self.conds[i]).truth(ev) == T_TRUE:
                return (<Expr>self.values[i]).value(ev)
        if self.else_ is not None:
            return self.else_.value(ev)
        return _MISSING


# ---------------------------------------------------------------- helpers

cdef object _get(object d, str key):
    """d[key] for a dict, else NULL-safe MISSING."""
    cdef PyObject* p
    if not PyDict_Check(d):
        return _MISSING
    p = PyDict_GetItem(d, key)
    if p == NULL:
        return _MISSING
    return <object>p


include "_functions.pxi"


@cython.no_gc
cdef class AppIs(Cond):
    """Rule app scope: the notification's app_id (header, else body) equals `app_id`."""
    cdef str app_id

    def __init__(self, str app_id):
        self.app_id = app_id

    cdef int truth(self, object ev) except -1:
        nd = _get(ev, "notify_data")
        a = _get(_get(nd, "header"), "app_id")
        if not PyUnicode_Check(a):
            a = _get(_get(nd, "body"), "app_id")
        if not PyUnicode_Check(a):
            return T_FALSE
        return T_TRUE if a == self.app_id else T_FALSE


# ---------------------------------------------------------------- SELECT

@cython.no_gc
cdef class Projection:
    """Builds the output object of a SELECT (8.5)."""
    cdef bint star
    cdef readonly bint whole  # `SELECT *` alone (or no SELECT): the output is the input
    cdef tuple keys
    cdef tuple exprs

    def __init__(self, bint star, keys, exprs):
        self.star = star
        self.keys = tuple(keys)
        self.exprs = tuple(exprs)
        self.whole = star and not self.keys

    cdef dict build(self, object ev, bint copy=True):
        """`copy`: copy containers taken from the event, so the output never
        aliases a caller's event. Events the core decoded itself (the raw
        forms) belong to nobody else and are not copied."""
        cdef dict out
        cdef Py_ssize_t i
        if self.star and PyDict_Check(ev):
            if copy:
                out = {k: deep_copy(v) for k, v in (<dict>ev).items()}
            else:
                out = (<dict>ev).copy()
        else:
            out = {}
        for i in range(len(self.keys)):
            v = (<Expr>self.exprs[i]).value(ev)
            if v is _MISSING:
                continue
            if copy and (PyDict_Check(v) or PyList_Check(v)):
                v = deep_copy(v)
            out[self.keys[i]] = v
        return out


# ---------------------------------------------------------------- column mappings

@cython.no_gc
cdef class Columns:
    """Values of a destination's column mappings for many rule outputs at once.

    Each column has a json_key: the output's literal top-level key of that
    name if present (an unaliased `SELECT a.b` emits the key "a.b"), else
    the path walked into the output. Missing values are None (SQL NULL).
    With `json_containers`, objects and arrays become JSON text."""
    cdef tuple literal_keys
    cdef tuple paths
    cdef Py_ssize_t n

    def __init__(self, literal_keys, steps_list):
        self.literal_keys = tuple(literal_keys)
        self.paths = tuple(Path(st) if len(st) <= 16 else LongPath(st) for st in steps_list)
        self.n = len(self.literal_keys)

    def rows(self, list payloads, bint json_containers=False):
        cdef list out = []
        cdef list row
        cdef PyObject* ptr
        cdef Py_ssize_t i
        for p in payloads:
            row = []
            for i in range(self.n):
                v = _MISSING
                if PyDict_Check(p):
                    ptr = PyDict_GetItem(p, self.literal_keys[i])
                    if ptr != NULL:
                        v = <object>ptr
                if v is _MISSING:
                    v = (<Expr>self.paths[i]).value(p)
                if v is _MISSING:
                    v = None
                elif json_containers and (PyDict_Check(v) or PyList_Check(v)):
                    v = orjson.dumps(v).decode()
                row.append(v)
            out.append(tuple(row))
        return out


# ---------------------------------------------------------------- records

@cython.final
@cython.freelist(1024)
cdef class Record:
    """One rule output on its way to one action (the sink contract's item;
    see engine.destinations.base). A C class because the runtime makes one
    per output and action: building it is a fraction of a dataclass's cost.

    `raw`, when set, is the exact JSON text of `payload`: the notification
    as it arrived, for a rule that forwards it whole (`SELECT *`). Sinks that
    send JSON send `json_bytes()`, so such outputs keep the input's numbers
    as written, key order and escapes, and are not re-encoded; sinks
    that need values (SQL columns, InfluxDB) read `payload`. Sinks never
    modify `payload`: one decoded notification may be shared by several
    records."""
    cdef public object payload     # the rule's output (a JSON object)
    cdef public object key         # device id: ordering / partitioning key, or None
    cdef public object event_time  # notification event_time, e.g. 20151212T121212Z, or None
    cdef public object rule_id
    cdef public object action_id
    cdef public object raw         # the exact JSON of payload (bytes), when known

    def __init__(self, payload, key=None, event_time=None, rule_id=None, action_id=None,
                 raw=None):
        self.payload = payload
        self.key = key
        self.event_time = event_time
        self.rule_id = rule_id
        self.action_id = action_id
        self.raw = raw

    def json_bytes(self):
        """The output as JSON: `raw` if known, else `payload` encoded."""
        if self.raw is not None:
            return self.raw
        return orjson.dumps(self.payload)

    def json_value(self):
        """The output to embed in a larger document encoded with orjson
        (an envelope, a backlog entry): `raw` as is, else `payload`."""
        if self.raw is not None:
            return orjson.Fragment(self.raw)
        return self.payload

    def _fields(self):
        return (self.payload, self.key, self.event_time, self.rule_id, self.action_id, self.raw)

    def __eq__(self, other):
        if type(other) is not Record:
            return NotImplemented
        return self._fields() == (<Record>other)._fields()

    __hash__ = None

    def __repr__(self):
        return ("Record(payload=%r, key=%r, event_time=%r, rule_id=%r, action_id=%r, raw=%r)"
                % self._fields())

    def __reduce__(self):
        return (Record, self._fields())


# ---------------------------------------------------------------- raw bytes

cdef class MalformedEvent:
    """An input that is not a JSON object (returned, never raised)."""
    cdef readonly str reason

    def __init__(self, str reason):
        self.reason = reason

    def __repr__(self):
        return f"MalformedEvent({self.reason!r})"

    def __eq__(self, other):
        return isinstance(other, MalformedEvent) and (<MalformedEvent>other).reason == self.reason

    def __hash__(self):
        return hash(self.reason)


MAX_DEPTH = 400
cdef Py_ssize_t _MAX_DEPTH = 400


cdef bint _too_deep(const char* s, Py_ssize_t n) noexcept nogil:
    """Nesting deeper than MAX_DEPTH? Brackets inside strings do not count."""
    cdef Py_ssize_t i, depth = 0
    cdef bint in_str = False
    cdef char c
    i = 0
    while i < n:
        c = s[i]
        if in_str:
            if c == 92:        # backslash: skip the escaped byte
                i += 1
            elif c == 34:
                in_str = False
        elif c == 34:
            in_str = True
        elif c == 123 or c == 91:
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif c == 125 or c == 93:
            depth -= 1
        i += 1
    return False


cdef object decode(object data):
    """Raw JSON bytes -> dict, or a MalformedEvent with the reason."""
    cdef Py_ssize_t n
    if not isinstance(data, bytes):
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif isinstance(data, str):
            data = (<str>data).encode("utf-8", "surrogatepass")
        else:
            return MalformedEvent(f"input is {type(data).__name__}, not bytes")
    n = PyBytes_GET_SIZE(data)
    # An object nested past MAX_DEPTH needs at least 2 bytes a level.
    if n > 2 * _MAX_DEPTH and _too_deep(PyBytes_AS_STRING(data), n):
        return MalformedEvent(f"JSON nested deeper than {_MAX_DEPTH} levels")
    try:
        ev = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return MalformedEvent(f"invalid JSON: {e}")
    if not PyDict_Check(ev):
        return MalformedEvent(f"a notification must be a JSON object, not {_json_type(ev)}")
    # orjson turns integers beyond 64 bits into floats (and no destination
    # could write them as integers): never forward a changed value. The probe
    # for a run of 19+ digits costs ~n/19 byte reads; only then is the input
    # tokenized to tell a long integer from a long string or fraction.
    if n >= 19 and _long_digit_run(<const unsigned char*>PyBytes_AS_STRING(data), n):
        big = _big_integer(<const unsigned char*>PyBytes_AS_STRING(data), n)
        if big >= 0:
            return MalformedEvent(_big_integer_reason(data, big))
    return ev


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return <unsigned char>(c - 48) <= 9


cdef bint _long_digit_run(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Is there a run of at least 19 ASCII digits? Probes every 19th byte (a
    run that long covers one probe) and measures the runs it lands in."""
    cdef Py_ssize_t i = 18, a, b
    while i < n:
        if _digit(s[i]):
            a = i
            while a > 0 and _digit(s[a - 1]):
                a -= 1
            b = i
            while b + 1 < n and _digit(s[b + 1]):
                b += 1
            if b - a + 1 >= 19:
                return True
            i = b + 19  # the next run starts after b + 1
        else:
            i += 19
    return False


cdef Py_ssize_t _big_integer(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """The offset of the first JSON integer (outside strings, no fraction or
    exponent) outside [-2**63, 2**64 - 1], or -1. Called on decoded JSON."""
    cdef Py_ssize_t i = 0, start, d0, nd
    cdef bint neg
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == 34:  # skip a string, with its escapes
            i += 1
            while i < n and s[i] != 34:
                i += 2 if s[i] == 92 else 1
            i += 1
            continue
        if c == 45 or _digit(c):
            start = i
            neg = c == 45
            if neg:
                i += 1
            d0 = i
            while i < n and _digit(s[i]):
                i += 1
            nd = i - d0
            if i < n and (s[i] == 46 or s[i] == 101 or s[i] == 69):
                while i < n and (_digit(s[i]) or s[i] == 46 or s[i] == 101 or s[i] == 69
                                 or s[i] == 43 or s[i] == 45):
                    i += 1
                continue
            if neg and (nd > 19 or (nd == 19 and memcmp(s + d0, b"9223372036854775808", 19) > 0)):
                return start
            if not neg and (nd > 20 or (nd == 20 and memcmp(s + d0, b"18446744073709551615", 20) > 0)):
                return start
            continue
        i += 1
    return -1


cdef str _big_integer_reason(bytes data, Py_ssize_t at):
    cdef Py_ssize_t end = at + 1
    while end < len(data) and 48 <= data[end] <= 57:
        end += 1
    digits = data[at:end].decode()
    if len(digits) > 40:
        digits = digits[:20] + "…" + digits[-8:]
    return (f"integer {digits} (byte {at}) is beyond 64 bits: it would be changed to a "
            f"float, so the notification is not forwarded")


# ------------------------------------------------------------ body splitting
#
# An HTTP ingest body holding a JSON array is split into its items as raw
# byte slices, never decoded as a whole: decoding a 1 MB `[{},{},…]` builds
# 350,000 objects, and re-encoding each item changed values (big integers).
# Only the structure is checked here (strings closed, brackets balanced,
# commas between items); each item is decoded by the rule set like any
# other input, and dead-lettered with its reason if it is not valid JSON.

cdef unsigned char _STRUCTURAL[256]
_STRUCTURAL[:] = [1 if chr(b) in '"{}[]' else 0 for b in range(256)]


cdef Py_ssize_t _skip_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """s[i] is a quote: the index after the closing quote, or -1."""
    cdef const unsigned char* q
    cdef Py_ssize_t j
    i += 1
    while i < n:
        q = <const unsigned char*>memchr(s + i, 34, n - i)
        if q == NULL:
            return -1
        i = q - s
        # The quote is escaped when an odd number of backslashes precede it.
        j = i
        while j > 0 and s[j - 1] == 92:
            j -= 1
        if (i - j) % 2 == 0:
            return i + 1
        i += 1
    return -1


cdef Py_ssize_t _value_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """s[i] starts a value: the index after it (structure only), -1 when a
    string or a bracket is not closed, -2 when there is no value at i."""
    cdef Py_ssize_t depth = 0
    cdef unsigned char c = s[i]
    if c == 34:
        return _skip_string(s, i, n)
    if c == 123 or c == 91:
        while i < n:
            # Most bytes are neither quotes nor brackets: one table load each.
            while i < n and not _STRUCTURAL[s[i]]:
                i += 1
            if i >= n:
                break
            c = s[i]
            if c == 34:
                i = _skip_string(s, i, n)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    if c == 44 or c == 93 or c == 125 or c == 58:  # , ] } :
        return -2
    while i < n:  # a scalar runs to the next delimiter
        c = s[i]
        if c == 44 or c == 93 or c == 125 or c == 32 or c == 10 or c == 13 or c == 9:
            break
        i += 1
    return i


def json_value_end(bytes data, Py_ssize_t pos=0):
    """The offset after the JSON value starting at `pos` (after whitespace),
    checking structure only (strings and brackets closed), or -1 if it is
    not closed within `data`."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    pos = _ws(s, pos, n)
    if pos >= n:
        return -1
    end = _value_end(s, pos, n)
    return end if end >= 0 else -1


def json_array_items(bytes data, Py_ssize_t pos, Py_ssize_t max_items=-1):
    """Split a top-level JSON array. `pos`: just after its '[' (or a previous
    call's next offset). Returns (items, next): up to `max_items` items as
    raw byte slices (max_items < 0: none are made, the array is only
    checked; `items` is then their count), and the offset to continue from,
    or -1 after the closing bracket (only whitespace may follow). Raises
    ValueError naming the byte offset when the structure is broken."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), end, count = 0
    cdef list out = [] if max_items >= 0 else None
    while True:
        if max_items >= 0 and count >= max_items:
            return out, pos
        pos = _ws(s, pos, n)
        if pos >= n:
            raise ValueError("the array is not closed")
        if s[pos] == 93:  # only right after '[': a ',' before ']' is refused below
            break
        end = _value_end(s, pos, n)
        if end == -1:
            raise ValueError(f"a string or bracket opened at byte {pos} is not closed")
        if end == -2:
            raise ValueError(f"no value at byte {pos}")
        if out is not None:
            out.append(data[pos:end])
        count += 1
        pos = _ws(s, end, n)
        if pos < n and s[pos] == 44:
            pos += 1
            end = _ws(s, pos, n)
            if end < n and s[end] == 93:
                raise ValueError(f"a ',' before ']' at byte {pos - 1}")
        elif pos < n and s[pos] == 93:
            break
        elif pos >= n:
            raise ValueError("the array is not closed")
        else:
            raise ValueError(f"expected ',' or ']' at byte {pos}")
    if _ws(s, pos + 1, n) < n:
        raise ValueError(f"data after the array at byte {_ws(s, pos + 1, n)}")
    return (out if out is not None else count), -1



cdef str _json_type(object v):
    if v is None:
        return "null"
    if PyBool_Check(v):
        return "a boolean"
    if PyUnicode_Check(v):
        return "a string"
    if PyList_Check(v):
        return "an array"
    return "a number"


# ------------------------------------------------------------ JSON validation
#
# The pre-filter may only skip decoding of inputs that are valid JSON objects:
# anything else must still be decoded so that it is reported as malformed.
# This validator never allocates. It is only used on inputs without a
# backslash (see _prefilter_pass), so strings hold no escapes.

cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # One comparison in the common case: bytes above the space are never whitespace.
    while i < n and s[i] <= 32 and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef extern from *:
    """
    /* The end of a JSON string without escapes: s[i] is the opening quote.
       Returns the index after the closing quote, or -1 for a backslash, a
       control character or no closing quote; *high is set when a byte
       >= 0x80 occurs (the caller then checks UTF-8). With SSE2 (every
       x86-64) 16 bytes are classified per step: IoT payloads are mostly
       short ASCII strings, and a byte loop cost ~10 instructions per byte. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline Py_ssize_t eng_string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int* high) {
        Py_ssize_t j = i + 1;
        unsigned char c;
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8(34), bslash = _mm_set1_epi8(92);   /* '"' and backslash */
        const __m128i ctl = _mm_set1_epi8(0x1F);
        while (j + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*)(s + j));
            unsigned q = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote));
            /* unsigned c <= 0x1F  <=>  min(c, 0x1F) == c */
            unsigned bad = (unsigned)_mm_movemask_epi8(_mm_or_si128(
                _mm_cmpeq_epi8(v, bslash), _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v)));
            unsigned h = (unsigned)_mm_movemask_epi8(v);
            if (q) {
                unsigned before = (q & (0u - q)) - 1u;   /* lanes before the first quote */
                if (bad & before) return -1;
                if (h & before) *high = 1;
                return j + __builtin_ctz(q) + 1;
            }
            if (bad) return -1;
            if (h) *high = 1;
            j += 16;
        }
    #endif
        for (; j < n; j++) {
            c = s[j];
            if (c == 34) return j + 1;
            if (c < 0x20 || c == 92) return -1;
            if (c >= 0x80) *high = 1;
        }
        return -1;
    }
    """
    Py_ssize_t eng_string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int* high) noexcept nogil


cdef inline Py_ssize_t _string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """s[i] is the opening quote; index after the closing quote, or -1 (also
    for any backslash: escapes are left to the real decoder)."""
    cdef int high = 0
    cdef Py_ssize_t j = eng_string_end(s, i, n, &high)
    if j < 0 or not high:
        return j
    return j if _utf8_ok(s, i + 1, j - 1) else -1


cdef bint _utf8_ok(const unsigned char* s, Py_ssize_t i, Py_ssize_t end) noexcept nogil:
    """s[i:end] is UTF-8 without overlongs, surrogates or code points above U+10FFFF."""
    cdef unsigned char c
    cdef unsigned int cp
    cdef int extra, k
    while i < end:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            extra, cp = 1, c & 0x1F
        elif 0xE0 <= c <= 0xEF:
            extra, cp = 2, c & 0x0F
        elif 0xF0 <= c <= 0xF4:
            extra, cp = 3, c & 0x07
        else:
            return False
        if i + extra >= end:
            return False
        for k in range(1, extra + 1):
            if (s[i + k] & 0xC0) != 0x80:
                return False
            cp = (cp << 6) | (s[i + k] & 0x3F)
        if (extra == 2 and (cp < 0x800 or 0xD800 <= cp <= 0xDFFF)) or \
                (extra == 3 and (cp < 0x10000 or cp > 0x10FFFF)):
            return False
        i += extra + 1
    return True


cdef Py_ssize_t _number_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; index after it, or -1."""
    cdef Py_ssize_t start
    if i < n and s[i] == 45:
        i += 1
    if i >= n:
        return -1
    if s[i] == 48:
        i += 1
    elif 49 <= s[i] <= 57:
        while i < n and 48 <= s[i] <= 57:
            i += 1
    else:
        return -1
    if i < n and s[i] == 46:
        i += 1
        start = i
        while i < n and 48 <= s[i] <= 57:
            i += 1
        if i == start:
            return -1
    if i < n and (s[i] == 101 or s[i] == 69):
        i += 1
        if i < n and (s[i] == 43 or s[i] == 45):
            i += 1
        start = i
        while i < n and 48 <= s[i] <= 57:
            i += 1
        if i == start:
            return -1
    return i


cdef bint _is_json_object(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """A complete, valid JSON document whose top level is an object, nested at
    most MAX_DEPTH levels (RFC 8259)."""
    cdef unsigned char stack[402]
    cdef Py_ssize_t depth = 0, i
    cdef unsigned char c
    i = _ws(s, 0, n)
    if i >= n or s[i] != 123:
        return False
    # `expect` 0: a value; 1: a key (after '{' or ',' in an object)
    cdef int expect = 0
    while True:
        i = _ws(s, i, n)
        if i >= n:
            return False
        c = s[i]
        if expect == 1:
            if c != 34:
                return False
            i = _string_end(s, i, n)
            if i < 0:
                return False
            i = _ws(s, i, n)
            if i >= n or s[i] != 58:
                return False
            i += 1
            expect = 0
            continue
        # a value
        if c == 123 or c == 91:
            depth += 1
            if depth > _MAX_DEPTH:
                return False
            stack[depth] = c
            i = _ws(s, i + 1, n)
            if i < n and ((c == 123 and s[i] == 125) or (c == 91 and s[i] == 93)):
                depth -= 1
                i += 1
            else:
                expect = 1 if c == 123 else 0
                continue
        elif c == 34:
            i = _string_end(s, i, n)
        elif c == 116:
            i = i + 4 if i + 4 <= n and s[i+1] == 114 and s[i+2] == 117 and s[i+3] == 101 else -1
        elif c == 102:
            i = i + 5 if i + 5 <= n and s[i+1] == 97 and s[i+2] == 108 and s[i+3] == 115 \
                and s[i+4] == 101 else -1
        elif c == 110:
            i = i + 4 if i + 4 <= n and s[i+1] == 117 and s[i+2] == 108 and s[i+3] == 108 else -1
        else:
            i = _number_end(s, i, n)
        if i < 0:
            return False
        # after a value: close containers or continue with ','
        while True:
            i = _ws(s, i, n)
            if depth == 0:
                return i == n
            if i >= n:
                return False
            c = s[i]
            if c == 44:
                i += 1
                expect = 1 if stack[depth] == 123 else 0
                break
            if (c == 125 and stack[depth] == 123) or (c == 93 and stack[depth] == 91):
                depth -= 1
                i += 1
                continue
            return False


def is_json_object(bytes data):
    """True when `data` is a valid JSON object (the validator the pre-filter uses)."""
    return _is_json_object(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))



cdef extern from "Python.h":
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0

# Operators of a numeric atom (see NumKey).
cdef enum:
    NK_LT = 0
    NK_LE = 1
    NK_GT = 2
    NK_GE = 3
    NK_EQ = 4
    NK_NE = 5
    NK_RANGE = 6    # lo <= v <= hi


@cython.final
@cython.no_gc
cdef class NumKey:
    """A pre-filter atom for `member OP number`: some member named `key`
    must hold a number that satisfies OP. In a valid JSON document without
    escapes every occurrence of `"key"` followed by `:` is that member's
    key, and its value follows verbatim; numbers are compared as doubles,
    exactly (the constants are exact doubles, and integers of more than 15
    digits are let through)."""
    cdef readonly bytes key    # the member name with its quotes
    cdef readonly int op
    cdef readonly double lo, hi

    def __init__(self, bytes key, int op, double lo, double hi=0.0):
        self.key = key
        self.op = op
        self.lo = lo
        self.hi = hi

    def __repr__(self):
        return f"NumKey({self.key!r}, {self.op}, {self.lo!r}, {self.hi!r})"

    cdef bint _holds(self, double v) noexcept:
        if self.op == NK_LT:
            return v < self.lo
        if self.op == NK_LE:
            return v <= self.lo
        if self.op == NK_GT:
            return v > self.lo
        if self.op == NK_GE:
            return v >= self.lo
        if self.op == NK_EQ:
            return v == self.lo
        if self.op == NK_NE:
            return v != self.lo
        return self.lo <= v <= self.hi

    cdef bint may_match(self, const char* s, Py_ssize_t n):
        cdef const char* k = PyBytes_AS_STRING(self.key)
        cdef Py_ssize_t kn = PyBytes_GET_SIZE(self.key), at = 0, i, j, d
        cdef const char* q
        cdef const unsigned char* u = <const unsigned char*>s
        cdef Py_ssize_t at2
        cdef char* endp
        cdef bint integer
        cdef double v
        while True:
            q = <const char*>memmem(s + at, n - at, k, kn)
            if q == NULL:
                return False
            at = q - s + 1
            i = _ws(u, q - s + kn, n)
            if i >= n or u[i] != 58:     # not followed by ':' -> a string value
                continue
            i = _ws(u, i + 1, n)
            j = _number_end(u, i, n)
            if j < 0:
                continue                  # not a number: the comparison is not TRUE
            integer = True
            d = 0
            for at2 in range(i, j):
                if u[at2] == 46 or u[at2] == 101 or u[at2] == 69:
                    integer = False
                elif 48 <= u[at2] <= 57:
                    d += 1
            if integer and d > 15:
                return True               # may not be an exact double: let it through
            v = PyOS_string_to_double(s + i, &endp, NULL)   # stops after the number
            if self._holds(v):
                return True


@cython.no_gc
cdef class Prefilter:
    """Necessary conditions on the raw bytes, in conjunctive normal form:
    every clause needs one of its atoms to hold: a needle (bytes) that
    occurs, or a NumKey. Only applied to inputs without a backslash, where
    every JSON string appears verbatim; NumKey atoms further rely on the
    input being a valid JSON object, which is checked before skipping."""
    cdef tuple clauses   # tuple of tuples of bytes

    def __init__(self, clauses):
        self.clauses = tuple(tuple(c) for c in clauses)

    @property
    def clause_list(self):
        return [list(c) for c in self.clauses]

    cdef bint may_match(self, const char* s, Py_ssize_t n):
        cdef bint found
        for clause in self.clauses:
            found = False
            for needle in <tuple>clause:
                if type(needle) is bytes:
                    found = memmem(s, n, PyBytes_AS_STRING(needle), PyBytes_GET_SIZE(needle)) != NULL
                else:
                    found = (<NumKey>needle).may_match(s, n)
                if found:
                    break
            if not found:
                return False
        return True

    def check(self, bytes data):
        """True when the event may match (or the filter does not apply)."""
        return _prefilter_pass(self, data)


cdef inline bint _prefilter_pass(Prefilter pf, bytes data):
    """False only when decoding can be skipped: no escapes (so strings are
    verbatim), a needle clause unmet, and the input a valid JSON object (so
    malformed input is still decoded and reported)."""
    cdef const char* s = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if memchr(s, 92, n) != NULL:
        return True
    if pf.may_match(s, n):
        return True
    return not _is_json_object(<const unsigned char*>s, n)


# ---------------------------------------------------------------- rules

@cython.no_gc
cdef class CompiledRule:
    """A compiled rule: `apply`, `matches` and their batch and raw-bytes forms.
    Build one with engine.compile_rule()."""
    cdef Expr where
    cdef Projection proj
    cdef readonly Prefilter prefilter
    cdef readonly object select_text, where_text

    def __init__(self, Expr where, Projection proj, Prefilter prefilter, select_text, where_text):
        self.where = where
        self.proj = proj
        self.prefilter = prefilter
        self.select_text = select_text
        self.where_text = where_text

    cdef inline bint _holds(self, object ev) except -1:
        return self.where is None or self.where.truth(ev) == T_TRUE

    def matches(self, event):
        """True when WHERE is TRUE for `event`."""
        return self._holds(event)

    def apply(self, event):
        """The projected output when WHERE holds, else None."""
        if self._holds(event):
            return self.proj.build(event)
        return None

    def apply_many(self, list events):
        """One result (output dict or None) per event, same order."""
        cdef list out = []
        for ev in events:
            out.append(self.proj.build(ev) if self._holds(ev) else None)
        return out

    def matches_many(self, list events):
        cdef list out = []
        for ev in events:
            out.append(self._holds(ev))
        return out

    cdef object _raw(self, object data):
        if self.prefilter is not None and type(data) is bytes and not _prefilter_pass(self.prefilter, data):
            return None
        ev = decode(data)
        if type(ev) is MalformedEvent:
            return ev
        return self.proj.build(ev, False) if self._holds(ev) else None

    def apply_raw(self, data):
        """Raw JSON bytes -> output dict, None (no match) or MalformedEvent.
        The pre-filter may skip decoding of events that cannot match."""
        return self._raw(data)

    def apply_raw_many(self, list datas):
        cdef list out = []
        for d in datas:
            out.append(self._raw(d))
        return out


@cython.no_gc
cdef class RuleSet:
    """Many compiled rules evaluated together. Rules carrying an equality on
    the index path are found through a dict, so an event only evaluates the
    rules that can match; results keep rule order."""
    cdef tuple rules        # CompiledRule per rule
    cdef tuple keys         # user key per rule
    cdef Expr index_path    # None: no index
    cdef dict buckets       # index value -> tuple of rule positions (ascending)
    cdef tuple always       # positions of rules without an index entry
    cdef tuple prefilters   # per-rule Prefilter; None if decoding cannot be skipped

    def __init__(self, rules, keys, index_path, buckets, always, prefilters):
        self.rules = tuple(rules)
        self.keys = tuple(keys)
        self.index_path = index_path
        self.buckets = {k: tuple(v) for k, v in buckets.items()}
        self.always = tuple(always)
        self.prefilters = None if prefilters is None else tuple(prefilters)

    def __len__(self):
        return len(self.rules)

    cdef list _evaluate(self, object ev, bint copy=True, object raw=None):
        """`raw`: the input bytes, the output of rules whose output is the input."""
        cdef list out = []
        cdef tuple bucket = ()
        cdef PyObject* p
        cdef Py_ssize_t i = 0, j = 0, na, nb, pos
        cdef CompiledRule r
        if self.index_path is not None:
            v = self.index_path.value(ev)
            if PyUnicode_Check(v):
                p = PyDict_GetItem(self.buckets, v)
                if p != NULL:
                    bucket = <tuple>p
        na = len(self.always)
        nb = len(bucket)
        # Merge the two ascending position lists so results keep rule order.
        while i < na or j < nb:
            if j >= nb or (i < na and <Py_ssize_t>self.always[i] < <Py_ssize_t>bucket[j]):
                pos = self.always[i]
                i += 1
            else:
                pos = bucket[j]
                j += 1
            r = <CompiledRule>self.rules[pos]
            if r._holds(ev):
                if raw is not None and r.proj.whole:
                    out.append((self.keys[pos], raw))
                else:
                    out.append((self.keys[pos], r.proj.build(ev, copy)))
        return out

    def evaluate(self, event):
        """[(key, output), …] for every rule that matches `event`, in rule order."""
        return self._evaluate(event)

    def evaluate_many(self, list events):
        cdef list out = []
        for ev in events:
            out.append(self._evaluate(ev))
        return out

    cdef object _decode_unless_skipped(self, object data):
        """The decoded event, None when the pre-filter proves no rule can
        match, or a MalformedEvent."""
        cdef Prefilter pf
        cdef const char* s
        cdef Py_ssize_t n
        if self.prefilters is not None and type(data) is bytes:
            s = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            if memchr(s, 92, n) == NULL:
                for pf in self.prefilters:
                    if pf.may_match(s, n):
                        break
                else:
                    if _is_json_object(<const unsigned char*>s, n):
                        return None
        return decode(data)

    cdef object _raw(self, object data):
        ev = self._decode_unless_skipped(data)
        if ev is None:
            return []
        if type(ev) is MalformedEvent:
            return ev
        return self._evaluate(ev, False)

    def evaluate_raw(self, data):
        """Raw JSON bytes -> [(key, output), …] or a MalformedEvent."""
        return self._raw(data)

    def evaluate_raw_many(self, list datas, bint with_events=False):
        """One entry per input: [(key, output), …] or a MalformedEvent. With
        `with_events`, well-formed entries are (event, [(key, output), …])
        where event is the decoded notification (None if decoding was
        skipped), so callers need not decode matched inputs again."""
        cdef list out = []
        if not with_events:
            for d in datas:
                out.append(self._raw(d))
            return out
        for d in datas:
            ev = self._decode_unless_skipped(d)
            if ev is None:
                out.append((None, []))
            elif type(ev) is MalformedEvent:
                out.append(ev)
            else:
                out.append((ev, self._evaluate(ev, False)))
        return out

    cdef object _route_raw(self, object data):
        ev = self._decode_unless_skipped(data)
        if ev is None:
            return None
        if type(ev) is MalformedEvent:
            return ev
        cdef list matches = self._evaluate(ev, False, data if type(data) is bytes else None)
        if not matches:
            return None
        key = _HEADER_DEVICE.value(ev)
        if not PyUnicode_Check(key):
            key = _BODY_DEVICE.value(ev)
            if not PyUnicode_Check(key):
                key = None
        et = _EVENT_TIME.value(ev)
        return (ev, key, et if PyUnicode_Check(et) else None, matches)

    def route_raw_many(self, list datas):
        """What the runtime needs to route a batch, in one pass: per input
        None (nothing matched, or the pre-filter skipped it), a
        MalformedEvent, or (event, device id, event_time, [(key, output), …]).
        The device id (notify_data.header.device_id, else
        notify_data.body.device_id) and event_time, strings only, are the
        record key and time. A rule whose output is the input unchanged
        (`SELECT *` alone) gets the input bytes as its output, so they are
        forwarded as they arrived: numbers as written, key order and escapes,
        and no copy or re-encoding."""
        cdef list out = []
        for d in datas:
            out.append(self._route_raw(d))
        return out


# The record key and time of a notification (see RuleSet.route_raw_many).
cdef Path _HEADER_DEVICE = Path(("notify_data", "header", "device_id"))
cdef Path _BODY_DEVICE = Path(("notify_data", "body", "device_id"))
cdef Path _EVENT_TIME = Path(("event_time",))


def decode_event(data):
    """Raw bytes -> dict or MalformedEvent (the decoder the raw forms use)."""
    return decode(data)


# Comparison operator codes for the compiler.
NUMKEY_OPS = {"<": NK_LT, "<=": NK_LE, ">": NK_GT, ">=": NK_GE, "=": NK_EQ, "<>": NK_NE,
              "BETWEEN": NK_RANGE}
OPS = {"=": Py_EQ, "<>": Py_NE, "<": Py_LT, "<=": Py_LE, ">": Py_GT, ">=": Py_GE}
KIND_STR = K_STR
KIND_NUM = K_NUM
SVC = {"GET_SERVICE": SVC_GET, "GET_SERVICES": SVC_GET_ALL, "CONTAINS_SERVICES": SVC_CONTAINS,
       "GET_SERVICE_PROPERTIES": SVC_PROPERTIES, "GET_SERVICE_PROPERTY": SVC_PROPERTY}
