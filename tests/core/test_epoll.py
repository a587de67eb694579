"""The epoll shell against select.epoll itself: the same exceptions for the same misuse, and the
same level-triggered, edge-triggered and one-shot behaviour (checked side by side on a socket
pair); flow sockets read like sockets; timeouts count packet time on captures; timer sockets."""

import asyncio
import errno
import gc
import os
import select
import socket
import time
import weakref

import pytest

import aiomb
from aiomb import Side
from aiomb.testing import TcpConversation, tcp_frame, udp_frame, write_pcap

IN, ET, ONESHOT, HUP, RDHUP = select.EPOLLIN, select.EPOLLET, select.EPOLLONESHOT, select.EPOLLHUP, select.EPOLLRDHUP
EXCLUSIVE = select.EPOLLEXCLUSIVE


def write(tmp_path, frames, name="c.pcap"):
    path = tmp_path / name
    write_pcap(path, sorted(frames, key=lambda f: f[0]))
    return path


def chatter(start, n, step=0.01):
    """UDP frames of another flow: traffic that drives the capture on."""
    return [(start + i * step, udp_frame("10.9.0.1", "10.9.0.2", 7000, 7001, b"x")) for i in range(n)]


def talk(port=40000, start=1.0, parts=(b"hello",), close=False):
    c = TcpConversation(("10.0.0.1", port), ("10.0.0.2", 80), start_ts=start)
    c.handshake()
    for part in parts:
        c.send("client", part)
    if close:
        c.fin("client")
        c.fin("server")
        c.ack("client")
    return c


def accept_all(mon, ep=None):
    socks = []
    while True:
        try:
            socks.append(mon.accept())
        except BlockingIOError:
            return socks


def first_flow(path, **options):
    """A monitor on ``path``, driven until its first flow socket has bytes to read."""
    mon = aiomb.monitor(aiomb.capture(path), batch_size=1, **options)
    while not mon._ready & IN:
        assert mon.step()
    sock = mon.accept()
    while not sock._ready & IN:
        assert mon.step()
    return mon, sock


# -- misuse: the same exceptions as select.epoll ------------------------------------------


def outcome(call, *args):
    try:
        call(*args)
    except Exception as exc:
        return type(exc), getattr(exc, "errno", None), str(exc)
    return None


def test_misuse_raises_what_select_epoll_raises(tmp_path):
    mon, sock = first_flow(write(tmp_path, talk().frames))
    a, b = socket.socketpair()
    ours, theirs = aiomb.epoll(), select.epoll()
    try:
        for ep, target in ((ours, sock), (theirs, a)):
            ep.register(target, IN)
        for name, call in {
            "register twice": lambda ep, t: ep.register(t, IN),
            "modify unknown": lambda ep, t: ep.modify(t, IN),
            "unregister unknown": lambda ep, t: ep.unregister(t),
            "register negative": lambda ep, t: ep.register(-1, IN),
            "maxevents 0": lambda ep, t: ep.poll(0, 0),
            "maxevents -2": lambda ep, t: ep.poll(0, -2),
        }.items():
            if "unknown" in name:
                theirs_target, ours_target = b, mon      # registered in neither
            else:
                theirs_target, ours_target = a, sock
            assert outcome(call, ours, ours_target) == outcome(call, theirs, theirs_target), name
        for ep in (ours, theirs):
            ep.close()
            assert ep.closed
            ep.close()                                   # idempotent
        for call in (lambda ep, t: ep.register(t, IN), lambda ep, t: ep.poll(0), lambda ep, t: ep.fileno(),
                     lambda ep, t: ep.unregister(t)):
            assert outcome(call, ours, sock) == outcome(call, theirs, a)
    finally:
        a.close()
        b.close()
        mon.close()


class BadFileno:
    """An object whose fileno() gives no descriptor."""

    def fileno(self):
        return "3"


MASKS = [-1, -2, 2**32 - 1, EXCLUSIVE | IN, EXCLUSIVE | IN | ET | HUP | select.EPOLLERR | select.EPOLLOUT,
         EXCLUSIVE | ONESHOT, EXCLUSIVE | RDHUP, EXCLUSIVE | select.EPOLLPRI, ~EXCLUSIVE, 0, 1 << 40, -(1 << 32),
         None, 1.0, "1"]


