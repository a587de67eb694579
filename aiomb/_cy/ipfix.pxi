# IPFIX data records (RFC 7011) of flow records, made in C: each row of a FlowRecords batch
# becomes one fixed-length data record of a template, in network byte order, by a small program
# of field ops that aiomb/_ipfix.py compiles from its template (the one description of the
# information elements). Message headers, sets, templates and the transport are Python's.

cdef enum:
    IPFIX_U64 = 1           # a u64 of the row, written as the element's length (8, or its low bytes)
    IPFIX_U16 = 2
    IPFIX_U8 = 3
    IPFIX_ADDR = 4          # the address bytes as they are (4 or 16)
    IPFIX_MS = 5            # an ns time as milliseconds since the epoch (dateTimeMilliseconds)
    IPFIX_NTP_US = 6        # an ns time as NTP seconds and fraction, to the microsecond (dateTimeMicroseconds)
    IPFIX_STATE = 7         # a TCP state (TcpState number), 255 for UDP
    IPFIX_RFC_REASON = 8    # the end reason as RFC 5102's flowEndReason
    IPFIX_BOOL = 9          # a 0/1 byte as IPFIX's boolean: 1 true, 2 false
    IPFIX_BIFLOW_DIR = 10   # RFC 5103's biflowDirection: 1 initiator, 0 arbitrary (picked up mid-stream)
    IPFIX_VLAN = 11         # VLAN tag number `off` of the key, 0 when the key has fewer
    NTP_EPOCH_OFFSET = 2208988800   # seconds from 1900 (NTP's era 0) to 1970


# aiomb's EndReason (open fin rst timeout evicted end_of_capture reused interrupted) -> RFC 5102
# flowEndReason: 1 idle timeout, 3 end of flow detected, 4 forced end, 5 lack of resources.
cdef uint8_t RFC_REASON[8]
RFC_REASON[:] = [4, 3, 3, 1, 5, 4, 3, 4]


cdef extern from "arpa/inet.h" nogil:
    uint32_t htonl(uint32_t)
    uint16_t htons(uint16_t)


cdef inline void put_be(uint8_t *p, uint64_t v, int n) noexcept nogil:
    """The low ``n`` bytes of ``v`` in network byte order (n: 8, 4, 2 or 1)."""
    cdef uint32_t w[2]
    cdef uint16_t h
    if n == 8:
        w[0] = htonl(<uint32_t>(v >> 32))
        w[1] = htonl(<uint32_t>v)
        memcpy(p, w, 8)
    elif n == 4:
        w[0] = htonl(<uint32_t>v)
        memcpy(p, w, 4)
    elif n == 2:
        h = htons(<uint16_t>v)
        memcpy(p, &h, 2)
    else:
        p[0] = <uint8_t>v


cdef inline uint64_t ntp_us(int64_t ns) noexcept nogil:
    """An ns Unix time as a 64-bit NTP timestamp to the microsecond (RFC 7011 6.1.9): the time
    rounded to the nearest microsecond, halves up; its fraction of a second in units of 2**-21 s
    (the 11 low-order bits zero), the first at or after the microsecond. That unit is under half a
    microsecond, so the value decodes to the microsecond whether a collector truncates or rounds."""
    cdef int64_t us = (ns + 500) // 1000
    cdef uint64_t sec = <uint64_t>(us // 1000000) + NTP_EPOCH_OFFSET
    cdef uint64_t frac = (((<uint64_t>(us % 1000000) << 21) + 999999) // 1000000) << 11
    return (sec << 32) | frac


cdef void encode_row(uint8_t *p, const flowrec_t *r, const uint8_t *prog, Py_ssize_t nops) noexcept nogil:
    cdef const char *base = <const char *>r
    cdef Py_ssize_t k
    cdef int op, n
    cdef size_t off
    cdef uint64_t v
    for k in range(nops):
        op = prog[4 * k]
        n = prog[4 * k + 1]
        off = (<size_t>prog[4 * k + 2] << 8) | prog[4 * k + 3]
        if op == IPFIX_ADDR:
            memcpy(p, base + off, n)
            p += n
            continue
        if op == IPFIX_U64:
            v = (<const uint64_t *>(base + off))[0]
        elif op == IPFIX_U16:
            v = (<const uint16_t *>(base + off))[0]
        elif op == IPFIX_U8:
            v = (<const uint8_t *>(base + off))[0]
        elif op == IPFIX_MS:
            v = <uint64_t>(((<const int64_t *>(base + off))[0]) // 1000000)
        elif op == IPFIX_NTP_US:
            v = ntp_us((<const int64_t *>(base + off))[0])
        elif op == IPFIX_STATE:
            v = (<const uint8_t *>(base + off))[0] if r.proto == 6 else 255
        elif op == IPFIX_RFC_REASON:
            v = RFC_REASON[r.end_reason & 7]
        elif op == IPFIX_BOOL:
            v = 1 if (<const uint8_t *>(base + off))[0] else 2
        elif op == IPFIX_BIFLOW_DIR:
            v = 0 if r.midstream else 1
        else:
            v = r.vlan[off] if <int>off < r.nvlan else 0
        put_be(p, v, n)
        p += n


def ipfix_data(FlowRecords records, int family, const uint8_t[::1] program, Py_ssize_t length):
    """The data records (RFC 7011, network byte order) of every row of ``records`` whose address
    family is ``family`` (4 or 6), back to back, as bytes: ``length`` bytes a row, made by
    ``program`` (4 bytes an element: op, length, row offset big-endian; see aiomb/_ipfix.py).
    Layer: core; does not block."""
    cdef int n
    cdef Py_ssize_t i, k, rows = 0, nops = program.shape[0] // 4, total = 0
    cdef const uint8_t *prog = &program[0] if nops else NULL
    cdef uint8_t *p
    cdef bytes out
    for k in range(nops):
        n = program[4 * k + 1]
        if not ((n == 4 or n == 16) if program[4 * k] == IPFIX_ADDR else (n == 1 or n == 2 or n == 4 or n == 8)):
            raise ValueError(f"element {k} of the program: no encoding of op {program[4 * k]} in {n} bytes")
        total += n
    if total != length:
        raise ValueError(f"the program writes {total} bytes a row, not {length}")
    for i in range(records.n):
        if records.rows[i].family == family:
            rows += 1
    out = PyBytes_FromStringAndSize(NULL, rows * length)
    p = <uint8_t *>(<char *>out)
    with nogil:
        for i in range(records.n):
            if records.rows[i].family == family:
                encode_row(p, &records.rows[i], prog, nops)
                p += length
    return out
