"""The ``aiomb`` command line: list the flows of a capture or a live interface, write a flow's
stream, run a middlebox module on either.

Layer: cli (top). ``aiomb flows CAPTURE`` / ``aiomb flows --iface IF --duration S`` prints one
record per flow (cli/flows.py); ``aiomb stream CAPTURE --flow N`` one side's bytes
(cli/stream.py); ``aiomb run APP.py --pcap CAPTURE`` / ``--iface IF [--inline IF2]`` runs a
user's middlebox module (cli/run.py; see README "Writing a middlebox").
"""

import argparse
import os
import signal
import sys

from .._records import FIELDS
from . import flows, run, stream
from ._common import AppError, UsageError, sole

__all__ = ["FIELDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiomb", description="Async middleboxes on a shared flow stack.")
    sub = p.add_subparsers(dest="command", required=True)
    flows.add_parser(sub)
    stream.add_parser(sub)
    run.add_parser(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the ``aiomb`` console script and ``python -m aiomb``. Arguments after a
    ``--`` belong to the middlebox of ``aiomb run`` (its ``sys.argv[1:]``); for the other
    commands ``--`` ends the options, as usual (``aiomb flows -- -name.pcap``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    # the command is the first word that is not an option (aiomb's own take no value)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "run" and "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.app_args = extra
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 2
    except AppError as exc:
        print(f"aiomb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if not isinstance(sole(exc), BrokenPipeError):
            raise
        # the reader went away (`aiomb ... | head`): end quietly, as a command killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