def test_closed_sockets_non_descriptors_and_bad_masks_raise_what_select_epoll_raises(tmp_path):
    """Side by side with a pipe: a socket closed while watched is a closed descriptor (EBADF),
    what has no descriptor is a TypeError, and a mask is refused (EINVAL) where the kernel
    refuses it: EPOLLEXCLUSIVE in modify(), or beside bits other than IN, OUT, ERR, HUP, WAKEUP
    and ET. select.epoll drops the bits above the low 32 (aiomb's event kinds): they change nothing."""
    mon, sock = first_flow(write(tmp_path, talk().frames))
    ours, theirs = aiomb.epoll(), select.epoll()
    timers = [mon.timer(10.0) for _ in MASKS]
    r, w = os.pipe()
    closed, _ = os.pipe()
    ours.register(sock, IN)
    theirs.register(r, IN)
    ours.register(timers[0], IN)
    theirs.register(closed, IN)
    timers[0].close()                   # closing drops it from the epoll, as close(2) does
    os.close(closed)

    def same(call, target, real):
        got, want = outcome(call, ours, target), outcome(call, theirs, real)
        assert (got and got[:2]) == (want and want[:2]), (got, want)
        return got or (None, None, "accepted")

    try:
        for name, call in {"modify": lambda ep, t: ep.modify(t, IN), "unregister": lambda ep, t: ep.unregister(t),
                           "register": lambda ep, t: ep.register(t, IN),
                           "modify exclusive": lambda ep, t: ep.modify(t, EXCLUSIVE | IN)}.items():
            assert same(call, timers[0], closed)[1] == errno.EBADF, name
        for target in (None, BadFileno(), object(), 1.5):
            for call in (lambda ep, t: ep.register(t, IN), lambda ep, t: ep.modify(t, IN),
                         lambda ep, t: ep.unregister(t), lambda ep, t: ep.register(t)):
                assert same(call, target, target)[0] is TypeError
        for mask, timer in zip(MASKS, timers[1:] + [mon.timer(10.0)]):
            if same(lambda ep, t, mask=mask: ep.register(t, mask), timer, w)[0] is None:    # accepted by both
                ours.unregister(timer)
                theirs.unregister(w)
            same(lambda ep, t, mask=mask: ep.modify(t, mask), sock, r)
        # EPOLLEXCLUSIVE in modify() is refused before the descriptor is looked up
        assert same(lambda ep, t: ep.modify(t, EXCLUSIVE | IN), mon, w)[1] == errno.EINVAL
        with pytest.raises(OSError, match="EPOLLEXCLUSIVE is taken by register.. only, beside EPOLLIN, EPOLLOUT, "
                                          "EPOLLERR, EPOLLHUP, EPOLLWAKEUP and EPOLLET"):
            ours.register(mon, EXCLUSIVE | RDHUP)
        ours.close()
        theirs.close()
        # the arguments are checked before the epoll object is
        assert same(lambda ep, t: ep.register(t, IN), None, None)[0] is TypeError
        assert same(lambda ep, t: ep.register(t, None), sock, r)[0] is TypeError
        assert same(lambda ep, t: ep.register(t, -1), sock, r)[0] is ValueError
    finally:
        os.close(r)
        os.close(w)
        mon.close()


# -- level, edge, one-shot: side by side with a socket pair --------------------------------


@pytest.mark.parametrize("mode", [0, ET, ONESHOT], ids=["level", "edge", "oneshot"])
def test_trigger_modes_behave_as_on_a_real_socket(tmp_path, mode):
    c = talk(parts=(b"one",))
    later = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq, ack=c.server_seq, flags="PA",
                      payload=b"two")
    frames = c.frames + chatter(1.5, 40) + [(2.0, later)] + chatter(2.5, 40)
    mon, sock = first_flow(write(tmp_path, frames))
    a, b = socket.socketpair()
    b.send(b"one")
    ours, theirs = aiomb.epoll(), select.epoll()
    ours.register(sock, IN | mode)
    theirs.register(a, IN | mode)

    def both():
        return [fd == sock.fileno() for fd, _ in ours.poll(0)], [fd == a.fileno() for fd, _ in theirs.poll(0)]

    try:
        for _ in range(3):                               # nothing read: report again?
            got, want = both()
            assert got == want
        b.send(b"two")                                  # more data: a new edge
        while sock.unread(Side.CLIENT) < 6:
            assert mon.step()
        got, want = both()
        assert got == want
        if mode == ONESHOT:                              # re-armed: reported once more
            ours.modify(sock, IN | mode)
            theirs.modify(a, IN | mode)
            got, want = both()
            assert got == want == [True]
            assert both() == ([], [])
        assert sock.recv(100, Side.CLIENT) == a.recv(100) == b"onetwo"
        assert both() == ([], [])                      # read everything: not ready
    finally:
        a.close()
        b.close()
        ours.close()
        theirs.close()
        mon.close()


