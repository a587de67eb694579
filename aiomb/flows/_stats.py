"""Frozen statistics snapshots returned by ``statistics()`` (Trio's idiom).

Layer: flows. Built by the core; plain values, safe to keep after the flow or stack is gone.
"""

from collections.abc import Mapping

import attrs

from ._html import cell, fields_table, flow_statistics_table, table
from ._types import EndReason, TcpState


class MalformedCounts(Mapping):
    """Malformed packets by reason (e.g. ``"truncated_tcp"``): a read-only mapping in which only
    the reasons seen appear. Compares equal to a dict with the same counts; hashable."""

    __slots__ = ("_counts",)
    _counts: dict[str, int]

    def __init__(self, counts=()):
        object.__setattr__(self, "_counts", dict(sorted(dict(counts).items())))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, reason: str) -> int:
        return self._counts[reason]

    def __iter__(self):
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __hash__(self) -> int:
        return hash(tuple(self._counts.items()))

    def __repr__(self) -> str:
        return f"MalformedCounts({self._counts!r})"

    def __reduce__(self):
        return (MalformedCounts, (self._counts,))

    def _repr_html_(self) -> str:
        return table([(cell(reason), cell(n)) for reason, n in self._counts.items()], header=("reason", "packets"))


@attrs.frozen(kw_only=True)
class SideStatistics:
    """One side of a flow: what that endpoint sent, and its inferred TCP state.

    ``retransmits`` counts SYN, SYN-ACK and FIN retransmissions and data segments that carried
    only bytes already seen. The stream counters are kept while the side's stream is tracked
    (any stream event or RETRANSMIT wanted, or ``reassembly=True``; else they stay 0):
    ``stream_bytes`` reassembled, ``missed`` in gaps, ``data_segments`` (segments with payload),
    ``retransmitted_bytes`` (payload of the data retransmissions), ``out_of_order`` (segments
    that arrived ahead of a hole), ``zero_window_probes`` and ``beyond_window`` (data segments past
    the receiver's advertised window: WINDOW events), overlap conflicts (their bytes compared
    while held, and after delivery within the engine's ``overlap_window`` while OVERLAP is
    wanted; ``unchecked_bytes`` came again after that), ``undelivered_bytes`` (captured, but left
    behind a hole nobody ACKed when a RST ended the flow: never delivered), ``after_fin_bytes``
    (payload sent at or past the side's FIN, which its receiver ignores: not in the stream),
    ``fin_ignored`` (FINs that never took effect: below the bytes in order, passed by them or by
    the receiver's ACK, behind another held FIN, or still held when the flow ended),
    ``keep_alives`` (one byte re-sent just below the next sequence number, already ACKed: neither
    a data segment nor a retransmission), ``next_offset``.
    """

    packets: int
    ip_bytes: int
    payload_bytes: int
    state: TcpState
    syn: int = 0
    synack: int = 0
    fin: int = 0
    rst: int = 0
    rst_ignored: int = 0
    retransmits: int = 0
    isn: int | None = None
    next_seq: int | None = None
    last_ack: int | None = None
    window: int = 0
    wscale: int | None = None
    stream_bytes: int = 0
    missed: int = 0
    overlap_conflicts: int = 0
    overlap_conflict_bytes: int = 0
    next_offset: int = 0
    data_segments: int = 0
    retransmitted_bytes: int = 0
    out_of_order: int = 0
    zero_window_probes: int = 0
    beyond_window: int = 0
    unchecked_bytes: int = 0
    after_fin_bytes: int = 0
    fin_ignored: int = 0
    keep_alives: int = 0
    undelivered_bytes: int = 0

    def _repr_html_(self) -> str:
        return fields_table(self, title="side statistics")


@attrs.frozen(kw_only=True)
class FlowStatistics:
    """A flow's counters: both sides, first and last packet time, how it ended."""

    client: SideStatistics
    server: SideStatistics
    first_ts: float
    last_ts: float
    end_reason: EndReason | None
    midstream: bool

    @property
    def packets(self) -> int:
        """Packets in both directions."""
        return self.client.packets + self.server.packets

    def _repr_html_(self) -> str:
        return flow_statistics_table(self, title="flow statistics")


