# Core data structures and constants. Values mirror aiomb.flows / aiomb.events enums
# (checked by tests/core/test_enums.py).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memcmp, memset, memmove
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.list cimport PyList_Append, PyList_GET_ITEM, PyList_GET_SIZE

cdef extern from *:
    """
    /* the first two cache lines of a frame, wanted soon (a shard worker's frames come from the
       reader's core: fetching them ahead hides the transfer) */
    static inline void aiomb_prefetch(const void *p) {
        __builtin_prefetch(p, 0, 3);
        __builtin_prefetch((const char *)p + 64, 0, 3);
    }
    """
    void prefetch "aiomb_prefetch"(const void *p) noexcept nogil

cdef enum:
    PREFETCH_AHEAD = 4      # Engine.process fetches the frame this many ahead

# TCP states (RFC 793 names)
cdef enum:
    ST_CLOSED = 0
    ST_LISTEN = 1
    ST_SYN_SENT = 2
    ST_SYN_RECEIVED = 3
    ST_ESTABLISHED = 4
    ST_FIN_WAIT_1 = 5
    ST_FIN_WAIT_2 = 6
    ST_CLOSE_WAIT = 7
    ST_CLOSING = 8
    ST_LAST_ACK = 9
    ST_TIME_WAIT = 10

# End reasons
cdef enum:
    END_NONE = 0
    END_FIN = 1
    END_RST = 2
    END_TIMEOUT = 3
    END_EVICTED = 4
    END_END_OF_CAPTURE = 5
    END_REUSED = 6
    END_INTERRUPTED = 7

# Event kinds: B_* is a kind's bit number, EV_* its mask (aiomb.EventKind has the same values)
cdef enum:
    B_PACKET_IN = 0
    B_CONN_START = 1
    B_SYN_ACK = 2
    B_ESTABLISHED = 3
    B_FIN = 4
    B_RST = 5
    B_STATE_CHANGE = 6
    B_CONN_END = 7
    B_ORPHAN = 8
    B_UDP_START = 9
    B_UDP_END = 10
    B_RETRANSMIT = 11
    B_NEW_DATA = 12
    B_GAP = 13
    B_OVERLAP = 14
    B_BUFFER_OVERRUN = 15
    B_ERROR = 16
    B_TIMER = 17
    B_REJECTED = 18
    B_WINDOW = 19
    N_BUILTIN_BITS = 20
    FIRST_CUSTOM_BIT = 20
    MAX_EVENT_BITS = 64

cdef enum:
    EV_PACKET_IN = 1 << B_PACKET_IN
    EV_CONN_START = 1 << B_CONN_START
    EV_SYN_ACK = 1 << B_SYN_ACK
    EV_ESTABLISHED = 1 << B_ESTABLISHED
    EV_FIN = 1 << B_FIN
    EV_RST = 1 << B_RST
    EV_STATE_CHANGE = 1 << B_STATE_CHANGE
    EV_CONN_END = 1 << B_CONN_END
    EV_ORPHAN = 1 << B_ORPHAN
    EV_UDP_START = 1 << B_UDP_START
    EV_UDP_END = 1 << B_UDP_END
    EV_RETRANSMIT = 1 << B_RETRANSMIT
    EV_NEW_DATA = 1 << B_NEW_DATA
    EV_GAP = 1 << B_GAP
    EV_OVERLAP = 1 << B_OVERLAP
    EV_BUFFER_OVERRUN = 1 << B_BUFFER_OVERRUN
    EV_ERROR = 1 << B_ERROR
    EV_TIMER = 1 << B_TIMER
    EV_REJECTED = 1 << B_REJECTED
    EV_WINDOW = 1 << B_WINDOW
    EV_STREAM = EV_NEW_DATA | EV_GAP | EV_OVERLAP | EV_BUFFER_OVERRUN

# Hooks
cdef enum:
    HOOK_NONE = 0
    HOOK_SENDER = 1
    HOOK_RECEIVER = 2