def test_maxevents_takes_turns_among_ready_sockets(tmp_path):
    frames = talk(40000, 1.0).frames + talk(40001, 1.0005).frames + chatter(2.0, 5)
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, frames)))
    ep = aiomb.epoll()
    ep.register(mon, IN)
    ep.poll()
    socks = accept_all(mon)
    assert len(socks) == 2
    for s in socks:
        ep.register(s, IN)
    ep.unregister(mon)
    first, second = ep.poll(0, 1), ep.poll(0, 1)
    assert len(first) == len(second) == 1 and first != second        # both get a turn
    assert sorted(fd for fd, _ in ep.poll(0)) == sorted(s.fileno() for s in socks)
    mon.close()


# -- flow sockets ----------------------------------------------------------------------------


def test_a_flow_socket_reads_like_a_socket(tmp_path):
    c = talk(parts=(b"abc", b"defg"), close=True)
    frames = c.frames + chatter(5.0, 3)
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, frames)), last_packets=True)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    ep.poll()
    (sock,) = accept_all(mon)
    assert sock.getsockname() == ("10.0.0.1", 40000) and sock.getpeername() == ("10.0.0.2", 80)
    with pytest.raises(BlockingIOError):
        mon.accept()
    ep.register(sock, IN | RDHUP)
    while not sock._ready & HUP:
        ep.poll()
    assert sock.peek(2, Side.CLIENT) == b"ab"
    assert sock.ppeek(3, 4, Side.CLIENT) == b"defg"
    with pytest.raises(ValueError, match=r"bytes \[1, 9\) are not held; the socket holds \[0, 7\)"):
        sock.ppeek(1, 8, Side.CLIENT)
    assert (sock.unread(Side.CLIENT), sock.unread(Side.SERVER)) == (7, 0)
    assert sock.recv(5, Side.CLIENT) == b"abcde"
    assert sock.unread(Side.CLIENT) == 2
    assert sock.recv(100, Side.CLIENT) == b"fg"
    assert sock.recv(100, Side.CLIENT) == b""                        # its FIN: the end of the stream
    assert sock.recv(100, Side.SERVER) == b""
    assert sock.end_reason is aiomb.EndReason.FIN and sock.stats.client.packets == 6
    assert sock.last_packet(Side.CLIENT) == c.frames[-1][1]
    sock.context["seen"] = True
    assert sock.context == {"seen": True}
    with pytest.raises(AttributeError):
        sock.seen = True                                # the program's own state goes in context
    sock.close()
    with pytest.raises(OSError) as info:
        sock.recv(1, Side.CLIENT)
    assert info.value.errno == errno.EBADF
    mon.close()



def test_a_udp_flow_socket_closes_while_its_flow_is_open(tmp_path):
    """A UDP flow has no stream to stop: closing its socket (and stopping its flow) just works."""
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, chatter(1.0, 5))), udp=True, batch_size=1)
    while not mon._ready & IN:
        assert mon.step()
    (sock,) = accept_all(mon)
    assert sock.end_reason is None and sock.flow.key.proto == aiomb.Proto.UDP
    sock.flow.stop()
    sock.close()
    with pytest.raises(OSError) as info:
        sock.recv(1, Side.CLIENT)
    assert info.value.errno == errno.EBADF
    mon.close()

