# Included by _core.pyx. The built-in functions: the IoTDA functions' nodes
# and the library of pure functions that LibCall nodes apply. Each function's
# declaration (names, arity, reference form, docs) is in
# engine/language/library.py; its compiled form is here.

# ---------------------------------------------------------------- IoTDA functions

cdef object _tags(object ev):
    nd = _get(ev, "notify_data")
    tags = _get(_get(nd, "header"), "tags")
    if PyList_Check(tags):
        return tags
    tags = _get(_get(nd, "body"), "tags")
    if PyList_Check(tags):
        return tags
    return None


cdef object _services(object ev):
    """The services array of a property report; None on any other message."""
    if not PyDict_Check(ev):
        return None
    r = _get(ev, "resource")
    if not (PyUnicode_Check(r) and r == "device.property"):
        return None
    s = _get(_get(_get(ev, "notify_data"), "body"), "services")
    if PyList_Check(s):
        return s
    return []


cdef inline bint _service_matches(object svc, str sid, bint fuzzy):
    cdef object v = _get(svc, "service_id")
    if not PyUnicode_Check(v):
        return False
    if fuzzy:
        return sid in <str>v
    return <str>v == sid


@cython.no_gc
cdef class GetTag(Expr):
    cdef Expr key

    def __init__(self, Expr key):
        self.key = key

    cdef object value(self, object ev):
        k = self.key.value(ev)
        if not PyUnicode_Check(k):
            return _MISSING
        tags = _tags(ev)
        if tags is None:
            return _MISSING
        for t in <list>tags:
            tk = _get(t, "tag_key")
            if PyUnicode_Check(tk) and tk == k:
                return _get(t, "tag_value")
        return _MISSING


@cython.no_gc
cdef class ContainsTag(Cond):
    cdef Expr key

    def __init__(self, Expr key):
        self.key = key

    cdef int truth(self, object ev) except -1:
        k = self.key.value(ev)
        if not PyUnicode_Check(k):
            return T_FALSE
        tags = _tags(ev)
        if tags is None:
            return T_FALSE
        for t in <list>tags:
            tk = _get(t, "tag_key")
            if PyUnicode_Check(tk) and tk == k:
                return T_TRUE
        return T_FALSE


# service function variants
cdef enum:
    SVC_GET = 0
    SVC_GET_ALL = 1
    SVC_CONTAINS = 2
    SVC_PROPERTIES = 3
    SVC_PROPERTY = 4


@cython.no_gc
cdef class ServiceFn(Expr):
    cdef Expr sid, prop
    cdef int fn
    cdef bint fuzzy

    def __init__(self, int fn, Expr sid, bint fuzzy=False, Expr prop=None):
        self.fn = fn
        self.sid = sid
        self.fuzzy = fuzzy
        self.prop = prop

    cdef object value(self, object ev):
        services = _services(ev)
        if services is None:
            return False if self.fn == SVC_CONTAINS else _MISSING
        sid = self.sid.value(ev)
        if not PyUnicode_Check(sid):
            return False if self.fn == SVC_CONTAINS else _MISSING
        cdef list found
        if self.fn == SVC_GET_ALL:
            found = [s for s in <list>services if _service_matches(s, sid, self.fuzzy)]
            return found
        for s in <list>services:
            if _service_matches(s, sid, self.fuzzy):
                if self.fn == SVC_GET:
                    return s
                if self.fn == SVC_CONTAINS:
                    return True
                props = _get(s, "properties")
                if self.fn == SVC_PROPERTIES:
                    return props if PyDict_Check(props) else _MISSING
                k = self.prop.value(ev)
                if not PyUnicode_Check(k):
                    return _MISSING
                return _get(props, k)
        return False if self.fn == SVC_CONTAINS else _MISSING


@cython.no_gc
cdef class StartsEnds(Expr):
    cdef Expr s, affix
    cdef bint ends

    def __init__(self, Expr s, Expr affix, bint ends):
        self.s = s
        self.affix = affix
        self.ends = ends

    cdef object value(self, object ev):
        v = self.s.value(ev)
        if not PyUnicode_Check(v):
            return _MISSING
        a = self.affix.value(ev)
        if not PyUnicode_Check(a):
            return _MISSING
        return (<str>v).endswith(a) if self.ends else (<str>v).startswith(a)