@attrs.frozen(kw_only=True)
class EngineStatistics:
    """The core's counters: packets, flows, and every reason a packet was not tracked.

    ``malformed`` maps a reason (e.g. ``"truncated_tcp"``) to a count (a read-only
    :class:`MalformedCounts`); only reasons seen appear. ``bad_tcp_options`` counts the TCP
    packets taken although their option list ends at a malformed option (a kind byte with no
    length, a length of 0 or 1, or one running past the header): as Linux does, the options before
    it are read and the packet is processed, not dropped. ``fragments_held`` counts the fragments
    of the datagrams in reassembly now (``fragments_received`` every fragment taken in), and
    ``fragment_memory`` the bytes their buffers take (at most ``max_fragment_memory``).
    As Linux does, a fragment that overlaps bytes held drops its datagram (``fragment_overlaps``
    counts them; the fragment is malformed, ``"bad_fragment"``), and one within a run of held
    fragments (fragments that came in order, each starting where the one before ended; an exact
    copy is) is ignored (``fragment_duplicates``).
    ``stream_memory_peak`` is the most ``stream_memory`` ever reached, ``stream_buffer_peak``
    the most bytes one stream side ever held (at most ``max_buffer``). ``client_packets``,
    ``server_packets``, ``client_payload_bytes`` and ``server_payload_bytes`` add up the tracked
    flows' packets and payload by direction (client to server, server to client).
    ``translations`` counts the flows bound to an outer tuple (:meth:`Flow.translate`),
    ``translated_packets`` the packets such a binding applied to (the server's before the
    lookup, the client's after the hooks), ``untranslatable`` the writable frames it could not
    rewrite in place (a datagram reassembled from IP fragments), which were dropped.
    ``tunneled_packets`` counts the packets found inside a UDP tunnel's datagram (VXLAN, Geneve,
    Teredo, GTP-U, AYIYA): the datagram is its UDP flow's packet and the packet inside is followed
    too, counted once more (in ``tcp_packets``, ``udp_packets``, ``non_ip``, ``other_protocol`` or
    ``malformed``), so that ``tcp_packets + udp_packets + non_ip + other_protocol + malformed_total
    + fragments_received + fragment_duplicates - fragments_reassembled == packets + tunneled_packets``. (A packet inside
    IP-in-IP or GRE is the frame's only packet: the outer one makes no flow.)
    ``event_memory`` is what the events logged and not yet handed to a dispatcher hold (their
    records, Event values and the bytes and figures they carry), ``event_memory_peak`` the most it
    ever held (at most ``max_event_memory``), ``event_pauses`` how many times processing stopped
    there so that they were delivered first.
    """

    packets: int
    bytes: int
    tcp_packets: int
    udp_packets: int
    non_ip: int
    other_protocol: int
    malformed: MalformedCounts
    orphans: int
    flows_active: int
    flows_created: int
    flows_ended: int
    flows_timed_out: int
    flows_evicted: int
    max_flows: int
    rst_out_of_window: int
    fragments_held: int
    fragments_reassembled: int
    fragments_expired: int
    fragments_evicted: int
    fragment_overlaps: int
    dropped_by_verdict: int
    events: int
    stream_memory: int = 0
    max_stream_memory: int = 0
    buffer_overruns: int = 0
    sequence_jumps: int = 0
    rejected: int = 0           # packets their receiver would drop (REJECTED events), which changed nothing
    bad_tcp_options: int = 0    # TCP packets taken whose option list ends at a malformed option
    fragments_received: int = 0
    fragment_duplicates: int = 0    # fragments ignored: within a run of fragments held
    fragment_memory: int = 0
    max_fragment_memory: int = 0
    stream_memory_peak: int = 0
    stream_buffer_peak: int = 0
    client_packets: int = 0         # packets and payload bytes of tracked flows, by direction
    server_packets: int = 0
    client_payload_bytes: int = 0
    server_payload_bytes: int = 0
    translations: int = 0           # flows bound to an outer tuple now (Flow.translate)
    translated_packets: int = 0     # packets a binding applied to, either way
    untranslatable: int = 0         # writable frames a binding could not rewrite in place (dropped)
    tunneled_packets: int = 0       # packets found inside a UDP tunnel's datagram (counted twice)
    event_memory: int = 0           # what the events logged and not yet delivered hold
    event_memory_peak: int = 0
    max_event_memory: int = 0
    event_pauses: int = 0           # times processing stopped at max_event_memory to deliver first

    @property
    def malformed_total(self) -> int:
        """All malformed packets, whatever the reason."""
        return sum(self.malformed.values())

    def _repr_html_(self) -> str:
        return fields_table(self, title="engine statistics", extra=(("malformed_total", self.malformed_total),))
