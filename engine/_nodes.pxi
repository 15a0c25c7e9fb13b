# Part of engine/_core.pyx (included there; one extension module): the expression and condition nodes rules compile to.

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


@cython.no_gc
cdef class TopicMatch(Cond):
    """path matches an MQTT topic filter with wildcards: `levels` holds each
    level's text, None for `+`; `rest`: the filter ends with `#` (which also
    matches the level above it). One split and a few compares, where a
    regular expression would cost several times more per event."""
    cdef Path path
    cdef tuple levels
    cdef bint rest

    def __init__(self, Path path, levels, bint rest):
        self.path = path
        self.levels = tuple(levels)
        self.rest = rest

    cdef int truth(self, object ev) except -1:
        cdef Py_ssize_t i, n = len(self.levels)
        v = self.path.value(ev)
        if not PyUnicode_Check(v):
            return T_UNKNOWN
        cdef list parts = (<str>v).split("/")
        if len(parts) < n or (not self.rest and len(parts) != n):
            return T_FALSE
        for i in range(n):
            level = self.levels[i]
            if level is not None and not str_eq(parts[i], level):
                return T_FALSE
        return T_TRUE


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
