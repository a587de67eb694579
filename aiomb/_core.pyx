# cython: language_level=3, cdivision=True, initializedcheck=False
"""The aiomb core: the Engine (parse, flows, TCP state, reassembly, events), the Dispatcher
that turns a batch's events into deliveries, the capture reader and the AF_XDP sockets.

One extension built from the includes in aiomb/_cy, one concern each. Never imports Trio,
never reads a clock; the only I/O is the capture reader's file reads and the AF_XDP rings.
"""

cimport cython

include "_cy/defs.pxi"
include "_cy/frag.pxi"
include "_cy/parse.pxi"
include "_cy/tunnel.pxi"
include "_cy/flowtable.pxi"
include "_cy/history.pxi"

cdef class Engine
cdef class FlowSnapshot

include "_cy/rewrite.pxi"
include "_cy/translate.pxi"
include "_cy/values.pxi"
include "_cy/records.pxi"
include "_cy/ipfix.pxi"
include "_cy/handle.pxi"
include "_cy/capture.pxi"
include "_cy/xsk.pxi"
include "_cy/emit.pxi"
include "_cy/tcp.pxi"
include "_cy/reasm.pxi"
include "_cy/timers.pxi"
include "_cy/engine.pxi"
include "_cy/shards.pxi"

cdef class FlowInbox
cdef class Dispatcher

include "_cy/sockets.pxi"
include "_cy/dispatch.pxi"
include "_cy/deliver.pxi"

FLOW_ENTRY_BYTES = sizeof(flow_t)     # one flow-table entry (plus a 4-byte hash bucket)

C_ENUMS = {
    "TcpState": {"CLOSED": ST_CLOSED, "LISTEN": ST_LISTEN, "SYN_SENT": ST_SYN_SENT,
                 "SYN_RECEIVED": ST_SYN_RECEIVED, "ESTABLISHED": ST_ESTABLISHED,
                 "FIN_WAIT_1": ST_FIN_WAIT_1, "FIN_WAIT_2": ST_FIN_WAIT_2,
                 "CLOSE_WAIT": ST_CLOSE_WAIT, "CLOSING": ST_CLOSING, "LAST_ACK": ST_LAST_ACK,
                 "TIME_WAIT": ST_TIME_WAIT},
    "EndReason": {"FIN": END_FIN, "RST": END_RST, "TIMEOUT": END_TIMEOUT,
                  "EVICTED": END_EVICTED, "END_OF_CAPTURE": END_END_OF_CAPTURE, "REUSED": END_REUSED,
                  "INTERRUPTED": END_INTERRUPTED},
    "EventKind": {"PACKET_IN": EV_PACKET_IN, "CONN_START": EV_CONN_START, "SYN_ACK": EV_SYN_ACK,
                  "ESTABLISHED": EV_ESTABLISHED, "FIN": EV_FIN, "RST": EV_RST,
                  "STATE_CHANGE": EV_STATE_CHANGE, "CONN_END": EV_CONN_END, "ORPHAN": EV_ORPHAN,
                  "UDP_START": EV_UDP_START, "UDP_END": EV_UDP_END, "RETRANSMIT": EV_RETRANSMIT,
                  "NEW_DATA": EV_NEW_DATA, "GAP": EV_GAP, "OVERLAP": EV_OVERLAP,
                  "BUFFER_OVERRUN": EV_BUFFER_OVERRUN, "ERROR": EV_ERROR, "TIMER": EV_TIMER,
                  "REJECTED": EV_REJECTED, "WINDOW": EV_WINDOW},
    "Hook": {"SENDER": HOOK_SENDER, "RECEIVER": HOOK_RECEIVER},
    "Verdict": {"FORWARD": VERDICT_FORWARD, "DROP": VERDICT_DROP},
}
