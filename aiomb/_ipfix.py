"""Flow export over IPFIX (RFC 7011): each flow record as one bidirectional flow (RFC 5103).

Layer: shells (beside ``_records``). The template below is the one description of what is sent:
IANA's information elements for the flow's key, times and per-direction counters (the server's
direction as reverse elements, enterprise number 29305), and aiomb's own figures (TCP states, end
reason, stream counters per side) as enterprise-specific elements. The core encodes the data
records of a whole :class:`aiomb.FlowRecords` batch in C (``ipfix_data``); this module frames them
into messages and sends them over UDP (messages under the path MTU, templates re-sent
periodically: RFC 7011 section 8.4) or TCP (one stream, templates once; a collector that closed
the connection is seen before each write and at the end). README "Exporting flows (IPFIX)" lists
every element.
"""

import collections
import fcntl
import os
import select
import socket
import struct
import termios
import time

import attrs

from ._core import RECORD_FIELDS, RECORD_LAYOUT, ipfix_data
from ._errors import ExportError

IPFIX_PORT = 4739                   # IANA's port for IPFIX (UDP and TCP)
REVERSE_PEN = 29305                 # RFC 5103: the reverse of an IANA element
DOCUMENTATION_PEN = 32473           # RFC 5612: the enterprise number for documentation and examples
IPV4_TEMPLATE, IPV6_TEMPLATE = 256, 257
TCP_MESSAGE_MAX = 65535             # the message header's length field
TCP_WRITE_MESSAGES = 16             # messages joined into one write (up to 1 MiB)

_HEADER = struct.Struct("!HHIII")   # version 10, length, export time, sequence number, observation domain
_SET = struct.Struct("!HH")         # set ID, length
TEMPLATE_SET = 2
IP_MTU, IPV6_MTU = 14, 24           # getsockopt: a connected socket's route MTU (linux/in.h, in6.h)

# ops of the core's encoder (aiomb/_cy/ipfix.pxi)
U64, U16, U8, ADDR, MS, NTP_US, STATE, RFC_REASON, BOOL, BIFLOW_DIR, VLAN = range(1, 12)


@attrs.frozen
class Element:
    """One information element of the template: ``number`` in the registry of ``pen`` (0: IANA's;
    29305: the reverse of IANA's element ``number``; ``"aiomb"``: the exporter's enterprise number),
    ``length`` bytes of ``type``, read from the record field ``source`` by the encoder's ``op``."""

    name: str
    number: int
    pen: int | str
    type: str
    length: int
    op: int
    source: str | int
    meaning: str


def _e(name, number, pen, type_, length, op, source, meaning):
    return Element(name, number, pen, type_, length, op, source, meaning)


def _side_pair(number, name, field, meaning):
    return [_e(f"client{name}", number, "aiomb", "unsigned64", 8, U64, f"client_{field}", f"{meaning}, client"),
            _e(f"server{name}", number + 1, "aiomb", "unsigned64", 8, U64, f"server_{field}", f"{meaning}, server")]


ADDRESSES = {
    4: [_e("sourceIPv4Address", 8, 0, "ipv4Address", 4, ADDR, "client_ip", "the client (initiator)"),
        _e("destinationIPv4Address", 12, 0, "ipv4Address", 4, ADDR, "server_ip", "the server")],
    6: [_e("sourceIPv6Address", 27, 0, "ipv6Address", 16, ADDR, "client_ip", "the client (initiator)"),
        _e("destinationIPv6Address", 28, 0, "ipv6Address", 16, ADDR, "server_ip", "the server")],
}