@cython.no_gc
cdef class ConcatFn(Expr):
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


cdef inline object _text_or_number(object v):
    """REPLACE/SUBSTRING input: a string, or a number rendered; else MISSING."""
    cdef int k = kind_of(v)
    if k == K_STR or k == K_NUM:
        return render(v)
    return _MISSING


@cython.no_gc
cdef class ReplaceFn(Expr):
    cdef Expr s, target, repl

    def __init__(self, Expr s, Expr target, Expr repl):
        self.s = s
        self.target = target
        self.repl = repl

    cdef object value(self, object ev):
        v = _text_or_number(self.s.value(ev))
        if v is _MISSING:
            return _MISSING
        t = self.target.value(ev)
        r = self.repl.value(ev)
        if not PyUnicode_Check(t) or not PyUnicode_Check(r):
            return _MISSING
        if not t:
            return v
        return (<str>v).replace(t, r)


cdef inline Py_ssize_t _clamp_index(object x, Py_ssize_t n) except? -2:
    """Index argument: a number truncated toward zero, clamped to [0, n]; -2 if not a number."""
    if kind_of(x) != K_NUM:
        return -2
    if PyFloat_Check(x):
        d = <double>x
        if d != d:
            return -2          # NaN has no position
        if d <= 0:
            return 0
        if d >= n:
            return n
        return <Py_ssize_t>d   # C cast truncates toward zero
    if x <= 0:
        return 0
    if x >= n:
        return n
    return <Py_ssize_t>x


@cython.no_gc
cdef class SubstringFn(Expr):
    cdef Expr s, begin, end

    def __init__(self, Expr s, Expr begin, Expr end=None):
        self.s = s
        self.begin = begin
        self.end = end

    cdef object value(self, object ev):
        v = _text_or_number(self.s.value(ev))
        if v is _MISSING:
            return _MISSING
        cdef Py_ssize_t n = len(<str>v)
        cdef Py_ssize_t b = _clamp_index(self.begin.value(ev), n)
        cdef Py_ssize_t e = n
        if b == -2:
            return _MISSING
        if self.end is not None:
            e = _clamp_index(self.end.value(ev), n)
            if e == -2:
                return _MISSING
        if b >= e:
            return ""
        return (<str>v)[b:e]


@cython.no_gc
cdef class CaseFn(Expr):
    """LOWER / UPPER."""
    cdef Expr s
    cdef bint upper

    def __init__(self, Expr s, bint upper):
        self.s = s
        self.upper = upper

    cdef object value(self, object ev):
        v = self.s.value(ev)
        if not PyUnicode_Check(v):
            return _MISSING
        return (<str>v).upper() if self.upper else (<str>v).lower()




# ---------------------------------------------------------------- the library
#
# Pure functions of their evaluated arguments, applied by LibCall. Each takes
# the argument tuple (the checker has enforced the arity) and returns a JSON
# value or MISSING; none may raise (LibCall still turns an unexpected
# exception into MISSING, so a bug cannot stop a worker).

from libc.math cimport (fabs, floor, ceil, sqrt, pow, exp, log, log10, log2, fmod,
                        sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh,
                        asinh, acosh, atanh)
import base64 as _base64
import binascii as _binascii
import hashlib as _hashlib
import json as _json
import re as _re

ctypedef object (*libfn_t)(tuple a)
ctypedef double (*dfn_t)(double x) noexcept nogil


@cython.no_gc
cdef class _LibFn:
    cdef libfn_t f


cdef dict _LIB = {}


cdef _lib(str name, libfn_t f):
    cdef _LibFn o = _LibFn.__new__(_LibFn)
    o.f = f
    _LIB[name] = o


def library_names():
    """Names of the core's library functions (for the registry's checks)."""
    return sorted(_LIB)