# What parsing a frame found
cdef enum:
    P_OK = 0          # a TCP or UDP packet, fields filled in
    P_NOT_IP = 1      # not IP (ARP, LLDP, ...): counted, skipped
    P_OTHER = 2       # IP but neither TCP nor UDP (ICMP, ...): counted, skipped
    P_HELD = 3        # an IP fragment kept until its datagram is complete
    P_MALFORMED = 4   # counted under a reason

# Malformed-packet reasons (index into Engine.malformed[])
cdef enum:
    MAL_TRUNCATED_L2 = 0
    MAL_TRUNCATED_IP = 1
    MAL_BAD_IP_VERSION = 2
    MAL_BAD_IP_HEADER_LENGTH = 3
    MAL_BAD_IP_TOTAL_LENGTH = 4
    MAL_BAD_IPV6_EXTENSION = 5
    MAL_TRUNCATED_TCP = 6
    MAL_BAD_TCP_HEADER_LENGTH = 7
    MAL_TRUNCATED_UDP = 8
    MAL_BAD_UDP_LENGTH = 9
    MAL_BAD_FRAGMENT = 10
    MAL_UNKNOWN_LINKTYPE = 11
    MAL_BAD_TCP_FLAGS = 12
    MAL_BAD_CHECKSUM = 13
    MAL_BAD_IP_OPTIONS = 14             # an IPv4 option list Linux's ip_options_compile rejects
    MAL_IP_SOURCE_ROUTE = 15            # LSRR/SSRR: dropped by Linux (accept_source_route 0)
    MAL_IPV6_HOP_BY_HOP_NOT_FIRST = 16
    MAL_BAD_IPV6_OPTIONS = 17           # hop-by-hop or destination options Linux's ip6_parse_tlv drops
    MAL_IPV6_ROUTING_HEADER = 18        # a routing header Linux drops (segments left, types 2 to 4)
    MAL_TRUNCATED_TUNNEL = 19           # a tunnel's header (GRE, ERSPAN, VXLAN, ...) cut short
    N_MALFORMED = 20

# Link types (pcap LINKTYPE_*)
cdef enum:
    LT_NULL = 0
    LT_ETHERNET = 1
    LT_PPP = 9
    LT_FDDI = 10
    LT_RAW_OLD = 12
    LT_RAW_BSD = 14
    LT_PPP_HDLC = 50
    LT_RAW = 101
    LT_C_HDLC = 104
    LT_IEEE802_11 = 105
    LT_LOOP = 108
    LT_LINUX_SLL = 113
    LT_PFLOG = 117
    LT_IEEE802_11_RADIOTAP = 127
    LT_IPV4 = 228
    LT_IPV6 = 229
    LT_NFLOG = 239
    LT_LINUX_SLL2 = 276

# TCP flags
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PSH = 0x08
    TH_ACK = 0x10
    TH_URG = 0x20
    TH_ECE = 0x40
    TH_CWR = 0x80

# Timeout classes (one idle list each)
cdef enum:
    TC_TCP_OPENING = 0
    TC_TCP_ESTABLISHED = 1
    TC_TCP_CLOSED = 2
    TC_UDP = 3
    N_TCLASS = 4

# Flow status
cdef enum:
    FS_FREE = 0
    FS_OPEN = 1
    FS_CLOSED = 2      # ended (CONN_END raised), lingering to absorb stragglers

cdef enum:
    MAX_VLAN = 2
    VERDICT_FORWARD = 0
    VERDICT_DROP = 1


