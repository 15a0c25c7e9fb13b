# Kafka record batches (magic 2, uncompressed) for the Kafka sink: the
# per-record packing a write does, in one call per write. aiokafka's batch
# builder costs ~0.7 us a record from Python (an append call with keyword
# arguments, a metadata object and a clock read per record); here the
# records of a write are grouped by partition and encoded into exact-size
# buffers, which the sink hands to aiokafka's producer as closed batches.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "_kafka.h":
    uint32_t eng_crc32c_hw(const unsigned char* p, size_t n)
    int eng_crc32c_hw_ok()

cdef bint _HW_CRC32C = eng_crc32c_hw_ok()
cdef Py_ssize_t KAFKA_BATCH_HEADER = 61   # bytes before the first record
cdef Py_ssize_t _CRC_FROM = 21            # the CRC covers attributes .. end


cdef inline Py_ssize_t _varint_size(long long v) noexcept:
    cdef uint64_t z = <uint64_t>((v << 1) ^ (v >> 63))  # zigzag
    cdef Py_ssize_t n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


cdef inline unsigned char* _put_varint(unsigned char* p, long long v) noexcept:
    cdef uint64_t z = <uint64_t>((v << 1) ^ (v >> 63))
    while z >= 0x80:
        p[0] = <unsigned char>((z & 0x7F) | 0x80)
        p += 1
        z >>= 7
    p[0] = <unsigned char>z
    return p + 1


cdef inline unsigned char* _put_be(unsigned char* p, uint64_t v, int nbytes) noexcept:
    cdef int i
    for i in range(nbytes):
        p[i] = <unsigned char>(v >> (8 * (nbytes - 1 - i)))
    return p + nbytes


cdef inline Py_ssize_t _body_size(Py_ssize_t delta, object key, Py_ssize_t nvalue) noexcept:
    """A record's size after its length varint (timestamp delta 0, no headers)."""
    cdef Py_ssize_t nkey = -1 if key is None else PyBytes_GET_SIZE(key)
    return (1 + 1 + _varint_size(delta) + _varint_size(nkey) + (nkey if nkey > 0 else 0)
            + _varint_size(nvalue) + nvalue + 1)


cdef bytes _encode_batch(list members, long long now_ms, object crc_fallback, bint hw_crc):
    """One batch of `members` [(index, key, value), ...] (offset deltas from 0)."""
    cdef Py_ssize_t size = KAFKA_BATCH_HEADER, i, n = len(members), body, nkey, nvalue
    cdef tuple m
    for i in range(n):
        m = <tuple>members[i]
        body = _body_size(i, m[1], PyBytes_GET_SIZE(m[2]))
        size += _varint_size(body) + body
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* start = <unsigned char*>PyBytes_AS_STRING(out)
    cdef unsigned char* p = start
    p = _put_be(p, 0, 8)                                  # base offset
    p = _put_be(p, <uint64_t>(size - 12), 4)              # batch length
    p = _put_be(p, 0xFFFFFFFF, 4)                         # partition leader epoch
    p[0] = 2                                              # magic
    p += 1 + 4                                            # the CRC, below
    p = _put_be(p, 0, 2)                                  # attributes: none
    p = _put_be(p, <uint64_t>(n - 1), 4)                  # last offset delta
    p = _put_be(p, <uint64_t>now_ms, 8)                   # first timestamp
    p = _put_be(p, <uint64_t>now_ms, 8)                   # max timestamp
    p = _put_be(p, 0xFFFFFFFFFFFFFFFF, 8)                 # producer id: none
    p = _put_be(p, 0xFFFF, 2)                             # producer epoch: none
    p = _put_be(p, 0, 4)                                  # base sequence (as aiokafka)
    p = _put_be(p, <uint64_t>n, 4)                        # records
    for i in range(n):
        m = <tuple>members[i]
        key, value = m[1], m[2]
        nkey = -1 if key is None else PyBytes_GET_SIZE(key)
        nvalue = PyBytes_GET_SIZE(value)
        p = _put_varint(p, _body_size(i, key, nvalue))
        p[0] = 0                                          # attributes
        p[1] = 0                                          # timestamp delta 0 (varint)
        p = _put_varint(p + 2, i)                         # offset delta
        p = _put_varint(p, nkey)
        if nkey > 0:
            memcpy(p, PyBytes_AS_STRING(key), nkey)
            p += nkey
        p = _put_varint(p, nvalue)
        memcpy(p, PyBytes_AS_STRING(value), nvalue)
        p += nvalue
        p[0] = 0                                          # headers: none
        p += 1
    cdef uint32_t crc
    if hw_crc:
        crc = eng_crc32c_hw(start + _CRC_FROM, size - _CRC_FROM)
    else:
        crc = crc_fallback(memoryview(out)[_CRC_FROM:])
    _put_be(start + 17, crc, 4)
    return out