ELEMENTS = [
    _e("sourceTransportPort", 7, 0, "unsigned16", 2, U16, "client_port", "the client's port"),
    _e("destinationTransportPort", 11, 0, "unsigned16", 2, U16, "server_port", "the server's port"),
    _e("protocolIdentifier", 4, 0, "unsigned8", 1, U8, "proto", "6 TCP, 17 UDP"),
    _e("flowId", 148, 0, "unsigned64", 8, U64, "flow", "aiomb's flow number (`flow`)"),
    _e("vlanId", 58, 0, "unsigned16", 2, VLAN, 0, "the key's outer VLAN tag (with `--vlan`), else 0"),
    _e("dot1qCustomerVlanId", 245, 0, "unsigned16", 2, VLAN, 1, "the key's inner VLAN tag (QinQ), else 0"),
    _e("flowStartMilliseconds", 152, 0, "dateTimeMilliseconds", 8, MS, "first_ts", "the flow's first packet"),
    _e("flowEndMilliseconds", 153, 0, "dateTimeMilliseconds", 8, MS, "last_ts", "the flow's last packet"),
    _e("flowStartMicroseconds", 154, 0, "dateTimeMicroseconds", 8, NTP_US, "first_ts",
       "the same to the microsecond (as `aiomb flows` prints it)"),
    _e("flowEndMicroseconds", 155, 0, "dateTimeMicroseconds", 8, NTP_US, "last_ts", "the same"),
    _e("octetDeltaCount", 1, 0, "unsigned64", 8, U64, "client_ip_bytes", "IP bytes the client sent"),
    _e("packetDeltaCount", 2, 0, "unsigned64", 8, U64, "client_packets", "packets the client sent"),
    _e("reverseOctetDeltaCount", 1, REVERSE_PEN, "unsigned64", 8, U64, "server_ip_bytes",
       "IP bytes the server sent"),
    _e("reversePacketDeltaCount", 2, REVERSE_PEN, "unsigned64", 8, U64, "server_packets", "packets the server sent"),
    _e("tcpControlBits", 6, 0, "unsigned16", 2, U8, "client_tcp_flags",
       "SYN, ACK, FIN, RST the client sent (PSH, URG, ECE, CWR not tracked: 0)"),
    _e("reverseTcpControlBits", 6, REVERSE_PEN, "unsigned16", 2, U8, "server_tcp_flags", "the same, server"),
    _e("flowEndReason", 136, 0, "unsigned8", 1, RFC_REASON, "end_reason",
       "1 idle timeout (`timeout`), 3 end detected (`fin`, `rst`, `reused`), 4 forced end "
       "(`end_of_capture`, `interrupted`, `open`), 5 lack of resources (`evicted`)"),
    _e("biflowDirection", 239, 0, "unsigned8", 1, BIFLOW_DIR, "midstream",
       "1 the source is the initiator; 0 arbitrary (picked up mid-stream: aiomb guessed the client)"),
    _e("clientTcpState", 1, "aiomb", "unsigned8", 1, STATE, "client_state",
       "the client's final TCP state (RFC 793: 0 CLOSED, 1 LISTEN, 2 SYN_SENT, 3 SYN_RECEIVED, 4 ESTABLISHED, "
       "5 FIN_WAIT_1, 6 FIN_WAIT_2, 7 CLOSE_WAIT, 8 CLOSING, 9 LAST_ACK, 10 TIME_WAIT); 255 UDP"),
    _e("serverTcpState", 2, "aiomb", "unsigned8", 1, STATE, "server_state", "the same, server"),
    _e("aiombEndReason", 3, "aiomb", "unsigned8", 1, U8, "end_reason",
       "`end_reason`: 0 open, 1 fin, 2 rst, 3 timeout, 4 evicted, 5 end_of_capture, 6 reused, 7 interrupted"),
    _e("midstream", 4, "aiomb", "boolean", 1, BOOL, "midstream", "picked up mid-stream (1 true, 2 false)"),
    *_side_pair(5, "PayloadBytes", "payload_bytes", "transport payload bytes"),
    *_side_pair(7, "StreamBytes", "bytes", "reassembled stream bytes, holes left out (UDP: payload)"),
    *_side_pair(9, "MissedBytes", "missed", "stream bytes never seen (gaps)"),
    *_side_pair(11, "Retransmissions", "rexmits", "retransmitted segments"),
    *_side_pair(13, "OverlapConflicts", "overlap_conflicts", "overlaps whose bytes differed"),
    *_side_pair(15, "DataSegments", "data_segments", "segments carrying stream bytes"),
    *_side_pair(17, "RetransmittedBytes", "retransmitted_bytes", "bytes sent again"),
    *_side_pair(19, "OutOfOrderSegments", "out_of_order", "segments that came ahead of a hole"),
    *_side_pair(21, "ZeroWindowProbes", "zero_window_probes", "zero-window probes"),
]

_OFFSETS = {name: off for name, _, off in RECORD_FIELDS} | RECORD_LAYOUT


def template_elements(family: int) -> list:
    """The elements of the IPv4 (4) or IPv6 (6) template, in order."""
    return ADDRESSES[family] + ELEMENTS


