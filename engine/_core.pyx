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
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

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
    void* memcpy(void* dst, const void* src, size_t n) nogil

# The module is one extension built from several files by role (as asyncpg
# does): values, nodes, functions, projection, raw bytes, sparse decoding,
# routing records, Kafka batches; the rule set is here.
include "_values.pxi"
include "_nodes.pxi"

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


include "_projection.pxi"
include "_rawbytes.pxi"
include "_sparse.pxi"
include "_routing.pxi"
include "_kafka.pxi"


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
        """The projected output when WHERE holds, else None (FOREACH: the
        list of outputs, possibly empty)."""
        if self._holds(event):
            return self.proj.output(event)
        return None

    def apply_many(self, list events):
        """One result (output dict or None) per event, same order."""
        cdef list out = []
        for ev in events:
            out.append(self.proj.output(ev) if self._holds(ev) else None)
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
        return self.proj.output(ev, False) if self._holds(ev) else None

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
    # (resource, event) -> events of that kind decoded by route_raw_many since
    # the last take_kinds(): with each rule's subject, the runtime tells a
    # subject mismatch from a WHERE that was not TRUE (the metrics).
    cdef dict kinds
    # key -> (resource, event) of each rule (compile_ruleset sets it).
    cdef public dict subjects
    # Decodes only what the rules read (route_raw_many); None: decode whole.
    cdef public SparseReader sparse

    def __init__(self, rules, keys, index_path, buckets, always, prefilters):
        self.rules = tuple(rules)
        self.keys = tuple(keys)
        self.index_path = index_path
        self.buckets = {k: tuple(v) for k, v in buckets.items()}
        self.always = tuple(always)
        self.prefilters = None if prefilters is None else tuple(prefilters)
        self.kinds = {}
        self.subjects = {}

    def take_kinds(self):
        """The decoded events per (resource, event) since the last call."""
        out = self.kinds
        self.kinds = {}
        return out

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
                    # FOREACH: one entry, its outputs as a list (the runtime
                    # makes a record of each and counts the event once).
                    out.append((self.keys[pos], r.proj.output(ev, copy)))
        return out

    def evaluate(self, event):
        """[(key, output), …] for every rule that matches `event`, in rule order."""
        return self._evaluate(event)

    def evaluate_many(self, list events):
        cdef list out = []
        for ev in events:
            out.append(self._evaluate(ev))
        return out

    cdef bint _skipped(self, object data):
        """Does the pre-filter prove that no rule can match `data`?"""
        cdef Prefilter pf
        cdef const char* s
        cdef Py_ssize_t n
        if self.prefilters is not None and type(data) is bytes:
            s = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            if memchr(s, 92, n) == NULL:
                for pf in self.prefilters:
                    if pf.may_match(s, n):
                        return False
                return _is_json_object(<const unsigned char*>s, n)
        return False

    cdef object _decode_unless_skipped(self, object data):
        """The decoded event, None when the pre-filter proves no rule can
        match, or a MalformedEvent."""
        if self._skipped(data):
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
        cdef bint whole = True
        if self._skipped(data):
            return None
        ev = None
        if self.sparse is not None and type(data) is bytes:
            ev = self.sparse.read(<bytes>data)
            whole = ev is None
        if ev is None:
            ev = decode(data)
            if type(ev) is MalformedEvent:
                return ev
        cdef PyObject* r = PyDict_GetItem(<dict>ev, "resource")
        cdef PyObject* e = PyDict_GetItem(<dict>ev, "event")
        # Only strings name a kind (a list there must not break the count).
        kind = (<object>r if r != NULL and PyUnicode_Check(<object>r) else None,
                <object>e if e != NULL and PyUnicode_Check(<object>e) else None)
        cdef PyObject* n = PyDict_GetItem(self.kinds, kind)
        self.kinds[kind] = (<object>n + 1) if n != NULL else 1
        cdef list matches = self._evaluate(ev, False, data if type(data) is bytes else None)
        if not matches:
            return None
        key = _HEADER_DEVICE.value(ev)
        if not PyUnicode_Check(key):
            key = _BODY_DEVICE.value(ev)
            if not PyUnicode_Check(key):
                key = None
        et = _EVENT_TIME.value(ev)
        return (ev if whole else None, key, et if PyUnicode_Check(et) else None, matches)

    def route_raw_many(self, list datas):
        """What the runtime needs to route a batch, in one pass: per input
        None (nothing matched, or the pre-filter skipped it), a
        MalformedEvent, or (event, device id, event_time, [(key, output), …]).
        `event` is the decoded notification, or None when the rule set has
        a `sparse` reader and only the members its rules read were decoded
        (the input was then a valid JSON object: `orjson.loads` of it is
        the event).
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