@cython.no_gc
cdef class LibCall(Expr):
    """A call of a library function: evaluate the arguments, apply."""
    cdef libfn_t f
    cdef tuple args

    def __init__(self, str name, args):
        self.f = (<_LibFn>_LIB[name]).f
        self.args = tuple(args)

    cdef object value(self, object ev):
        cdef tuple vals = tuple([(<Expr>x).value(ev) for x in self.args])
        try:
            return self.f(vals)
        except Exception:
            return _MISSING


cdef inline bint _isnum(object v):
    return kind_of(v) == K_NUM


cdef inline bint _isint(object v):
    return PyLong_Check(v) and not PyBool_Check(v)


cdef inline object _fres(double d):
    """A decimal result; MISSING when not finite (overflow, domain error)."""
    if not isfinite(d):
        return _MISSING
    return d


cdef inline object _to_int(double r):
    """An integral double as an int; MISSING outside the signed 64-bit range."""
    if not (r >= -9223372036854775808.0 and r < 9223372036854775808.0):
        return _MISSING
    return <long long>r


cdef object _unary(object x, dfn_t f):
    if not _isnum(x):
        return _MISSING
    return _fres(f(<double>x))


# -- math

cdef object f_abs(tuple a):
    x = a[0]
    if not _isnum(x):
        return _MISSING
    if PyFloat_Check(x):
        return fabs(<double>x)
    return int64_or_missing(-x if x < 0 else x)

cdef object f_ceil(tuple a):
    x = a[0]
    if not _isnum(x):
        return _MISSING
    if not PyFloat_Check(x):
        return x
    return _to_int(ceil(<double>x))

cdef object f_floor(tuple a):
    x = a[0]
    if not _isnum(x):
        return _MISSING
    if not PyFloat_Check(x):
        return x
    return _to_int(floor(<double>x))

cdef object f_round(tuple a):
    x = a[0]
    if not _isnum(x):
        return _MISSING
    if not PyFloat_Check(x):
        return x
    cdef double d = <double>x
    cdef double m = fabs(d)
    cdef double r = floor(m)
    if m - r >= 0.5:
        r += 1
    return _to_int(-r if d < 0 else r)

cdef object f_sqrt(tuple a):
    x = a[0]
    if not _isnum(x) or <double>x < 0:
        return _MISSING
    return _fres(sqrt(<double>x))

cdef object f_power(tuple a):
    x, y = a[0], a[1]
    if not (_isnum(x) and _isnum(y)):
        return _MISSING
    return _fres(pow(<double>x, <double>y))

cdef object f_exp(tuple a):
    return _unary(a[0], exp)

cdef object _positive_log(object x, dfn_t f):
    if not _isnum(x) or <double>x <= 0:
        return _MISSING
    return _fres(f(<double>x))

cdef object f_log(tuple a):
    return _positive_log(a[0], log)

cdef object f_log10(tuple a):
    return _positive_log(a[0], log10)

cdef object f_log2(tuple a):
    return _positive_log(a[0], log2)

cdef object f_fmod(tuple a):
    x, y = a[0], a[1]
    if not (_isnum(x) and _isnum(y)) or <double>y == 0:
        return _MISSING
    return _fres(fmod(<double>x, <double>y))

cdef object f_mod(tuple a):
    x, y = a[0], a[1]
    if not (_isnum(x) and _isnum(y)) or not y:
        return _MISSING
    if PyFloat_Check(x) or PyFloat_Check(y):
        return _fres(fmod(<double>x, <double>y))
    r = (-x if x < 0 else x) % (-y if y < 0 else y)
    return -r if x < 0 else r

cdef object f_sin(tuple a):
    return _unary(a[0], sin)
cdef object f_cos(tuple a):
    return _unary(a[0], cos)
cdef object f_tan(tuple a):
    return _unary(a[0], tan)
cdef object f_asin(tuple a):
    return _unary(a[0], asin)
cdef object f_acos(tuple a):
    return _unary(a[0], acos)
cdef object f_atan(tuple a):
    return _unary(a[0], atan)
