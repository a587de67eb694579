"""Sans-I/O: inline handlers added or removed while an event is dispatched. During one dispatch (one
kind firing at one hook) the handlers run are those registered when it began, in chain order
(reversed for server-to-client packets): one removed before its turn is not called, one added
first runs for the next event, every other runs exactly once."""

import itertools
import random

import pytest

import aiomb
from aiomb import EventKind, Hook
from aiomb.testing import TcpConversation


def packets(n_data=0):
    """A handshake, then ``n_data`` segments from each side in turn: (ts, frame, side) each."""
    c = TcpConversation(("10.0.0.1", 40000), ("10.0.0.2", 80), start_ts=1.0)
    sides = ["client", "server", "client"]
    c.handshake()
    for i in range(n_data):
        side = ("client", "server")[i % 2]
        c.send(side, b"x")
        sides.append(side)
    return [(ts, frame, side) for (ts, frame), side in zip(c.frames, sides, strict=True)]


class Handlers:
    """PACKET_IN handlers at the sender hook (once per packet), named, on an engine's middleboxes;
    ``then[name]`` runs inside that handler's next call."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []
        self.tokens = {}
        self.then = {}

    def add(self, name, middlebox):
        def handler(view):
            self.calls.append(name)
            action = self.then.pop(name, None)
            if action is not None:
                action()
        self.tokens[name] = self.engine.add_handler(EventKind.PACKET_IN, handler, middlebox=middlebox,
                                                    hook=Hook.SENDER)

    def remove(self, name):
        self.engine.remove_handler(self.tokens.pop(name))

    def feed(self, ts, frame):
        self.calls = []
        self.engine.feed(frame, ts)
        return self.calls


def three_boxes():
    """An engine whose chain is A (default middlebox), B, C, one handler on each."""
    engine = aiomb.Engine()
    h = Handlers(engine)
    for name, mb in zip("ABC", (0, engine.add_middlebox(), engine.add_middlebox()), strict=True):
        h.add(name, mb)
    return h


# the packet under test, the next one in its direction, the handlers dispatched first and last, and
# the chain order: the client's SYN (A, B, C, then its ACK) or the server's SYN-ACK (C, B, A, then
# its data); packets(n_data=2) is SYN, SYN-ACK, ACK, client data, server data
DIRECTIONS = {"client": (0, 2, "A", "C", ["A", "B", "C"]), "server": (1, 4, "C", "A", ["C", "B", "A"])}


def run_case(direction, change):
    """Feed the handshake and data; ``change(h)`` arms actions before the packet under test.
    Returns the calls for that packet and for the next packet in the same direction."""
    at, following = DIRECTIONS[direction][:2]
    h = three_boxes()
    calls = []
    for i, (ts, frame, _side) in enumerate(packets(n_data=2)):
        if i == at:
            change(h)
        calls.append(h.feed(ts, frame))
    return calls[at], calls[following]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_handler_removing_itself_runs_once_and_the_others_run_once(direction):
    *_, first, _, order = DIRECTIONS[direction]
    now, following = run_case(direction, lambda h: h.then.update({first: lambda: h.remove(first)}))
    assert now == order
    assert following == [n for n in order if n != first]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_handler_removed_before_its_turn_is_not_called(direction):
    *_, first, last, order = DIRECTIONS[direction]
    now, following = run_case(direction, lambda h: h.then.update({first: lambda: h.remove(last)}))
    assert now == order[:2]
    assert following == order[:2]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_handler_removed_after_its_turn_has_run_once(direction):
    *_, first, last, order = DIRECTIONS[direction]
    now, following = run_case(direction, lambda h: h.then.update({last: lambda: h.remove(first)}))
    assert now == order
    assert following == order[1:]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_handler_removing_the_next_one_and_itself(direction):
    *_, first, last, _ = DIRECTIONS[direction]
    now, following = run_case(direction, lambda h: h.then.update({first: lambda: (h.remove("B"), h.remove(first))}))
    assert now == [first, last]
    assert following == [last]


@pytest.mark.parametrize("direction,box,following", [
    ("client", 0, ["A", "new", "B", "C"]),      # after the handlers of its middlebox
    ("client", 2, ["A", "B", "C", "new"]),
    ("server", 0, ["C", "B", "new", "A"]),
    ("server", 2, ["new", "C", "B", "A"]),
])
def test_a_handler_added_during_dispatch_first_runs_for_the_next_event(direction, box, following):
    *_, first, _, order = DIRECTIONS[direction]
    assert run_case(direction, lambda h: h.then.update({first: lambda: h.add("new", box)})) == (order, following)


def test_a_handler_added_then_removed_during_dispatch_never_runs():
    h = three_boxes()
    h.then["A"] = lambda: (h.add("new", 1), h.remove("new"))
    ts, frame, _ = packets()[0]
    assert h.feed(ts, frame) == ["A", "B", "C"]
    assert not any("new" in h.feed(ts, frame) for ts, frame, _ in packets()[1:])


def test_a_token_removes_its_own_registration_once():
    engine = aiomb.Engine()
    calls = []

    def f(view):
        calls.append("f")
    early = engine.add_handler(EventKind.PACKET_IN, f, hook=Hook.SENDER)
    engine.add_handler(EventKind.PACKET_IN, lambda view: calls.append("g"), hook=Hook.SENDER)
    late = engine.add_handler(EventKind.PACKET_IN, f, hook=Hook.SENDER)     # the same function, box and hook
    engine.remove_handler(late)
    with pytest.raises(ValueError, match="is not a registered handler"):
        engine.remove_handler(late)
    ts, frame, _ = packets()[0]
    engine.feed(frame, ts)
    assert calls == ["f", "g"]
    engine.remove_handler(early)


def test_a_handler_added_on_a_custom_event_during_its_base_dispatch_sees_that_occurrence():
    """The custom event's dispatch begins after its base's: a handler added to it meanwhile is called."""
    engine = aiomb.Engine()
    syn = aiomb.define_event(EventKind.CONN_START, lambda view: True, name="syn")
    calls = []

    def on_start(view):
        calls.append("start")
        engine.add_handler(syn, lambda view: calls.append("syn"))
        engine.remove_handler(token)
    token = engine.add_handler(EventKind.CONN_START, on_start)
    ts, frame, _ = packets()[0]
    engine.feed(frame, ts)
    assert calls == ["start", "syn"]


class Model:
    """The rule written plainly: a dispatch runs a copy of the chain taken when it begins, skipping
    the handlers removed meanwhile."""

    def __init__(self, rank):
        self.rank = rank
        self.chain = []

    def add(self, fn, middlebox):
        entry = [fn, middlebox, False]
        self.chain.append(entry)
        self.chain.sort(key=lambda e: self.rank[e[1]])
        return entry

    def remove(self, entry):
        entry[2] = True
        self.chain = [e for e in self.chain if e is not entry]

    def feed(self, side):
        for entry in (list(self.chain) if side == "client" else self.chain[::-1]):
            if not entry[2]:
                entry[0](None)


class Real:
    def __init__(self, engine):
        self.engine = engine

    def add(self, fn, middlebox):
        return self.engine.add_handler(EventKind.PACKET_IN, fn, middlebox=middlebox, hook=Hook.SENDER)

    def remove(self, token):
        self.engine.remove_handler(token)


def random_run(backend, boxes, frames, seed, feed):
    """Handlers that add and remove handlers at random while called; returns every call made."""
    rng = random.Random(seed)
    calls = []
    live = {}
    names = itertools.count()

    def new(middlebox):
        name = next(names)

        def handler(view):
            calls.append(name)
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                if live and (rng.random() < 0.5 or len(live) > 12):
                    backend.remove(live.pop(rng.choice(sorted(live))))
                else:
                    new(rng.choice(boxes))
        live[name] = backend.add(handler, middlebox)

    for ts, frame, side in frames:
        if not live:
            new(rng.choice(boxes))
        calls.append(("packet", side))
        feed(ts, frame, side)
    return calls


@pytest.mark.parametrize("seed", range(20))
def test_random_changes_from_handlers_follow_the_rule(seed):
    engine = aiomb.Engine()
    extra = [engine.add_middlebox() for _ in range(3)]
    engine.remove_middlebox(extra[0])
    boxes = [0] + extra[1:] + [engine.add_middlebox()]      # the index given again is last in the chain
    assert boxes[-1] == extra[0]
    rank = {mb: i for i, mb in enumerate(boxes)}
    frames = packets(n_data=300)
    real = random_run(Real(engine), boxes, frames, seed, lambda ts, frame, side: engine.feed(frame, ts))
    model = Model(rank)
    expected = random_run(model, boxes, frames, seed, lambda ts, frame, side: model.feed(side))
    assert real == expected
    assert sum(1 for c in real if not isinstance(c, tuple)) > len(frames)