ctypedef struct pkt_t:
    const uint8_t *frame
    uint32_t caplen
    uint32_t wirelen
    int64_t ts
    uint8_t family          # 4 or 6
    uint8_t proto
    uint8_t nvlan
    uint8_t flags           # TCP flags
    uint8_t src[16]
    uint8_t dst[16]
    uint16_t vlan[MAX_VLAN]
    uint16_t sport
    uint16_t dport
    uint32_t ip_len         # IP total length (IPv6: 40 + payload length)
    const uint8_t *l3       # the IP header (in the frame, or in a datagram reassembled from fragments)
    const uint8_t *l4
    uint32_t l4len          # the transport header and payload (UDP: its length, captured or not)
    uint32_t uncaptured     # the IP packet's bytes the capture's snaplen cut off (0: all there)
    const uint8_t *payload
    uint32_t paylen
    uint32_t seq
    uint32_t ack
    uint16_t win
    int16_t wscale          # -1: no window-scale option
    uint16_t mss
    uint8_t sack_ok
    uint8_t has_ts
    uint32_t ts_val
    uint32_t ts_ecr
    uint8_t bad_options     # its TCP options end at a malformed one (read up to it, as Linux does)
    uint8_t reassembled     # 1: rebuilt from IP fragments (this packet, or a tunnel's packet around it)
    uint8_t tunnels         # the encapsulations it was found in (tunnel.pxi)
    uint8_t verify_checksums    # set before parsing: check each IPv4 header's checksum, fragments' too


cdef enum:
    INLINE_REFS = 8         # frame pieces a NEW_DATA value holds without an allocation


ctypedef struct ref_t:
    # a stream side's in-order payload left in a frame of the current batch (not copied)
    const uint8_t *ptr
    uint32_t len
    int32_t next            # the side's next piece in Engine.refs, -1 for the last

cdef enum:
    FF_MIDSTREAM = 1        # picked up without its handshake
    FF_ESTABLISHED = 2      # the handshake completed (ESTABLISHED was raised), or mid-stream
    FF_TRANSLATED = 4       # bound to an outer tuple (Flow.translate, translate.pxi)

cdef enum:
    SF_SEQ_KNOWN = 1        # the side's sequence space is known (a SYN, or mid-stream data)
    SF_ACK_KNOWN = 2        # the side has sent an ACK
    SF_FIN_SEEN = 4         # the side's FIN took effect (at fin_seq): its receiver reached it
    SF_SYN_SEEN = 8
    SF_SYN_TS = 16          # its SYN offered timestamps (TSval kept in last_ack until it ACKs)
    SF_FIN_HELD = 32        # a FIN (at fin_seq) ahead of the bytes in order waits for them (tcp.pxi)


cdef inline void bump8(uint8_t *counter) noexcept nogil:
    if counter[0] < 255:
        counter[0] += 1


ctypedef struct seg_t:
    # an out-of-order piece of a stream (disjoint from every other held byte range), a copy
    # from the segment [src_off, src_end) that brought it (the last one whose copy won there):
    # overlap policies compare a new segment with it
    uint64_t off
    uint64_t src_off
    uint64_t src_end
    uint32_t length
    seg_t *next
    uint8_t *data           # NULL when the side's buffering is off