cdef object f_sinh(tuple a):
    return _unary(a[0], sinh)
cdef object f_cosh(tuple a):
    return _unary(a[0], cosh)
cdef object f_tanh(tuple a):
    return _unary(a[0], tanh)
cdef object f_asinh(tuple a):
    return _unary(a[0], asinh)
cdef object f_acosh(tuple a):
    return _unary(a[0], acosh)
cdef object f_atanh(tuple a):
    return _unary(a[0], atanh)

cdef object f_atan2(tuple a):
    y, x = a[0], a[1]
    if not (_isnum(x) and _isnum(y)):
        return _MISSING
    return _fres(atan2(<double>y, <double>x))


# -- type tests and conversions

cdef object f_is_null(tuple a):
    return kind_of(a[0]) == K_NULL
cdef object f_is_not_null(tuple a):
    return kind_of(a[0]) != K_NULL
cdef object f_is_num(tuple a):
    return kind_of(a[0]) == K_NUM
cdef object f_is_int(tuple a):
    return _isint(a[0])
cdef object f_is_float(tuple a):
    return PyFloat_Check(a[0])
cdef object f_is_str(tuple a):
    return kind_of(a[0]) == K_STR
cdef object f_is_bool(tuple a):
    return PyBool_Check(a[0])
cdef object f_is_map(tuple a):
    return PyDict_Check(a[0])
cdef object f_is_array(tuple a):
    return PyList_Check(a[0])

# A number written as JSON writes it (the only text int() and float() read).
_NUMBER_TEXT = _re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")

cdef object _parse_number(str s):
    m = _NUMBER_TEXT.fullmatch(s)
    if m is None:
        return _MISSING
    if m.group(1) is None and m.group(2) is None:
        return int64_or_missing(int(s))
    return _fres(float(s))

cdef object f_int(tuple a):
    x = a[0]
    if PyBool_Check(x):
        return 1 if x else 0
    if kind_of(x) == K_STR:
        x = _parse_number(x)
    if not _isnum(x):
        return _MISSING
    if PyFloat_Check(x):
        d = <double>x
        return _to_int(floor(d) if d >= 0 else ceil(d))
    return int64_or_missing(x)

cdef object f_float(tuple a):
    x = a[0]
    if PyBool_Check(x):
        return 1.0 if x else 0.0
    if kind_of(x) == K_STR:
        x = _parse_number(x)
    if not _isnum(x):
        return _MISSING
    return <double>x

cdef object _json_text(object v):
    return _json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

cdef object f_str(tuple a):
    x = a[0]
    if PyDict_Check(x) or PyList_Check(x):
        return _json_text(x)
    return render(x)

cdef object f_bool(tuple a):
    x = a[0]
    if PyBool_Check(x):
        return x
    if _isnum(x):
        return x != 0
    if kind_of(x) == K_STR:
        if x == "true":
            return True
        if x == "false":
            return False
    return _MISSING

cdef object f_coalesce(tuple a):
    for x in a:
        if kind_of(x) != K_NULL:
            return x
    return _MISSING


# -- strings

cdef object f_length(tuple a):
    x = a[0]
    if kind_of(x) == K_STR or PyList_Check(x) or PyDict_Check(x):
        return len(x)
    return _MISSING

cdef object f_trim(tuple a):
    x = a[0]
    return (<str>x).strip() if kind_of(x) == K_STR else _MISSING
cdef object f_ltrim(tuple a):
    x = a[0]
    return (<str>x).lstrip() if kind_of(x) == K_STR else _MISSING
cdef object f_rtrim(tuple a):
    x = a[0]
    return (<str>x).rstrip() if kind_of(x) == K_STR else _MISSING

cdef object f_reverse(tuple a):
    x = a[0]
    if kind_of(x) == K_STR:
        return (<str>x)[::-1]
    if PyList_Check(x):
        return (<list>x)[::-1]
    return _MISSING