def kafka_batches(records, dict cache, object choose, Py_ssize_t max_batch,
                  Py_ssize_t max_size, long long now_ms, object crc_fallback,
                  bint hw_crc=True):
    """The records of one write as Kafka record batches: (batches, too_large).
    `batches`: partition -> [(batch bytes, [record indexes])], in record
    order, each batch under `max_batch` bytes unless one record alone is
    not (aiokafka's builder's rule). A record's key is its `key` (str) encoded, its partition
    `cache[key]` = (key bytes, partition), filled from `choose(key bytes)`
    on a miss; no key: `choose(None)` per record. Its value is `raw`, else
    `payload` as JSON. `too_large`: [(index, size)] of records whose batch
    alone would exceed `max_size` (not packed). Timestamps: `now_ms`.
    `crc_fallback(buffer) -> int`: CRC-32C where the CPU has no instruction
    for it (or `hw_crc` is False: tests)."""
    hw_crc = hw_crc and _HW_CRC32C
    cdef dict pending = {}                 # partition -> [(index, key, value)]
    cdef list too_large = []
    cdef Py_ssize_t i = 0, size
    cdef Record rec
    cdef PyObject* hit
    cdef object k, key, p, value
    for r in records:
        rec = <Record?>r
        k = rec.key
        if k is None:
            key, p = None, None
        else:
            hit = PyDict_GetItem(cache, k)
            if hit != NULL:
                key, p = (<tuple>hit)[0], (<tuple>hit)[1]
            else:
                key = (<str?>k).encode()
                p = choose(key)
                cache[k] = (key, p)
        value = rec.raw
        if value is None:  # kept until its batch is encoded
            value = _dumps_kept(rec._payload)
        size = KAFKA_BATCH_HEADER + 5 + _body_size(0, key, PyBytes_GET_SIZE(value))
        if size > max_size:
            too_large.append((i, size))
        else:
            if key is None:
                p = choose(None)
            hit = PyDict_GetItem(pending, p)
            if hit != NULL:
                (<list>hit).append((i, key, value))
            else:
                pending[p] = [(i, key, value)]
        i += 1
    cdef dict out = {}
    cdef list members, batch, found
    cdef Py_ssize_t used, j, body
    cdef tuple m
    for p, members in pending.items():
        found = []
        batch = []
        used = KAFKA_BATCH_HEADER
        for j in range(len(members)):
            m = <tuple>members[j]
            body = _body_size(len(batch), m[1], PyBytes_GET_SIZE(m[2]))
            body += _varint_size(body)
            # aiokafka's builder closes a batch at max_batch bytes, not above it.
            if batch and used + body >= max_batch:
                found.append((_encode_batch(batch, now_ms, crc_fallback, hw_crc),
                              [x[0] for x in batch]))
                batch = []
                used = KAFKA_BATCH_HEADER
                body = _body_size(0, m[1], PyBytes_GET_SIZE(m[2]))
                body += _varint_size(body)
            batch.append(m)
            used += body
        found.append((_encode_batch(batch, now_ms, crc_fallback, hw_crc), [x[0] for x in batch]))
        out[p] = found
    return out, too_large
