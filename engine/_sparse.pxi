# Part of engine/_core.pyx (included there; one extension module): sparse decoding, which builds only the members a rule set reads.

# ------------------------------------------------------------ sparse decoding
#
# A rule set whose rules read known member paths (engine/language/reads.py)
# does not need the notification as dicts: the validator of the pre-filter
# (_scan_object) notes, on its one pass over the bytes, where each read
# member's value lies; only those values are built, into a skeleton of
# dicts that holds nothing else. Evaluating a rule on the skeleton gives
# what it gives on the whole notification, since the rule reads nothing else.
#
# Only inputs without a backslash and without a run of 19+ digits take this
# path (strings are then verbatim, and no integer is beyond 64 bits); all
# others, and any document the pass does not accept, are decoded whole, so
# a malformed input gets the decoder's own reason. Duplicate members keep
# the last one, as the decoder does.


@cython.final
@cython.no_gc
cdef class SparseReader:
    """The read paths as a tree of member names (_Reads). A leaf is read
    whole; an inner node is an object whose members are looked at."""
    cdef _Reads r
    cdef tuple names         # str per node (None for the root)
    cdef tuple raw_names     # bytes per node: r.key[] points into them

    def __init__(self, paths):
        """`paths`: member-name tuples, none inside another (reads.merge).
        ValueError when they need more than `limit()` nodes."""
        cdef list names = [None], raw = [b""], parent = [-1], leaf = [False]
        cdef dict index = {(): 0}
        cdef int i
        for p in sorted(paths):
            for depth in range(1, len(p) + 1):
                if p[:depth] not in index:
                    index[p[:depth]] = len(names)
                    names.append(p[depth - 1])
                    raw.append(p[depth - 1].encode())
                    parent.append(index[p[:depth - 1]])
                    leaf.append(depth == len(p))
        if len(names) > _MAX_READ_NODES:
            raise ValueError(f"at most {_MAX_READ_NODES} nodes")
        self.r.n = len(names)
        self.names = tuple(names)
        self.raw_names = tuple(raw)
        for i in range(self.r.n):
            self.r.parent[i] = parent[i]
            self.r.leaf[i] = leaf[i]
            self.r.key[i] = PyBytes_AS_STRING(self.raw_names[i])
            self.r.keylen[i] = PyBytes_GET_SIZE(self.raw_names[i])
            self.r.end[i] = i + 1
        for i in range(self.r.n - 1, 0, -1):   # children follow their parent
            if self.r.end[i] > self.r.end[parent[i]]:
                self.r.end[parent[i]] = self.r.end[i]

    @staticmethod
    def limit():
        return _MAX_READ_NODES

    cdef object read(self, bytes data):
        """The skeleton of `data`: a dict with only the read members, or
        None when `data` must be decoded whole (see above)."""
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef _Reads* r = &self.r
        cdef int k, p
        if memchr(s, 92, n) != NULL:
            return None
        if n >= 19 and _long_digit_run(s, n):
            return None
        if not _scan_object(s, n, r):
            return None
        cdef dict root = {}
        cdef list objs = [None] * r.n
        objs[0] = root
        for k in range(1, r.n):
            if not r.leaf[k] or r.vstart[k] < 0:
                continue
            # make the enclosing dicts, outermost first
            p = r.parent[k]
            while objs[p] is None:
                p = r.parent[p]
            self._place(objs, p, k)
            (<dict>objs[r.parent[k]])[self.names[k]] = _json_slice(data, s, r.vstart[k], r.vend[k])
        return root

    cdef void _place(self, list objs, int have, int leaf):
        """Create the dicts between the node `have` (made) and `leaf`."""
        cdef int chain[_MAX_READ_NODES]
        cdef int m = 0, q = self.r.parent[leaf]
        while q != have:
            chain[m] = q
            m += 1
            q = self.r.parent[q]
        while m > 0:
            m -= 1
            q = chain[m]
            d = {}
            (<dict>objs[self.r.parent[q]])[self.names[q]] = d
            objs[q] = d

    def read_bytes(self, bytes data):
        """read(), for tests: the skeleton, or None (decode it whole)."""
        return self.read(data)


cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


cdef object _json_slice(bytes data, const unsigned char* s, Py_ssize_t a, Py_ssize_t b):
    """The value of the valid JSON text s[a:b] (no escapes, no long integers),
    as the decoder makes it."""
    cdef unsigned char c = s[a]
    cdef Py_ssize_t i
    if c == 34:
        return PyUnicode_DecodeUTF8(<const char*>s + a + 1, b - a - 2, NULL)
    if c == 116:
        return True
    if c == 102:
        return False
    if c == 110:
        return None
    if c == 45 or _digit(c):
        for i in range(a, b):
            if s[i] == 46 or s[i] == 101 or s[i] == 69:
                break
        else:
            # An integer of at most 18 digits: the text is what int() reads.
            return int(data[a:b])
    return orjson.loads(data[a:b])