cdef inline Py_ssize_t _index(object x) except? -3:
    """A count or position argument: a number truncated toward zero (negatives
    as 0, huge ones capped); -1 when not a number."""
    if not _isnum(x):
        return -1
    d = <double>x
    if d != d:
        return -1
    if d <= 0:
        return 0
    if d > 1e9:
        return 1000000000
    return <Py_ssize_t>d

cdef object f_substr(tuple a):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    cdef Py_ssize_t start = _index(a[1])
    if start < 0:
        return _MISSING
    if len(a) < 3:
        return (<str>s)[start:]
    cdef Py_ssize_t n = _index(a[2])
    if n < 0:
        return _MISSING
    return (<str>s)[start:start + n]

cdef object f_split(tuple a):
    s, sep = a[0], a[1]
    if kind_of(s) != K_STR or kind_of(sep) != K_STR or not sep:
        return _MISSING
    return (<str>s).split(sep)

cdef object f_join(tuple a):
    arr = a[0]
    sep = a[1] if len(a) > 1 else ""
    if not PyList_Check(arr) or kind_of(sep) != K_STR:
        return _MISSING
    parts = []
    for x in <list>arr:
        t = render(x)
        if t is _MISSING:
            return _MISSING
        parts.append(t)
    return (<str>sep).join(parts)

cdef Py_ssize_t _MAX_PAD = 65536

