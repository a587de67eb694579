"""A minimal IPFIX collecting process for the tests, written from RFC 7011 and RFC 5103 alone (it
imports nothing from aiomb): it splits a TCP stream into messages, learns templates per
observation domain and decodes data records into dicts keyed by (enterprise number, element
number), with IANA's elements that aiomb sends decoded by their type."""

import ipaddress
import struct

REVERSE = 29305
NTP_TO_UNIX = 2208988800
ADDRESSES = {8, 12, 27, 28}                 # source/destination IPv4/IPv6 addresses
NTP_TIMES = {154, 155, 156, 157}            # dateTimeMicroseconds/Nanoseconds


class Message:
    def __init__(self, version, length, export_time, sequence, domain, sets, records):
        self.version, self.length, self.export_time = version, length, export_time
        self.sequence, self.domain, self.sets, self.records = sequence, domain, sets, records

    @property
    def template_ids(self) -> list:
        return [tid for set_id, tid in self.sets if set_id == 2]


class Collector:
    """Feed it messages (``feed``) or a TCP stream (``feed_stream``); ``records`` holds every
    decoded data record, ``messages`` every message, ``templates`` the template of each
    (domain, template ID): a list of (enterprise number or 0, element number, length)."""

    def __init__(self):
        self.templates: dict = {}
        self.messages: list = []
        self.records: list = []

    def feed_stream(self, data: bytes) -> None:
        while data:
            length = struct.unpack_from("!H", data, 2)[0]
            self.feed(data[:length])
            data = data[length:]

    def feed(self, msg: bytes) -> Message:
        version, length, export_time, sequence, domain = struct.unpack_from("!HHIII", msg)
        assert version == 10, f"not an IPFIX message: version {version}"
        assert length == len(msg), f"message length {length}, got {len(msg)} bytes"
        pos, sets, records = 16, [], []
        while pos < length:
            set_id, set_len = struct.unpack_from("!HH", msg, pos)
            body = msg[pos + 4:pos + set_len]
            if set_id == 2:
                sets.extend((2, tid) for tid in self._templates(domain, body))
            elif set_id >= 256:
                sets.append((set_id, None))
                records.extend(self._data(self.templates[domain, set_id], body))
            pos += set_len
        assert pos == length
        out = Message(version, length, export_time, sequence, domain, sets, records)
        self.messages.append(out)
        self.records.extend(records)
        return out

    def _templates(self, domain, body) -> list:
        pos, ids = 0, []
        while pos + 4 <= len(body):
            tid, count = struct.unpack_from("!HH", body, pos)
            pos += 4
            fields = []
            for _ in range(count):
                number, length = struct.unpack_from("!HH", body, pos)
                pos += 4
                pen = 0
                if number & 0x8000:
                    pen = struct.unpack_from("!I", body, pos)[0]
                    pos += 4
                fields.append((pen, number & 0x7FFF, length))
            self.templates[domain, tid] = fields
            ids.append(tid)
        return ids

    def _data(self, fields, body) -> list:
        size = sum(length for _, _, length in fields)
        out = []
        for start in range(0, len(body) - size + 1, size):
            rec, pos = {}, start
            for pen, number, length in fields:
                raw = body[pos:pos + length]
                pos += length
                if pen == 0 and number in ADDRESSES:
                    rec[pen, number] = ipaddress.ip_address(raw)
                elif pen == 0 and number in NTP_TIMES:
                    sec, frac = struct.unpack("!II", raw)
                    rec[pen, number] = (sec - NTP_TO_UNIX) * 1_000_000 + round(frac * 1_000_000 / 2 ** 32)
                else:
                    rec[pen, number] = int.from_bytes(raw, "big")
            out.append(rec)
        return out