def test_a_hole_raises_stream_gap_once_then_reading_goes_on(tmp_path):
    c = talk(parts=(b"VERY",))
    c.send("client", b"GOOD")
    c.frames.pop()
    c.send("client", b"DATA")
    c.ack("server")
    mon, sock = first_flow(write(tmp_path, c.frames + chatter(3.0, 3)))
    while sock.unread(Side.CLIENT) < 8:
        assert mon.step()
    assert sock.recv(100, Side.CLIENT) == b"VERY"
    with pytest.raises(aiomb.StreamGap) as info:
        sock.recv(100, Side.CLIENT)
    assert (info.value.offset, info.value.length) == (4, 4)
    assert sock.recv(100, Side.CLIENT) == b"DATA"
    mon.close()


def test_event_kinds_in_masks_queue_their_events(tmp_path):
    c = talk(parts=(b"abcd",))
    c.send("client", b"abcd", advance=False, seq_offset=-4)          # a retransmission
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, c.frames + chatter(3.0, 3))),
                        events=(aiomb.RETRANSMIT,))
    ep = aiomb.epoll()
    ep.register(mon, IN)
    ep.poll()
    (sock,) = accept_all(mon)
    want = aiomb.event_mask(aiomb.RETRANSMIT)
    assert want == 1 << (32 + 11) and not want & 0xFFFFFFFF
    ep.register(sock, want)
    fd, mask = ep.poll()[0]
    assert fd == sock.fileno() and mask & want
    assert [e.kind for e in sock.events()] == [aiomb.RETRANSMIT]
    assert not sock._ready & want
    mon.close()


class LiveCapture:
    """A capture read the way a live port is: a batch at each read, with no end (0 once the
    frames are out), the time of the last frame as its clock, a descriptor to wait on until
    close()."""

    live = True
    tick = 0.01

    def __init__(self, path):
        self._capture = aiomb.capture(path)
        self._fd = -1
        self._now = 0.0

    def open(self):
        self._capture.open()
        self._fd = os.eventfd(1)        # readable: frames wait

    def wait_fds(self):
        return [self._fd] if self._fd >= 0 else []

    def read(self, batch, timeout=None):
        count = self._capture.read(batch)
        if not count:
            return 0
        self._now = batch.last_ts
        return count

    def apply(self, batch):
        pass

    def now(self):
        return self._now

    def close(self):
        self._capture.close()
        os.close(self._fd)
        self._fd = -1


@pytest.mark.parametrize("live", [False, True], ids=["capture", "live"])
def test_flow_sockets_end_when_the_last_monitor_closes_their_source(tmp_path, live):
    """Closing a monitor leaves its flow sockets going while another monitor keeps the source
    open; closing the last one closes the source, so nothing can feed the flows any more: they
    end (EPOLLHUP, end_reason INTERRUPTED, their figures), their timers with them, what they
    queued stays readable, and poll() has nothing more to wait for."""
    path = write(tmp_path, talk(parts=(b"abc", b"def", b"ghi")).frames + chatter(5.0, 3))
    mon = aiomb.monitor((LiveCapture if live else aiomb.capture)(path), batch_size=1)
    other = mon.monitor("udp", udp=True)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    ep.poll()
    sock = mon.accept()
    timer = sock.timer(100.0)
    ep.register(sock, IN | RDHUP | ET)
    ep.register(timer, IN)
    ep.unregister(mon)
    mon.close()
    assert ep.poll(5.0) == [(sock.fileno(), IN)]                    # fed on by the other monitor's source
    assert sock.recv(100, Side.CLIENT) == b"abc"
    assert ep.poll(5.0) == [(sock.fileno(), IN)]
    other.close()
    assert sock.end_reason is aiomb.EndReason.INTERRUPTED and sock.stats.client.packets == 4     # to "def"
    assert sorted(ep.poll(5.0)) == [(sock.fileno(), IN | HUP), (timer.fileno(), HUP)]
    assert sock.recv(100, Side.CLIENT) == b"def"
    assert sock.recv(100, Side.CLIENT) == b""
    ep.unregister(timer)
    started = time.monotonic()
    assert ep.poll(5.0) == []                                       # at once: nothing more can come
    assert time.monotonic() - started < 1.0
    ep.unregister(sock)
    assert ep.poll(5.0) == []
    ep.close()