def _program(elements) -> bytes:
    """The core encoder's ops for a template (4 bytes an element: op, length, row offset)."""
    out = bytearray()
    for e in elements:
        off = e.source if e.op == VLAN else _OFFSETS[e.source]
        out += struct.pack("!BBH", e.op, e.length, off)
    return bytes(out)


def _template_record(template_id: int, elements, pen: int) -> bytes:
    out = bytearray(struct.pack("!HH", template_id, len(elements)))
    for e in elements:
        number = pen if e.pen == "aiomb" else e.pen
        if number:
            out += struct.pack("!HHI", 0x8000 | e.number, e.length, number)
        else:
            out += struct.pack("!HH", e.number, e.length)
    return bytes(out)


@attrs.frozen(kw_only=True)
class ExporterStatistics:
    """What an :class:`IpfixExporter` has sent: data ``records``, ``messages`` (template
    messages included), ``bytes`` (IPFIX messages), ``templates`` (times the templates went out)
    and, over UDP, ``refused`` (messages the collector's host answered with port unreachable:
    nothing listens there)."""

    records: int
    messages: int
    bytes: int
    templates: int
    refused: int


class IpfixExporter:
    """Sends flow records to an IPFIX collector at ``host``:``port`` over ``transport`` "udp"
    (the default) or "tcp", as observation domain ``domain`` (a 32-bit number: give each box, or
    each worker, its own so that a collector can tell them apart).

    ``send(records)`` exports an :class:`aiomb.FlowRecords` batch (what :class:`aiomb.FlowRun`
    yields, or ``Engine.take_records()``): one bidirectional data record per flow, IPv4 and IPv6
    flows under their own templates. Enterprise-specific elements carry ``pen`` (default 32473,
    the number RFC 5612 reserves for documentation: register your own with IANA for a real
    deployment). UDP messages stay within ``mtu`` (1500 by default, less IP and UDP headers;
    never more than the route's MTU) and templates are sent again every ``template_interval``
    seconds and every ``template_messages`` messages; over TCP a message holds up to 64 KiB and
    templates go once. UDP has no flow control: a collector drops what its socket buffer cannot
    hold, so ``rate`` (messages a second) paces a burst, such as the flows a capture's end
    exports at once; TCP waits for the collector instead. ``clock`` gives the export time (Unix
    seconds).

    A collector sends nothing over TCP, so the connection becoming readable means that it closed
    it (or reset it): ``send`` looks before each write of up to 16 messages and then raises
    instead of writing. ``close()`` ends the stream and waits up to ``close_timeout`` seconds
    (default 1) for the collector to read it to the end and close its side; when it closed or reset the
    connection before that, or its host still had bytes to take when the wait ended, the records
    it may not have read are lost and ``close()`` raises. A collector that keeps the connection
    open after the wait, its host holding every byte, is not an error.

    Raises :class:`aiomb.ExportError` when the host does not resolve, when a TCP collector refuses
    the connection or closes it (saying after how many records sent, and how many of them may be
    lost), when the socket fails; ValueError for a bad option. Over UDP a collector that is not
    listening only counts in ``statistics().refused``. Layer: shells; ``send`` blocks while the
    socket's buffer is full, ``close()`` up to ``close_timeout`` seconds. A context manager (leaving it
    on an exception closes the socket without the wait).
    """

    def __init__(self, host: str, port: int = IPFIX_PORT, *, transport: str = "udp", domain: int = 0,
                 pen: int = DOCUMENTATION_PEN, mtu: int = 1500, template_interval: float = 60.0,
                 template_messages: int = 1000, rate: float | None = None, close_timeout: float = 1.0,
                 clock=time.time):
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be 'udp' or 'tcp', got {transport!r}")
        if rate is not None and not (rate > 0 and transport == "udp"):
            raise ValueError(f"rate (UDP messages a second) must be above 0, and only over UDP; got {rate}")
        if not 0 <= domain < 2 ** 32:
            raise ValueError(f"domain (the observation domain ID) must be 0 to 4294967295, got {domain}")
        if not 0 < pen < 2 ** 32 or pen == REVERSE_PEN:
            raise ValueError(f"pen must be a private enterprise number (1 to 4294967295, not 29305), got {pen}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1 to 65535, got {port}")
        if not close_timeout >= 0:
            raise ValueError(f"close_timeout (seconds close() waits for a TCP collector) must be 0 or more, "
                             f"got {close_timeout}")
        self.host, self.port, self.transport, self.domain, self.pen = host, port, transport, domain, pen
        self.template_interval, self.template_messages, self.clock = template_interval, template_messages, clock
        self.close_timeout = close_timeout
        self.gap = 1 / rate if rate else 0.0
        self._due = 0.0                     # the time.monotonic() at which the next message may go
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
        except socket.gaierror as exc:
            raise ExportError(f"IPFIX collector {self.where}: the host does not resolve ({exc.strerror}); "
                              "give an IP address or a resolvable name") from None
        self.sock = socket.socket(family, kind)
        try:
            self.sock.connect(address)
        except ConnectionRefusedError:
            self.sock.close()
            raise ExportError(f"IPFIX collector {self.where} refused the TCP connection: is a collector listening "
                              "there over TCP? (start it, or export over UDP)") from None
        except OSError as exc:
            self.sock.close()
            raise ExportError(f"IPFIX collector {self.where}: cannot connect over {transport}: {exc.strerror}") \
                from None
        if transport == "udp":
            route = self.sock.getsockopt(socket.IPPROTO_IP, IP_MTU) if family == socket.AF_INET else \
                self.sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
            self.message_max = min(mtu, route) - (28 if family == socket.AF_INET else 48)
        else:
            self.message_max = TCP_MESSAGE_MAX
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        self.templates = {}
        for fam, tid in ((4, IPV4_TEMPLATE), (6, IPV6_TEMPLATE)):
            elements = template_elements(fam)
            length = sum(e.length for e in elements)
            self.templates[fam] = (tid, _program(elements), length, _template_record(tid, elements, pen))
            need = _HEADER.size + _SET.size + max(length, len(self.templates[fam][3]))
            if self.message_max < need:
                self.sock.close()
                raise ValueError(f"mtu {mtu} leaves no room for a template or a record in a message "
                                 f"({need} bytes and the IP and UDP headers)")
        self.sequence = 0                   # data records sent so far (mod 2**32)
        self._records = self._messages = self._bytes = self._templates = self._refused = 0
        self._since_templates = 0
        self._templates_at = None
        # TCP: (bytes, records) sent up to the end of each message the collector's host has not
        # acknowledged yet (trimmed at each send), the records it holds, and whether the
        # connection failed (ExportError raised: close() only closes the socket)
        self._unacked = collections.deque()
        self._acked_records = 0
        self._failed = False

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.sock.close()

    def close(self) -> None:
        """Close the socket. Over TCP, end the stream first and wait up to ``close_timeout`` seconds
        for the collector to read to its end; raises ExportError when records may be lost (see the
        class). Closing again does nothing."""
        if self.sock.fileno() < 0:
            return
        try:
            if self.transport == "tcp" and not self._failed:
                self._finish()
        finally:
            self.sock.close()

    def statistics(self) -> ExporterStatistics:
        return ExporterStatistics(records=self._records, messages=self._messages, bytes=self._bytes,
                                  templates=self._templates, refused=self._refused)

    def send(self, records) -> int:
        """Export every row of ``records``; returns how many were sent."""
        now = int(self.clock())
        out = []                            # (header, data, data records) per message
        if self._templates_due(now):
            out.extend(self._template_messages(now))
        sent = 0
        for family, (tid, program, length, _) in self.templates.items():
            data = memoryview(ipfix_data(records, family, program, length))
            rows = len(data) // length
            per = (self.message_max - _HEADER.size - _SET.size) // length
            for start in range(0, rows, per):
                if self._since_templates >= self.template_messages and self.transport == "udp":
                    out.extend(self._template_messages(now))
                n = min(per, rows - start)
                size = _SET.size + n * length
                out.append((self._header(size, now) + _SET.pack(tid, size),
                            data[start * length:(start + n) * length], n))
                self.sequence = (self.sequence + n) & 0xFFFFFFFF
                self._since_templates += 1
                sent += n
        self._transmit(out)
        return sent

    def _templates_due(self, now: int) -> bool:
        if self._templates_at is None:
            return True
        return self.transport == "udp" and now - self._templates_at >= self.template_interval

    def _template_messages(self, now: int) -> list:
        """The templates, both in one message when they fit (the sequence number does not move:
        no data record)."""
        self._templates += 1
        self._templates_at = now
        self._since_templates = 0
        out, body = [], b""
        for record in (t[3] for t in self.templates.values()):
            if body and _HEADER.size + _SET.size + len(body) + len(record) > self.message_max:
                out.append(self._template_message(body, now))
                body = b""
            body += record
        out.append(self._template_message(body, now))
        return out

    def _template_message(self, body: bytes, now: int) -> tuple:
        return self._header(_SET.size + len(body), now) + _SET.pack(TEMPLATE_SET, _SET.size + len(body)), body, 0

    def _pace(self) -> None:
        """Wait until the next message may go at ``rate`` messages a second."""
        now = time.monotonic()
        if self._due > now:
            time.sleep(self._due - now)
        self._due = max(self._due, now) + self.gap

    def _header(self, set_bytes: int, now: int) -> bytes:
        return _HEADER.pack(10, _HEADER.size + set_bytes, now & 0xFFFFFFFF, self.sequence, self.domain)

    def _transmit(self, messages) -> None:
        if self.transport == "tcp":
            self._write(messages)
            return
        try:
            self._send_datagrams(messages)
        except OSError as exc:
            raise ExportError(f"IPFIX collector {self.where}: the UDP export failed ({exc.strerror}) after "
                              f"{self._records} records") from None

    def _count(self, header: bytes, data, records: int) -> None:
        self._messages += 1
        self._bytes += len(header) + len(data)
        self._records += records

    def _send_datagrams(self, messages) -> None:
        sendmsg = self.sock.sendmsg
        for header, data, records in messages:
            if self.gap:
                self._pace()
            try:
                sendmsg((header, data))
            except ConnectionRefusedError:      # an earlier datagram met a closed port: this one
                self._refused += 1              # was not sent, and the error is cleared
                try:
                    sendmsg((header, data))
                except ConnectionRefusedError:
                    self._refused += 1
            self._count(header, data, records)

    def _write(self, messages) -> None:
        """Write the messages to the TCP stream, up to TCP_WRITE_MESSAGES at a time, each write
        once the collector is seen not to have closed the connection."""
        self._unacked_records(self._unacked_bytes())
        for start in range(0, len(messages), TCP_WRITE_MESSAGES):
            batch = messages[start:start + TCP_WRITE_MESSAGES]
            if self._poll.poll(0) and self._ended():
                raise self._lost("the collector closed the connection", self._unacked_records(self._unacked_bytes()))
            try:
                self.sock.sendall(b"".join(b for header, data, _ in batch for b in (header, data)))
            except OSError as exc:
                raise self._lost(exc.strerror, self._records) from None
            for m in batch:
                self._count(*m)
                self._unacked.append((self._bytes, self._records))

    def _ended(self) -> bool:
        """Whether the TCP collector has closed its side of the connection (when it is readable).
        Raises ExportError when the collector reset it."""
        try:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            return self.sock.recv(4096, socket.MSG_DONTWAIT) == b""     # (a collector's bytes: dropped)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise self._lost(exc.strerror, self._records) from None

    def _unacked_bytes(self, fin: int = 0) -> int:
        """The bytes sent that the collector's host has not acknowledged; ``fin`` is 1 once our end
        of stream is sent (it counts as one in the socket's queue until acknowledged)."""
        queued = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return max(queued - fin, 0)

    def _unacked_records(self, unacked_bytes: int) -> int:
        """The records sent in messages not wholly acknowledged, the last ``unacked_bytes`` sent
        being unacknowledged."""
        acked = self._bytes - unacked_bytes
        while self._unacked and self._unacked[0][0] <= acked:
            self._acked_records = self._unacked.popleft()[1]
        return self._records - self._acked_records

    def _finish(self) -> None:
        """End the TCP stream and wait up to ``close_timeout`` seconds for the collector to close its side."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass                            # reset already: _ended says so
        deadline = time.monotonic() + self.close_timeout
        ended = False
        while not ended:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(max(1, int(left * 1000 + 0.5))):
                break
            ended = self._ended()
        unacked = self._unacked_bytes(fin=1)
        lost = self._unacked_records(unacked)
        if lost:
            raise self._lost("the collector closed the connection" if ended else
                             f"the collector did not take the last {unacked} bytes in {self.close_timeout:g} s", lost)

    def _lost(self, what: str, lost: int) -> ExportError:
        """The ExportError of a TCP collector that closed or reset the connection (``what``), with
        ``lost`` of the records sent that it may not have read."""
        self._failed = True
        tail = f", of which up to {lost} may be lost" if lost else ""
        return ExportError(f"IPFIX collector {self.where}: the TCP export failed ({what}) after {self._records} "
                           f"records{tail}")