ctypedef struct stream_t:
    # one side's reassembly state; allocated with the side's first payload byte
    uint64_t next_off       # stream offset of the next in-order byte expected
    uint64_t buf_off        # stream offset of buf[buf_start] (bytes before it are consumed)
    uint64_t delivered_off  # NEW_DATA has been raised up to here
    uint64_t bytes          # in-order bytes reassembled so far (gaps excluded)
    uint64_t missed         # bytes that will never arrive (gaps)
    uint64_t overlap_bytes  # bytes received again with different content
    uint8_t *buf            # in-order bytes not yet consumed: buf[buf_start : buf_start+buf_len]
    uint32_t buf_start
    uint32_t buf_len
    uint32_t buf_cap
    int32_t ref_first       # or, while buf is empty, references to this batch's frames: a chain
    int32_t ref_last        # in Engine.refs, from ref_first to ref_last
    uint32_t nrefs
    uint32_t ref_bytes
    uint32_t seq_base       # sequence number of stream offset 0
    seg_t *ooo              # out-of-order segments, sorted by offset
    seg_t *ooo_last         # the last of them (bytes beyond every held one go after it at once)
    uint32_t ooo_count
    uint32_t ooo_bytes
    uint8_t *hist           # the latest consumed bytes, [buf_off - hist_len, buf_off), in a ring
    uint32_t hist_cap       # (offset o at hist[o % hist_cap]), kept while OVERLAP is wanted:
    uint32_t hist_len       # retransmissions are compared with them after they were released
    uint64_t acked_off      # the highest offset the peer ACKed (may lie beyond the bytes captured)
    uint64_t undelivered    # captured bytes a RST left behind a hole nobody ACKed (never delivered)
    uint64_t rexmit_bytes   # payload bytes of the segments counted in rexmits
    uint64_t unchecked      # bytes received again too long after to be compared (older than hist)
    uint64_t after_fin      # payload bytes sent at or past the side's FIN (its receiver ignores them)
    uint32_t fin_ignored    # FINs that never took effect (below the bytes in order, passed by them, ...)
    uint32_t segments       # data segments (with payload) the side sent
    uint32_t rexmits        # segments carrying only bytes already seen
    uint32_t ooo_segments   # data segments that arrived ahead of a hole
    uint32_t zw_probes      # zero-window probes (one byte at the right edge of a closed window)
    uint32_t beyond_window  # data segments past the right edge of the receiver's advertised window
    uint32_t overlaps       # overlap conflicts (events)
    uint32_t keep_alives    # one byte re-sent below the next sequence number, already ACKed
    uint8_t dirty           # in the engine's NEW_DATA list for this batch
    uint8_t buffering       # 0: track ranges and counters only
    uint8_t manual          # bytes stay until consume() is called
    uint8_t consumed_in_call
    uint8_t stopped
    uint8_t based           # seq_base is known (a stream made before its side's first sequence
                            # number, by Flow.hold or set_buffering, takes it when it comes)


ctypedef struct side_t:
    uint64_t packets
    uint64_t ip_bytes
    uint64_t payload_bytes
    stream_t *stream
    uint32_t isn
    uint32_t next_seq       # one past the highest sequence number sent
    uint32_t last_ack       # highest acknowledgement sent (SF_ACK_KNOWN); before the side's first
                            # ACK, the TSval of its SYN when that offered timestamps (SF_SYN_TS)
    uint32_t window         # last advertised window, scaled
    uint32_t fin_seq        # sequence number of the FIN (taken, or held: SF_FIN_SEEN, SF_FIN_HELD)
    uint32_t retransmits
    uint8_t syn             # packet counters by flag, saturating at 255
    uint8_t synack
    uint8_t fin
    uint8_t rst
    uint8_t rst_ignored
    uint8_t state
    uint8_t wscale          # 0xff: not offered
    uint8_t flags           # SF_* bits


ctypedef struct flow_t:
    # laid out to take 240 bytes (with the 4-byte hash bucket: 244 per tracked flow): mind the padding
    uint64_t id
    int64_t first_ts
    int64_t last_ts         # its last packet's stamp
    int64_t active_ts       # the clock at its last packet: its idle time counts from here (so each
                            # timeout class's list, in order of last activity, is in order of this)
    side_t side[2]
    uint8_t client_ip[16]
    uint8_t server_ip[16]
    uint32_t mbox_mask      # the middleboxes whose filter accepts the flow
    uint32_t filter_mask    # the subscription filters that accept the flow
    uint32_t hash
    int32_t hnext
    int32_t lru_prev
    int32_t lru_next
    uint16_t client_port
    uint16_t server_port
    uint16_t vlan[MAX_VLAN]
    uint8_t nvlan
    uint8_t family
    uint8_t proto
    uint8_t status
    uint8_t end_reason
    uint8_t tclass
    uint8_t fflags          # FF_* bits
    uint8_t policy          # overlap policy rule family
    void *handle            # PyObject* of the Flow handle (borrowed), or NULL


cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