cdef object f_pad(tuple a):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    cdef Py_ssize_t n = _index(a[1])
    if n < 0 or n > _MAX_PAD:
        return _MISSING
    side = a[2] if len(a) > 2 else "trailing"
    ch = a[3] if len(a) > 3 else " "
    if kind_of(ch) != K_STR or len(ch) != 1 or kind_of(side) != K_STR:
        return _MISSING
    cdef Py_ssize_t missing = n - len(<str>s)
    if side == "trailing":
        return s + ch * missing if missing > 0 else s
    if side == "leading":
        return ch * missing + s if missing > 0 else s
    if side == "both":
        if missing <= 0:
            return s
        return ch * (missing // 2) + s + ch * (missing - missing // 2)
    return _MISSING

cdef dict _REGEX_CACHE = {}

cdef object _regex(object p):
    """A compiled pattern, or None when `p` is not a string or not a valid regex."""
    if kind_of(p) != K_STR:
        return None
    rx = _REGEX_CACHE.get(p, _MISSING)
    if rx is _MISSING:
        try:
            rx = _re.compile(p)
        except Exception:
            rx = None
        if len(_REGEX_CACHE) > 1024:
            _REGEX_CACHE.clear()
        _REGEX_CACHE[p] = rx
    return rx

cdef object f_regex_match(tuple a):
    s, rx = a[0], _regex(a[1])
    if kind_of(s) != K_STR or rx is None:
        return _MISSING
    return rx.search(s) is not None

cdef object f_regex_replace(tuple a):
    s, rx, r = a[0], _regex(a[1]), a[2]
    if kind_of(s) != K_STR or rx is None or kind_of(r) != K_STR:
        return _MISSING
    # The replacement is literal text (no back-references), so it cannot fail.
    return rx.sub(lambda m: r, s)

cdef object f_regex_extract(tuple a):
    s, rx = a[0], _regex(a[1])
    if kind_of(s) != K_STR or rx is None:
        return _MISSING
    m = rx.search(s)
    if m is None:
        return []
    if rx.groups == 0:
        return [m.group(0)]
    return [g for g in m.groups()]

cdef object f_find(tuple a):
    s, sub = a[0], a[1]
    if kind_of(s) != K_STR or kind_of(sub) != K_STR:
        return _MISSING
    i = (<str>s).find(sub)
    return "" if i < 0 else (<str>s)[i:]

cdef object f_strpos(tuple a):
    s, sub = a[0], a[1]
    if kind_of(s) != K_STR or kind_of(sub) != K_STR:
        return _MISSING
    return (<str>s).find(sub)

cdef object f_sprintf(tuple a):
    fmt = a[0]
    if kind_of(fmt) != K_STR:
        return _MISSING
    out = []
    cdef Py_ssize_t i = 0, n = len(<str>fmt), k = 1
    while i < n:
        c = (<str>fmt)[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            return _MISSING
        d = (<str>fmt)[i + 1]
        i += 2
        if d == "%":
            out.append("%")
            continue
        if k >= len(a):
            return _MISSING
        v = a[k]
        k += 1
        if d == "s":
            t = f_str((v,))
        elif d == "d":
            t = f_int((v,)) if _isnum(v) else _MISSING
            if t is not _MISSING:
                t = str(t)
        else:
            return _MISSING
        if t is _MISSING:
            return _MISSING
        out.append(t)
    if k != len(a):
        return _MISSING
    return "".join(out)


# -- maps and arrays

cdef object f_map_get(tuple a):
    k, m = a[0], a[1]
    if kind_of(k) != K_STR or not PyDict_Check(m):
        return _MISSING
    v = _get(m, k)
    if v is _MISSING and len(a) > 2:
        return a[2]
    return v

cdef object f_map_put(tuple a):
    k, v, m = a[0], a[1], a[2]
    if kind_of(k) != K_STR or not PyDict_Check(m) or v is _MISSING:
        return _MISSING
    out = dict(<dict>m)
    out[k] = v
    return out

cdef object f_map_keys(tuple a):
    m = a[0]
    return list(<dict>m) if PyDict_Check(m) else _MISSING

cdef object f_map_values(tuple a):
    m = a[0]
    return list((<dict>m).values()) if PyDict_Check(m) else _MISSING

cdef object f_nth(tuple a):
    n, arr = a[0], a[1]
    if not _isint(n) or not PyList_Check(arr):
        return _MISSING
    if n < 1 or n > len(<list>arr):
        return _MISSING
    return (<list>arr)[n - 1]

cdef object f_first(tuple a):
    arr = a[0]
    if not PyList_Check(arr) or not arr:
        return _MISSING
    return (<list>arr)[0]

cdef object f_last(tuple a):
    arr = a[0]
    if not PyList_Check(arr) or not arr:
        return _MISSING
    return (<list>arr)[len(<list>arr) - 1]

cdef object f_contains(tuple a):
    x, arr = a[0], a[1]
    cdef int k = kind_of(x)
    if not PyList_Check(arr) or k == K_NULL or k == K_OTHER:
        return _MISSING
    for e in <list>arr:
        if compare_values(x, e, Py_EQ) == T_TRUE:
            return True
    return False

cdef object f_distinct(tuple a):
    arr = a[0]
    if not PyList_Check(arr):
        return _MISSING
    out = []
    for e in <list>arr:
        k = kind_of(e)
        if k == K_NULL or k == K_OTHER:
            return _MISSING
        for o in out:
            if compare_values(e, o, Py_EQ) == T_TRUE:
                break
        else:
            out.append(e)
    return out

cdef object f_sort(tuple a):
    arr = a[0]
    if not PyList_Check(arr):
        return _MISSING
    if not arr:
        return []
    cdef int k = kind_of((<list>arr)[0])
    if k != K_NUM and k != K_STR:
        return _MISSING
    for e in <list>arr:
        if kind_of(e) != k:
            return _MISSING
    return sorted(<list>arr)

cdef Py_ssize_t _MAX_RANGE = 10000

cdef object f_range(tuple a):
    lo, hi = a[0], a[1]
    step = a[2] if len(a) > 2 else 1
    if not (_isint(lo) and _isint(hi) and _isint(step)) or step == 0:
        return _MISSING
    count = (hi - lo) // step + 1
    if count > _MAX_RANGE:
        return _MISSING
    if count <= 0:
        return []
    return [lo + i * step for i in range(count)]

cdef object f_sublist(tuple a):
    cdef Py_ssize_t start = 0, n
    arr = a[len(a) - 1]
    if not PyList_Check(arr):
        return _MISSING
    if len(a) == 3:
        if not _isint(a[0]) or a[0] < 1:
            return _MISSING
        start = _index(a[0]) - 1
    if not _isint(a[len(a) - 2]):
        return _MISSING
    n = _index(a[len(a) - 2])
    return (<list>arr)[start:start + n]


# -- hashing and encoding

cdef object _utf8(object s):
    return (<str>s).encode("utf-8", "surrogatepass")

cdef object _hash(tuple a, str algo):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    return _hashlib.new(algo, _utf8(s)).hexdigest()

cdef object f_md5(tuple a):
    return _hash(a, "md5")
cdef object f_sha1(tuple a):
    return _hash(a, "sha1")
cdef object f_sha256(tuple a):
    return _hash(a, "sha256")

cdef object f_base64_encode(tuple a):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    return _base64.b64encode(_utf8(s)).decode("ascii")

cdef object _text_of(bytes b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return _MISSING

cdef object f_base64_decode(tuple a):
    s = a[0]
    if kind_of(s) != K_STR or not (<str>s).isascii():
        return _MISSING
    try:
        b = _base64.b64decode(s, validate=True)
    except _binascii.Error:
        return _MISSING
    return _text_of(b)

cdef object f_hex_encode(tuple a):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    return _utf8(s).hex()

cdef object f_hex_decode(tuple a):
    s = a[0]
    if kind_of(s) != K_STR or not (<str>s).isascii() or len(<str>s) % 2:
        return _MISSING
    try:
        b = bytes.fromhex(s)
    except ValueError:
        return _MISSING
    return _text_of(b)

cdef object f_json_encode(tuple a):
    x = a[0]
    if x is _MISSING:
        return _MISSING
    return _json_text(x)

cdef object f_json_decode(tuple a):
    s = a[0]
    if kind_of(s) != K_STR:
        return _MISSING
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return _MISSING


# -- time (UTC)

import datetime as _dt
import random as _random
import time as _time
import uuid as _uuid

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
# Both IoTDA forms: 2015-12-12T12:12:12[.fff]Z (or an offset) and 20151212T121212Z.
_RFC3339 = _re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
_COMPACT = _re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")

cdef int _unit(tuple a, Py_ssize_t i) except -2:
    """1 for seconds, 1000 for milliseconds, -1 for anything else."""
    if len(a) <= i:
        return 1
    u = a[i]
    if u == "second" or u == "s":
        return 1
    if u == "millisecond" or u == "ms":
        return 1000
    return -1

cdef object f_now_timestamp(tuple a):
    cdef int u = _unit(a, 0)
    if u < 0:
        return _MISSING
    return int(_time.time() * u)

cdef object f_now_rfc3339(tuple a):
    cdef int u = _unit(a, 0)
    if u < 0:
        return _MISSING
    if u == 1000:
        return f_unix_ts_to_rfc3339((int(_time.time() * 1000), "millisecond"))
    return f_unix_ts_to_rfc3339((int(_time.time()),))

cdef object f_rand(tuple a):
    return _random.random()

cdef object f_newuuid(tuple a):
    return str(_uuid.uuid4())

cdef object f_unix_ts_to_rfc3339(tuple a):
    ts = a[0]
    cdef int u = _unit(a, 1)
    if not _isnum(ts) or u < 0:
        return _MISSING
    ms = int(floor(<double>ts * (1000 // u))) if PyFloat_Check(ts) else ts * (1000 // u)
    try:
        t = _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError:
        return _MISSING
    if u == 1000:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")

cdef object _parse_time_ms(object s):
    """Milliseconds since the epoch of an IoTDA/RFC 3339 time text, or MISSING."""
    if kind_of(s) != K_STR:
        return _MISSING
    m = _RFC3339.fullmatch(s)
    offset = 0
    if m is not None:
        frac = m.group(7)
        ms = int((frac[1:] + "00")[:3]) if frac else 0
        if m.group(9):
            offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60000
            if m.group(9) == "-":
                offset = -offset
    else:
        m = _COMPACT.fullmatch(s)
        if m is None:
            return _MISSING
        ms = 0
    try:
        t = _dt.datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)),
                         int(m.group(5)), int(m.group(6)), tzinfo=_dt.timezone.utc)
    except ValueError:
        return _MISSING
    d = t - _EPOCH
    return (d.days * 86400 + d.seconds) * 1000 + ms - offset

cdef object f_rfc3339_to_unix_ts(tuple a):
    cdef int u = _unit(a, 1)
    ms = _parse_time_ms(a[0])
    if ms is _MISSING or u < 0:
        return _MISSING
    return ms // (1000 // u)

cdef object f_format_date(tuple a):
    fmt, ts = a[0], a[1]
    cdef int u = _unit(a, 2)
    if kind_of(fmt) != K_STR or not _isnum(ts) or u < 0:
        return _MISSING
    ms = int(floor(<double>ts * (1000 // u))) if PyFloat_Check(ts) else ts * (1000 // u)
    try:
        t = _EPOCH + _dt.timedelta(milliseconds=ms)
        return t.strftime(fmt)
    except (OverflowError, ValueError):
        return _MISSING


# -- the table LibCall reads
_lib("abs", f_abs)
_lib("ceil", f_ceil)
_lib("floor", f_floor)
_lib("round", f_round)
_lib("sqrt", f_sqrt)
_lib("power", f_power)
_lib("exp", f_exp)
_lib("log", f_log)
_lib("log10", f_log10)
_lib("log2", f_log2)
_lib("fmod", f_fmod)
_lib("mod", f_mod)
_lib("sin", f_sin)
_lib("cos", f_cos)
_lib("tan", f_tan)
_lib("asin", f_asin)
_lib("acos", f_acos)
_lib("atan", f_atan)
_lib("sinh", f_sinh)
_lib("cosh", f_cosh)
_lib("tanh", f_tanh)
_lib("asinh", f_asinh)
_lib("acosh", f_acosh)
_lib("atanh", f_atanh)
_lib("atan2", f_atan2)
_lib("is_null", f_is_null)
_lib("is_not_null", f_is_not_null)
_lib("is_num", f_is_num)
_lib("is_int", f_is_int)
_lib("is_float", f_is_float)
_lib("is_str", f_is_str)
_lib("is_bool", f_is_bool)
_lib("is_map", f_is_map)
_lib("is_array", f_is_array)
_lib("int", f_int)
_lib("float", f_float)
_lib("str", f_str)
_lib("bool", f_bool)
_lib("coalesce", f_coalesce)
_lib("length", f_length)
_lib("trim", f_trim)
_lib("ltrim", f_ltrim)
_lib("rtrim", f_rtrim)
_lib("reverse", f_reverse)
_lib("substr", f_substr)
_lib("split", f_split)
_lib("join", f_join)
_lib("pad", f_pad)
_lib("regex_match", f_regex_match)
_lib("regex_replace", f_regex_replace)
_lib("regex_extract", f_regex_extract)
_lib("find", f_find)
_lib("strpos", f_strpos)
_lib("sprintf", f_sprintf)
_lib("map_get", f_map_get)
_lib("map_put", f_map_put)
_lib("map_keys", f_map_keys)
_lib("map_values", f_map_values)
_lib("nth", f_nth)
_lib("first", f_first)
_lib("last", f_last)
_lib("contains", f_contains)
_lib("distinct", f_distinct)
_lib("sort", f_sort)
_lib("range", f_range)
_lib("sublist", f_sublist)
_lib("md5", f_md5)
_lib("sha1", f_sha1)
_lib("sha256", f_sha256)
_lib("base64_encode", f_base64_encode)
_lib("base64_decode", f_base64_decode)
_lib("hex_encode", f_hex_encode)
_lib("hex_decode", f_hex_decode)
_lib("json_encode", f_json_encode)
_lib("json_decode", f_json_decode)
_lib("now_timestamp", f_now_timestamp)
_lib("now_rfc3339", f_now_rfc3339)
_lib("rand", f_rand)
_lib("newuuid", f_newuuid)
_lib("unix_ts_to_rfc3339", f_unix_ts_to_rfc3339)
_lib("rfc3339_to_unix_ts", f_rfc3339_to_unix_ts)
_lib("format_date", f_format_date)
