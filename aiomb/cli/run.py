"""``aiomb run APP.py``: a middlebox module on a capture or a live port.

Layer: cli (top). A stack program (setup/run) runs under Trio; a synchronous one (main(source))
runs as it is. SIGINT, SIGTERM and SIGHUP end a run cleanly (a live port is detached, the app's
``finally`` blocks run) with exit status 128 + the signal's number: on SIGTERM or SIGHUP a stack
program on a live port or a pipe first ends its input (every open flow ends: as at the end of a
capture on a port, ``interrupted`` on a pipe; a second signal cancels), on a capture file it is
cancelled, as on SIGINT; a synchronous program gets KeyboardInterrupt. The module is imported
once, before anything starts (with ``--workers N``, the workers run the module imported then); one
that cannot run is reported once (:func:`load_app`).
"""

import importlib.util
import io
import os
import signal
import sys
import threading
import traceback

from .._errors import CaptureError, PortError
from .._workers import DamagedElsewhere, become_worker, end_with_parent, finish_share, leave, worker_source
from ..flows._types import EndReason
from ..io._capture import capture
from ._common import (
    AppError,
    UsageError,
    add_port_options,
    check_capture,
    check_live_only,
    check_workers,
    live_port,
    parse_prefilter,
    sole,
)


def load_app(path: str, argv=()):
    """Import a middlebox module from a file path (its folder first on sys.path and ``sys.argv``
    its path and ``argv``, as for a script: the app reads its own options, e.g. with argparse):
    it defines setup(stack) and/or async run(stack) (a stack program), or main(source) (a
    synchronous program, e.g. an epoll loop). Raises UsageError for a missing file, a syntax
    error (with its place) or no entry point, AppError for an exception its import-time code
    raised (with the traceback from the module's code down)."""
    if not os.path.isfile(path):
        raise UsageError(f"middlebox module not found: {path}")
    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(
        "aiomb_app_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    try:
        code = compile(spec.loader.get_data(path), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise UsageError(f"the middlebox module {path} has a syntax error:\n"
                         + "".join(traceback.format_exception_only(exc)).rstrip()) from None
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:     # from the module's code down
            tb = tb.tb_next
        raise AppError(f"the middlebox module {path} raised {type(exc).__name__} as it was imported:\n"
                       + "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()) from None
    kinds = [name for name in ("setup", "run", "main") if callable(getattr(module, name, None))]
    if not kinds:
        raise UsageError(f"{path} defines none of setup(stack), async run(stack) or main(source); "
                         "define one (see README)")
    if "main" in kinds and len(kinds) > 1:
        raise UsageError(f"{path} defines main(source) and a stack's setup/run: define one kind of program")
    return module


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)     # SIGINT: Trio's KeyboardInterrupt


async def run_app(module, source, *, duration: float | None = None, **engine_options) -> int | None:
    """Run a middlebox module on a source until the source ends and the app returns.

    A live source runs until interrupted (Ctrl-C), or for ``duration`` seconds. Returns the
    number of the signal (SIGTERM, SIGHUP) that ended the run, else None.
    """
    import trio

    from .._stack import open_stack

    caught = []
    async with open_stack(source, **engine_options) as stack:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(stack)
        run = getattr(module, "run", None)
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals, trio.CancelScope() as outer:

            async def watch_signals():
                async for signum in signals:
                    caught.append(signum)
                    if (getattr(source, "live", False) or getattr(source, "pipe", False)) and len(caught) == 1:
                        source.stop()           # every open flow ends; the app sees the ends
                    else:
                        outer.cancel()

            async with trio.open_nursery() as watcher:   # watching until the app returns
                watcher.start_soon(watch_signals)
                async with trio.open_nursery() as nursery:
                    timer = trio.CancelScope()
                    if duration is not None:
                        async def stop_later():
                            with timer:
                                await stop_after(source, duration)
                        nursery.start_soon(stop_later)
                    if run is not None:
                        nursery.start_soon(run, stack)
                    await stack.run()
                    timer.cancel()
                watcher.cancel_scope.cancel()
    return caught[0] if caught else None


def cmd_run(args) -> int:
    if (args.pcap is None) == (args.iface is None):
        raise UsageError("give one source: --pcap CAPTURE or --iface IF")
    check_live_only(args)
    if args.pcap is not None:
        args.pcap = check_capture(args.pcap)
    check_workers(args.workers)
    if args.workers > 1 and args.iface is not None and args.queues:
        raise UsageError("--workers on a live port takes every queue (the steering program runs on "
                         "each): drop --queues (or --workers)")
    # once, here: with --workers, before the workers are forked (they run the module imported here)
    module = load_app(args.app, args.app_args)
    if args.workers > 1:
        if args.iface is not None:
            return run_port_workers(args, module)
        return run_workers(args, module)
    return run_one(args, module)


def fork_workers(args, module, become, source=None) -> list:
    """Fork ``args.workers`` processes, each ``become(index)``, then running the app's
    ``module`` (on ``source(index)`` if given); returns their pids. A worker is sent SIGTERM if this process
    dies (its app ends as on a SIGTERM passed on; a live worker then stops the steering and
    deletes its veth pairs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pids = []
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                end_with_parent(parent)
                become(index)
                # whole lines, one write each (even under python -u): the workers share the output
                sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "w", closefd=False)),
                                              encoding=sys.stdout.encoding, errors=sys.stdout.errors,
                                              line_buffering=True)
                status = run_one(args, module, source(index) if source is not None else None)
                if status == 0:
                    finish_share()      # the app may have stopped reading before the end: the others go on
            except UsageError as exc:
                print(f"aiomb: error: {exc}", file=sys.stderr)
                status = 2
            except KeyboardInterrupt:                           # Ctrl-C passed on: as aiomb's own
                status = 130
            except BaseException:                               # a worker's failure is its own
                traceback.print_exc()
            finally:
                try:
                    leave()
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(status)
        pids.append(pid)
    return pids


def forwarder(pids):
    """A signal handler passing the signal on to the workers."""
    def forward(signum, frame) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    return forward


def wait_workers(pids, on_failure) -> list:
    """Wait for every worker; ``on_failure()`` once one exits with a status other than 0.
    Returns their exit statuses (128 + N for a signal N)."""
    statuses = []
    for pid in pids:
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        if statuses[-1]:
            on_failure()
    return [s if s >= 0 else 128 - s for s in statuses]


def run_port_workers(args, module) -> int:
    """Run the app in ``args.workers`` processes on a live port, each on the frames aiomb's
    steering program sends it (its own veth pair and port; inline, two joined); the steering
    starts once every worker's port is open and stops when they are all done. Signals are
    passed on to them."""
    from .._live_workers import READY_TIMEOUT
    from ..io._fanout import Fanout

    if os.geteuid() != 0:
        raise UsageError("live ports (--iface) need root (AF_XDP sockets and XDP programs)")
    fan = Fanout(args.iface, args.workers, inline=args.inline, mode=args.mode, netns=args.netns, force=args.force,
                 prefilter=parse_prefilter(args))
    try:
        fan.open()
    except PortError as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 1
    try:
        pids = fork_workers(args, module, lambda index: become_worker(index, args.workers, steered=fan),
                            fan.worker_port)
        forward = forwarder(pids)
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, *STOP_SIGNALS)}
        try:
            if not fan.attach_when_ready(
                    lambda: any(os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) for pid in pids),
                    READY_TIMEOUT):
                forward(signal.SIGTERM, None)
            statuses = wait_workers(pids, fan.detach)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    finally:
        fan.close()
    failed = [s for s in statuses if s]
    return failed[0] if failed else 0


def run_workers(args, module) -> int:
    """Fork ``args.workers`` processes, each running the app on its shard of the capture
    (``aiomb.worker()``), handed to them through a ShardRing, which they fill themselves from a
    classic pcap file (else a reader process, forked first, does). SIGINT, SIGTERM and SIGHUP
    are passed on to the workers (their apps are cancelled), except a first SIGTERM or SIGHUP on
    a pipe, which ends the input: as with one engine, the apps see their open flows end
    ``interrupted``. The exit status is the first worker's that is not 0, else 1 for a damaged
    capture, else 128 + the signal, else 0."""
    import multiprocessing

    from .._records import CAPTURE_BLOCK
    from .._workers import child_of, fork_stoppable, reader_main, ring_damage, ring_for, stop_reader

    try:
        source = capture(args.pcap, chunk_size=CAPTURE_BLOCK)
        source.open()                   # a damaged header fails here, once
    except CaptureError as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    reader = None
    ring = ring_for(source, args.workers, batch_size=2048, vlan_in_key=args.vlan)
    if not ring.workers_reading:
        news, mine = multiprocessing.Pipe(duplex=False)
        reader = multiprocessing.get_context("fork").Process(
            target=child_of, args=(os.getpid(), reader_main, mine, ring, source, 2048), name="aiomb-reader",
            daemon=True)
        fork_stoppable(reader.start)
        mine.close()
    source.close()                      # the workers and the reader have their own
    pids = fork_workers(args, module, lambda index: become_worker(index, args.workers, ring))
    forward = forwarder(pids)
    caught = []

    def on_signal(signum, frame) -> None:
        caught.append(signum)
        if source.pipe and signum in STOP_SIGNALS and len(caught) == 1:
            stop_reader(ring, reader and reader.pid, int(EndReason.INTERRUPTED))
        else:
            forward(signum, frame)      # the reader is stopped once the workers are gone

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        # a failed worker's share is no one's: the reader and the others must not wait for it (after
        # a signal passed on, each worker ends on its own, and an abort would be a second error)
        statuses = wait_workers(pids, lambda: None if caught else ring.abort())
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        ring.abort()                    # every worker is gone: a reader leaves
        if reader is not None:
            stop_reader(ring, reader.pid, int(EndReason.INTERRUPTED))  # even from a quiet pipe
            reader.join()
    failed = [s for s in statuses if s]
    reader_failed = False
    while reader is not None and news.poll():
        try:
            msg = news.recv()
        except EOFError:                # the reader said all it had to say
            break
        if msg[0] == "failed":
            print(f"aiomb: error: the reader failed:\n{msg[1]}", file=sys.stderr)
            reader_failed = True
    damaged = ring_damage(ring, args.pcap)
    if damaged is not None:
        print(f"aiomb: error: {damaged}", file=sys.stderr)
    if failed or damaged is not None or reader_failed:
        return failed[0] if failed else 1
    return 128 + caught[0] if caught else 0


def run_one(args, module, source=None) -> int:
    """Run the app's ``module`` in this process (one worker, or the whole capture or port) on
    ``source``, by default the one the arguments name."""
    if source is None and args.iface is not None:
        source = live_port(args, inline=args.inline)
    elif source is None:
        source = worker_source(args.pcap) or capture(args.pcap)
    try:
        if hasattr(module, "main"):
            return run_main(module.main, source, args.duration)
        import trio

        try:
            signum = trio.run(lambda: run_app(module, source, duration=args.duration, midstream=args.midstream,
                                              vlan_in_key=args.vlan))
        except BaseExceptionGroup as group:
            raise sole(group) from None
        if signum is not None:
            return 128 + signum
    except DamagedElsewhere:
        return 1                        # the reader says where
    except (CaptureError, PortError) as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_main(main, source, duration: float | None) -> int:
    """A synchronous program: ``main(source)``, no Trio; a live port is stopped after ``duration``.
    SIGTERM and SIGHUP raise KeyboardInterrupt in it (as Ctrl-C does); returns the exit status."""
    caught = []

    def interrupt(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt

    stopper = None
    if duration is not None:
        stopper = threading.Timer(duration, source.stop)
        stopper.daemon = True
        stopper.start()
    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS}
    try:
        main(source)
    except KeyboardInterrupt:
        if not caught:
            raise
        return 128 + caught[0]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if stopper is not None:
            stopper.cancel()
    return 0


async def stop_after(source, seconds: float) -> None:
    """End a live port's input after ``seconds`` (the stack then ends every open flow)."""
    import trio

    await trio.sleep(seconds)
    source.stop()


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run a middlebox module (APP.py) on a capture or a live port")
    r.add_argument("app", help="a Python file defining setup(stack) and/or async run(stack)")
    r.add_argument("--pcap", metavar="CAPTURE", help="replay this capture (- for standard input)")
    add_port_options(r, inline=True)
    r.add_argument("--duration", metavar="SECONDS", type=float,
                   help="with --iface: stop after this long (default: run until Ctrl-C)")
    r.add_argument("--midstream", action="store_true", help="pick up flows without a handshake")
    r.add_argument("--vlan", action="store_true", help="make VLAN tags part of the flow key")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the app in N processes, each on the flows that hash to it (a capture, or a live "
                        "port through aiomb's steering program, passive or --inline); aiomb.worker() tells each "
                        "which it is")
    r.set_defaults(func=cmd_run)
