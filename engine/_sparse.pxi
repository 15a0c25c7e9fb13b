# Part of engine/_core.pyx (included there; one extension module): sparse decoding, which builds only the members a rule set reads.

# ------------------------------------------------------------ sparse decoding
#
# A rule set whose rules read known member paths (engine/language/reads.py)
# does not need the notification as dicts: one pass over the bytes validates
# the document as _is_json_object does and notes where each read member's
# value lies; only those values are built, into a skeleton of dicts that
# holds nothing else. Evaluating a rule on the skeleton gives what it gives
# on the whole notification, since the rule reads nothing else.
#
# Only inputs without a backslash and without a run of 19+ digits take this
# path (strings are then verbatim, and no integer is beyond 64 bits); all
# others, and any document the pass does not accept, are decoded whole, so
# a malformed input gets the decoder's own reason. Duplicate members keep
# the last one, as the decoder does: a member that occurs again replaces
# what was noted below it.

DEF _SPARSE_MAX_NODES = 64


@cython.final
@cython.no_gc
cdef class SparseReader:
    """The read paths as a tree of member names, numbered in preorder (node
    0 is the top-level object). A leaf is read whole; an inner node is an
    object whose members are looked at."""
    cdef int n
    cdef int parent[_SPARSE_MAX_NODES]
    cdef int end[_SPARSE_MAX_NODES]        # one past the node's last descendant
    cdef bint leaf[_SPARSE_MAX_NODES]
    cdef const char* key[_SPARSE_MAX_NODES]
    cdef Py_ssize_t keylen[_SPARSE_MAX_NODES]
    cdef Py_ssize_t vstart[_SPARSE_MAX_NODES]  # a leaf's value, per input; -1: absent
    cdef Py_ssize_t vend[_SPARSE_MAX_NODES]
    cdef tuple names         # str per node (None for the root)
    cdef tuple raw_names     # bytes per node: key[] points into them

    def __init__(self, paths):
        """`paths`: member-name tuples, none inside another (reads.merge)."""
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
        if len(names) > _SPARSE_MAX_NODES:
            raise ValueError(f"at most {_SPARSE_MAX_NODES} nodes")
        self.n = len(names)
        self.names = tuple(names)
        self.raw_names = tuple(raw)
        for i in range(self.n):
            self.parent[i] = parent[i]
            self.leaf[i] = leaf[i]
            self.key[i] = PyBytes_AS_STRING(self.raw_names[i])
            self.keylen[i] = PyBytes_GET_SIZE(self.raw_names[i])
            self.end[i] = i + 1
        for i in range(self.n - 1, 0, -1):   # children follow their parent
            if self.end[i] > self.end[parent[i]]:
                self.end[parent[i]] = self.end[i]

    @staticmethod
    def limit():
        return _SPARSE_MAX_NODES

    cdef inline int _child(self, int node, const unsigned char* s, Py_ssize_t a,
                           Py_ssize_t b) noexcept nogil:
        """The child of `node` named s[a:b], or -1."""
        cdef int c = node + 1
        cdef Py_ssize_t kn = b - a
        while c < self.end[node]:
            if self.keylen[c] == kn and memcmp(self.key[c], s + a, kn) == 0:
                return c
            c = self.end[c]   # the next sibling
        return -1

    cdef inline void _forget(self, int node) noexcept nogil:
        """A member occurs again: drop what was noted for it and below it."""
        cdef int c
        for c in range(node, self.end[node]):
            self.vstart[c] = -1

    cdef bint _scan(self, const unsigned char* s, Py_ssize_t n) noexcept nogil:
        """_is_json_object, noting the read members' values on the way."""
        cdef unsigned char stack[402]
        cdef int track[402]       # node of the object at each depth, -1: not read
        cdef int opened[402]      # leaf whose value is the container at each depth, or -1
        cdef Py_ssize_t depth = 0, i, a
        cdef unsigned char c
        cdef int pending = -1     # node of the member whose value comes next
        cdef int k
        for k in range(self.n):
            self.vstart[k] = -1
        i = _ws(s, 0, n)
        if i >= n or s[i] != 123:
            return False
        track[0] = -1
        opened[0] = -1
        # `expect` 0: a value; 1: a key (after '{' or ',' in an object)
        cdef int expect = 0
        cdef bint top = True
        while True:
            i = _ws(s, i, n)
            if i >= n:
                return False
            c = s[i]
            if expect == 1:
                if c != 34:
                    return False
                a = i
                i = _string_end(s, i, n)
                if i < 0:
                    return False
                pending = -1
                if track[depth] >= 0:
                    pending = self._child(track[depth], s, a + 1, i - 1)
                i = _ws(s, i, n)
                if i >= n or s[i] != 58:
                    return False
                i += 1
                expect = 0
                continue
            # a value
            if pending >= 0:
                self._forget(pending)
            if c == 123 or c == 91:
                depth += 1
                if depth > _MAX_DEPTH:
                    return False
                stack[depth] = c
                if top:           # the document itself: node 0
                    top = False
                    track[depth] = 0
                    opened[depth] = -1
                elif pending >= 0 and self.leaf[pending]:
                    self.vstart[pending] = i
                    track[depth] = -1
                    opened[depth] = pending
                else:
                    track[depth] = pending if c == 123 else -1
                    opened[depth] = -1
                pending = -1
                i = _ws(s, i + 1, n)
                if i < n and ((c == 123 and s[i] == 125) or (c == 91 and s[i] == 93)):
                    if opened[depth] >= 0:
                        self.vend[opened[depth]] = i + 1
                    depth -= 1
                    i += 1
                else:
                    expect = 1 if c == 123 else 0
                    continue
            else:
                a = i
                if c == 34:
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
                if pending >= 0 and self.leaf[pending]:
                    self.vstart[pending] = a
                    self.vend[pending] = i
                pending = -1
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
                    if opened[depth] >= 0:
                        self.vend[opened[depth]] = i + 1
                    depth -= 1
                    i += 1
                    continue
                return False

    cdef object read(self, bytes data):
        """The skeleton of `data`: a dict with only the read members, or
        None when `data` must be decoded whole (see above)."""
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef int k, p
        if memchr(s, 92, n) != NULL:
            return None
        if n >= 19 and _long_digit_run(s, n):
            return None
        if not self._scan(s, n):
            return None
        cdef dict root = {}
        cdef list objs = [None] * self.n
        objs[0] = root
        for k in range(1, self.n):
            if not self.leaf[k] or self.vstart[k] < 0:
                continue
            # make the enclosing dicts, outermost first
            p = self.parent[k]
            while objs[p] is None:
                p = self.parent[p]
            self._place(objs, p, k)
            (<dict>objs[self.parent[k]])[self.names[k]] = _json_slice(data, s, self.vstart[k], self.vend[k])
        return root

    cdef void _place(self, list objs, int have, int leaf):
        """Create the dicts between the node `have` (made) and `leaf`."""
        cdef int chain[_SPARSE_MAX_NODES]
        cdef int m = 0, q = self.parent[leaf]
        while q != have:
            chain[m] = q
            m += 1
            q = self.parent[q]
        while m > 0:
            m -= 1
            q = chain[m]
            d = {}
            (<dict>objs[self.parent[q]])[self.names[q]] = d
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
