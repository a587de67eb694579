"""The per-packet cost of address translation (Flow.translate), for timing whole processes.

    python bench/translate.py make IN.pcap OUT.pcap    # IN (gen_capture.py) as a source NAT's input
    python bench/translate.py MODE CAPTURE             # MODE: plain, translate or python

``make`` rewrites each server-to-client packet of IN to NAT_IP:port, the port taken in turn at each
client SYN (what examples/nat.py's pool hands out): the capture a source NAT reads. Then, over a
stack reading CAPTURE to its end:

* ``plain``: a CONN_START handler that only counts (run on IN: the translation table unused);
* ``translate``: the CONN_START handler binds each flow's client to NAT_IP:port, in the same order
  (run on OUT: every reply is translated before the flow lookup, one flow per connection);
* ``python``: no binding, a Python PACKET_IN handler at the sender hook reads each packet's
  destination (the cost of a Python call per packet, the way before Flow.translate).

Prints one JSON line: packets, flows created, packets translated.
"""

import ipaddress
import json
import struct
import sys

import trio

import aiomb

NAT_IP = "192.0.2.1"
FIRST_PORT, PORTS = 1024, 64000
SYN, ACK = 0x02, 0x10


def make(src, dst):
    """Write dst: src with every reply (from a 172.16/16 server) sent to NAT_IP:port."""
    nat = bytes(int(x) for x in NAT_IP.split("."))
    ports, n = {}, 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(f.read(24))
        while header := f.read(16):
            frame = bytearray(f.read(struct.unpack("<I", header[8:12])[0]))
            ip, tcp = 14, 34                                    # gen_capture: no IP or TCP options
            if frame[ip + 12] == 10 and frame[tcp + 13] & (SYN | ACK) == SYN:
                ports[bytes(frame[ip + 12:ip + 16] + frame[tcp:tcp + 2])] = FIRST_PORT + n % PORTS
                n += 1
            elif frame[ip + 12] == 172:                         # a reply: to the client's NAT port
                port = ports[bytes(frame[ip + 16:ip + 20] + frame[tcp + 2:tcp + 4])]
                frame[ip + 16:ip + 20] = nat
                frame[tcp + 2:tcp + 4] = struct.pack("!H", port)
            out.write(header + frame)


async def run(mode, path):
    count = [0, 0]
    nat = ipaddress.ip_address(NAT_IP)

    def start(packet):
        if mode == "translate":
            packet.flow.translate(client=(NAT_IP, FIRST_PORT + count[0] % PORTS))
        count[0] += 1

    def look(packet):
        count[1] += packet.dst == nat               # what a NAT's handler tests first
    async with aiomb.open_stack(aiomb.capture(path)) as stack:
        stack.on(aiomb.CONN_START, start, hook=aiomb.Hook.SENDER)
        if mode == "python":
            stack.on(aiomb.PACKET_IN, look, hook=aiomb.Hook.SENDER)
        await stack.run()
        st = stack.statistics().engine
    print(json.dumps({"mode": mode, "packets": st.packets, "flows": st.flows_created,
                      "translated": st.translated_packets}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        trio.run(run, sys.argv[1], sys.argv[2])