class AppliedCapture(LiveCapture):
    """A live-like capture that notes how many frames each apply() gave their verdicts."""

    def __init__(self, path):
        super().__init__(path)
        self.applied = []

    def apply(self, batch):
        self.applied.append(batch.count)


@pytest.mark.parametrize("live", [False, True], ids=["capture", "live"])
@pytest.mark.parametrize("at", [2, 3], ids=["mid-batch", "batch-end"])      # flow 2's SYN is frame 1 of 3
def test_a_program_that_catches_a_handlers_error_from_poll_goes_on_after_that_packet(tmp_path, live, at):
    """The error reaches the program once; its next poll() goes on after the packet whose
    handler raised: each packet is processed once, every flow is offered (the flow whose
    handler raised too), and a live batch gets its verdicts once, after its last frame."""
    frames = [f for i in range(5) for f in talk(40000 + i, 1.0 + i).frames]
    raised = []

    def fail_once(view):
        if view.flow.id == at and not raised:
            raised.append(view.flow.id)
            raise ValueError("a middlebox bug")
    source = (AppliedCapture if live else aiomb.capture)(write(tmp_path, frames))
    errors, accepted = [], []
    with aiomb.monitor(source, batch_size=3) as mon, aiomb.epoll() as ep:
        mon.engine.add_handler(aiomb.CONN_START, fail_once)
        ep.register(mon, IN)
        for _ in range(100):
            try:
                ready = ep.poll(0)
            except ValueError as exc:
                errors.append(exc)
                continue
            accepted += [sock.key.client_port for sock in accept_all(mon)]
            if any(mask & HUP for _, mask in ready):
                break
        assert [str(e) for e in errors] == ["a middlebox bug"] and raised == [at]
        assert mon.statistics().packets == len(frames)
        assert sorted(accepted) == list(range(40000, 40005))
        if live:
            assert sum(source.applied) == len(frames)


def test_a_closed_monitor_makes_no_other(tmp_path):
    """accept(), timer() and monitor() need the monitor open (EBADF), whether or not another
    monitor keeps its source open."""
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, chatter(1.0, 3))))
    other = mon.monitor("udp")
    for closing in (mon, other):
        closing.close()
        for call in (closing.accept, lambda m=closing: m.timer(1.0), lambda m=closing: m.monitor("port 80")):
            with pytest.raises(OSError, match="is closed") as info:
                call()
            assert info.value.errno == errno.EBADF


# -- timeouts and timers: the stack's clock -------------------------------------------------


def test_a_poll_timeout_on_a_capture_is_packet_time(tmp_path):
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, chatter(1.0, 1000, step=0.01))), filter="port 80")
    ep = aiomb.epoll()
    ep.register(mon, IN)
    assert ep.poll(2.0) == []
    assert 3.0 <= mon.time() < 3.1                                   # two seconds of packets, not all ten
    assert ep.poll() == [(mon.fileno(), HUP)]                         # then the end of the capture
    mon.close()


def test_timer_sockets_one_shot_periodic_and_a_flows(tmp_path):
    c = talk(start=1.0)
    rst = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, seq=c.client_seq, flags="R")
    frames = c.frames + [(3.0, rst)] + chatter(1.0, 800, step=0.01)
    mon = aiomb.monitor(aiomb.capture(write(tmp_path, frames)), batch_size=16)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    once = mon.timer(2.0)
    every = mon.timer(0.5, interval=1.0)
    ep.register(once, IN)
    ep.register(every, IN)
    fired, flow_timer = [], None
    while not mon.finished:
        for fd, mask in ep.poll():
            if fd == mon.fileno():
                for sock in accept_all(mon):
                    flow_timer = sock.timer(5.0)
                    ep.register(flow_timer, IN)
                    ep.unregister(mon)
            elif fd == once.fileno():
                fired.append(("once", once.read(), round(mon.time(), 2)))
            elif fd == every.fileno():
                fired.append(("every", every.read(), round(mon.time(), 2)))
            elif flow_timer is not None and fd == flow_timer.fileno():
                assert mask == HUP                                    # its flow ended (RST) first
                fired.append(("flow", None, None))
                ep.unregister(flow_timer)
    names = [f[0] for f in fired]
    assert names.count("once") == 1 and names.count("flow") == 1
    assert [n for name, n, _ in fired if name == "every"] and sum(n for name, n, _ in fired if name == "every") == 8
    with pytest.raises(BlockingIOError):
        once.read()
    mon.close()


