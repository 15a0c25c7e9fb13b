# Part of engine/_core.pyx (included there; one extension module): raw-bytes input: decoding, big-integer check, body splitting, the allocation-free JSON validator and the pre-filter atoms.

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
        digits = digits[:20] + "…" + digits[len(digits) - 8:]
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



cdef inline bint _strip_ws(unsigned char c) noexcept:
    # bytes.strip()'s set: ASCII space, \t, \n, \v, \f, \r
    return c == 32 or 9 <= c <= 13


def ndjson_lines(bytes data, Py_ssize_t pos, Py_ssize_t max_items):
    """Split NDJSON: up to `max_items` lines from `pos` on, each stripped of
    ASCII whitespace, blank ones left out; returns (lines, next offset, or
    -1 at the end). What `line.strip()` of every `split(b"\\n")` part gives,
    without the per-line Python work (an HTTP body holds thousands)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), nl, a, b
    cdef const unsigned char* q
    cdef list out = []
    if pos < 0:
        return out, -1
    while pos < n and PyList_GET_SIZE(out) < max_items:
        q = <const unsigned char*>memchr(s + pos, 10, n - pos)
        nl = n if q == NULL else q - s
        a, b = pos, nl
        while a < b and _strip_ws(s[a]):
            a += 1
        while b > a and _strip_ws(s[b - 1]):
            b -= 1
        if b > a:
            out.append(data if (a == 0 and b == n) else
                       PyBytes_FromStringAndSize(<const char*>s + a, b - a))
        pos = nl + 1
    return out, (pos if pos < n else -1)


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


DEF _MAX_READ_NODES = 64


cdef struct _Reads:
    # The member paths a rule set reads, as a tree numbered in preorder
    # (node 0: the top-level object; see engine/_sparse.pxi), and where the
    # last input held each leaf's value (vstart -1: absent).
    int n
    int parent[_MAX_READ_NODES]
    int end[_MAX_READ_NODES]        # one past the node's last descendant
    bint leaf[_MAX_READ_NODES]
    const char* key[_MAX_READ_NODES]
    Py_ssize_t keylen[_MAX_READ_NODES]
    Py_ssize_t vstart[_MAX_READ_NODES]
    Py_ssize_t vend[_MAX_READ_NODES]


cdef inline int _read_child(_Reads* r, int node, const unsigned char* s, Py_ssize_t a,
                            Py_ssize_t b) noexcept nogil:
    """The child of `node` named s[a:b], or -1."""
    cdef int c = node + 1
    cdef Py_ssize_t kn = b - a
    while c < r.end[node]:
        if r.keylen[c] == kn and memcmp(r.key[c], s + a, kn) == 0:
            return c
        c = r.end[c]   # the next sibling
    return -1


cdef bint _is_json_object(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """A complete, valid JSON document whose top level is an object, nested at
    most MAX_DEPTH levels (RFC 8259)."""
    return _scan_object(s, n, NULL)


cdef bint _scan_object(const unsigned char* s, Py_ssize_t n, _Reads* r) noexcept nogil:
    """_is_json_object; with `r`, also notes where the values of the members
    it reads are (r.vstart/r.vend). A member that occurs again replaces
    what was noted for it and below it (the decoder keeps the last one)."""
    cdef unsigned char stack[402]
    cdef int track[402]       # with r: node of the object at each depth, -1: not read
    cdef int opened[402]      # with r: leaf whose value is the container at each depth, or -1
    cdef Py_ssize_t depth = 0, i, a
    cdef unsigned char c
    cdef int pending = -1     # node of the member whose value comes next
    cdef int k
    if r != NULL:
        for k in range(r.n):
            r.vstart[k] = -1
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
            a = i
            i = _string_end(s, i, n)
            if i < 0:
                return False
            if r != NULL and track[depth] >= 0:
                pending = _read_child(r, track[depth], s, a + 1, i - 1)
            i = _ws(s, i, n)
            if i >= n or s[i] != 58:
                return False
            i += 1
            expect = 0
            continue
        # a value
        if pending >= 0:   # forget an earlier occurrence of this member
            for k in range(pending, r.end[pending]):
                r.vstart[k] = -1
        if c == 123 or c == 91:
            depth += 1
            if depth > _MAX_DEPTH:
                return False
            stack[depth] = c
            opened[depth] = -1
            if depth == 1:    # the document itself
                track[depth] = 0
            elif pending >= 0 and r.leaf[pending]:
                r.vstart[pending] = i
                track[depth] = -1
                opened[depth] = pending
            else:
                track[depth] = pending if c == 123 else -1
            pending = -1
            i = _ws(s, i + 1, n)
            if i < n and ((c == 123 and s[i] == 125) or (c == 91 and s[i] == 93)):
                if opened[depth] >= 0:
                    r.vend[opened[depth]] = i + 1
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
            if pending >= 0:
                if r.leaf[pending]:
                    r.vstart[pending] = a
                    r.vend[pending] = i
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
                    r.vend[opened[depth]] = i + 1
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
