"""Run the fuzz targets with libFuzzer (atheris), each for a bounded time; exit 1 on a crash.

    python -m fuzz.run [TARGET ...] [--seconds N] [--sanitized] [-- LIBFUZZER-OPTIONS]

Each target's corpus is ``fuzz/corpus/TARGET`` (seeded from tests/corpus/data when empty, and
grown by every run), a crash is written to ``fuzz/crashes/TARGET/`` (``crash-<sha1>``: replay
it with ``python -m fuzz.TARGET fuzz/crashes/TARGET/crash-...``). Without ``--sanitized`` the
targets import the aiomb on ``sys.path``, whose core gives libFuzzer no coverage (it mutates the
corpus blind); with it they import the build of ``python -m fuzz.build`` (libFuzzer's coverage of
the core, AddressSanitizer, UBSan) with its runtime preloaded.
"""

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fuzz import build, reassembly, seeds

HERE = Path(__file__).resolve().parent
TARGETS = {
    "capture_reader": seeds.capture_seeds,
    "frame_parser": seeds.frame_seeds,
    "reassembly": seeds.reassembly_seeds,
}
OPTIONS = {         # libFuzzer's options per target: the largest inputs worth trying; reassembly inputs
    "capture_reader": ["-max_len=65536"],           # are small, so they may reach it from the start
    "frame_parser": ["-max_len=16384"],
    "reassembly": [f"-max_len={reassembly.HEADER + reassembly.STEP * reassembly.MAX_STEPS}", "-len_control=0"],
}


def seed(target: str, corpus: Path) -> int:
    """Write the target's seeds into an empty corpus directory; returns how many it holds."""
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for data in TARGETS[target]():
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return sum(1 for _ in corpus.iterdir())


def run(target: str, seconds: int, extra: list[str], sanitized: bool) -> int:
    corpus = HERE / "corpus" / target
    crashes = HERE / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    n = seed(target, corpus)
    print(f"fuzz: {target} for {seconds} s{' (sanitized)' if sanitized else ''} from {n} inputs in {corpus}",
          flush=True)
    cmd = [sys.executable, "-m", f"fuzz.{target}", str(corpus), f"-max_total_time={seconds}",
           f"-artifact_prefix={crashes}/", *OPTIONS[target], "-timeout=20", "-rss_limit_mb=2048",
           "-print_final_stats=1", *extra]
    if sanitized:
        env = build.sanitized_env()
    else:
        path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path)
    cwd = build.BUILD if sanitized else HERE.parent      # python -m puts it first on sys.path: its aiomb is imported
    return subprocess.run(cmd, env=env, cwd=cwd).returncode


def split_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this runner's arguments, libFuzzer's options after ``--``)."""
    if "--" not in argv:
        return argv, []
    return argv[:argv.index("--")], argv[argv.index("--") + 1:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    parser.add_argument("--sanitized", action="store_true",
                        help="use the build of python -m fuzz.build (coverage of the core, ASan, UBSan)")
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = split_options(argv)
    args = parser.parse_args(ours)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    targets = args.targets or list(TARGETS)
    failed = [t for t in targets if run(t, args.seconds, extra, args.sanitized) != 0]
    if failed:
        print(f"fuzz: {', '.join(failed)} failed: see fuzz/crashes/", file=sys.stderr)
    print(f"fuzz: {len(targets) - len(failed)} passed, {len(failed)} failed", flush=True)   # CI reads this line
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