# -- nested in other event loops ---------------------------------------------------------------


def collect(ep, mon, poll):
    """Run a capture through ``poll`` (a callable giving ready events): {flow id: client bytes}."""
    seen, socks = {}, {}
    while not mon.finished or poll(check=True):
        for fd, mask in poll():
            if fd == mon.fileno():
                for sock in accept_all(mon):
                    socks[sock.fileno()] = sock
                    seen[sock.flow_id] = b""
                    ep.register(sock, IN)
                if mask & HUP:
                    ep.unregister(mon)
                continue
            sock = socks[fd]
            try:
                seen[sock.flow_id] += sock.recv(1 << 20, Side.CLIENT)
            except BlockingIOError:
                pass
            if mask & HUP:
                ep.unregister(sock)
    return seen


def nest_capture(tmp_path):
    frames = []
    for i in range(30):
        frames += talk(40000 + i, 1.0 + i * 0.01, parts=(b"request %d" % i,), close=True).frames
    return write(tmp_path, frames + chatter(2.0, 50))


EXPECTED = {i + 1: b"request %d" % i for i in range(30)}


def test_nested_in_select_epoll(tmp_path):
    mon = aiomb.monitor(aiomb.capture(nest_capture(tmp_path)), batch_size=8)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    outer = select.epoll()
    outer.register(ep.fileno(), IN)

    def poll(check=False):
        if check:
            return bool(outer.poll(0))
        outer.poll(1.0)
        return ep.poll(0)
    assert collect(ep, mon, poll) == EXPECTED
    assert outer.poll(0) == []                                        # nothing pending at the end
    mon.close()


def test_nested_in_asyncio(tmp_path):
    mon = aiomb.monitor(aiomb.capture(nest_capture(tmp_path)), batch_size=8)
    ep = aiomb.epoll()
    ep.register(mon, IN)
    socks, seen, watched = {}, {}, {mon.fileno()}

    def on_ready():
        for fd, mask in ep.poll(0):
            if fd == mon.fileno():
                for sock in accept_all(mon):
                    socks[sock.fileno()] = sock
                    seen[sock.flow_id] = b""
                    ep.register(sock, IN)
                    watched.add(sock.fileno())
            else:
                sock = socks[fd]
                try:
                    seen[sock.flow_id] += sock.recv(1 << 20, Side.CLIENT)
                except BlockingIOError:
                    pass
            if mask & HUP:
                ep.unregister(fd)
                watched.discard(fd)
        if not watched:
            done.set()

    async def main():
        global done
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(ep.fileno(), on_ready)          # the loop drives the capture
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            loop.remove_reader(ep.fileno())

    asyncio.run(main())
    assert seen == EXPECTED
    mon.close()


def test_the_readiness_bits_are_selects():
    assert aiomb._core.READINESS_BITS == {name: getattr(select, name) for name in aiomb._core.READINESS_BITS}


def test_sockets_leave_no_garbage_cycles_behind(tmp_path):
    frames = [f for port in range(40000, 40020) for f in talk(port, start=1.0 + port % 20, close=True).frames]
    gc_was = gc.isenabled()
    gc.disable()
    try:
        seen = []
        with aiomb.monitor(aiomb.capture(write(tmp_path, frames + chatter(30.0, 3)))) as mon, aiomb.epoll() as ep:
            ep.register(mon, IN)
            socks = {}
            while ready := ep.poll():
                for fd, mask in ready:
                    if fd == mon.fileno():
                        for sock in accept_all(mon):
                            socks[sock.fileno()] = sock
                            ep.register(sock, IN)
                            seen.append(weakref.ref(sock))
                        if mask & HUP:
                            ep.unregister(mon)
                        continue
                    sock = socks[fd]
                    if mask & IN:
                        sock.recv(100, Side.CLIENT)
                    if mask & HUP:
                        del socks[fd]
                        sock.close()
            del sock
        assert len(seen) == 20
        assert [ref() for ref in seen] == [None] * 20     # freed without the cycle collector
    finally:
        if gc_was:
            gc.enable()
