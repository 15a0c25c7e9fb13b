# Part of engine/_core.pyx (included there; one extension module): the three-valued logic and value kinds shared by every node.

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
