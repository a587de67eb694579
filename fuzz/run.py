"""Run the fuzz targets with libFuzzer (atheris), each for a bounded time; exit 1 on a crash.

    python -m fuzz.run [TARGET ...] [--seconds N] [-- LIBFUZZER-OPTIONS]

Each target's corpus is ``fuzz/corpus/TARGET`` (seeded from tests/corpus/data when empty, and
grown by every run), a crash is written to ``fuzz/crashes/TARGET/`` (``crash-<sha1>``: replay
it with ``python -m fuzz.TARGET fuzz/crashes/TARGET/crash-...``). The aiomb imported is the one
on ``sys.path`` (``PYTHONPATH``): under AddressSanitizer, run this with the sanitized build
and the sanitizer runtime preloaded (README, "Fuzzing").
"""

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from fuzz import seeds

HERE = Path(__file__).resolve().parent
TARGETS = {
    "capture_reader": seeds.capture_seeds,
    "frame_parser": seeds.frame_seeds,
    "reassembly": seeds.reassembly_seeds,
}


def seed(target: str, corpus: Path) -> int:
    """Write the target's seeds into an empty corpus directory; returns how many it holds."""
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for data in TARGETS[target]():
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return sum(1 for _ in corpus.iterdir())


def run(target: str, seconds: int, extra: list[str]) -> int:
    corpus = HERE / "corpus" / target
    crashes = HERE / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    n = seed(target, corpus)
    print(f"fuzz: {target} for {seconds} s from {n} inputs in {corpus}", flush=True)
    cmd = [sys.executable, "-m", f"fuzz.{target}", str(corpus), f"-max_total_time={seconds}",
           f"-artifact_prefix={crashes}/", "-timeout=20", "-rss_limit_mb=2048", "-print_final_stats=1", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    return subprocess.run(cmd, env=env, cwd=HERE.parent).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: libFuzzer options")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    failed = [t for t in args.targets or TARGETS if run(t, args.seconds, extra) != 0]
    if failed:
        print(f"fuzz: {', '.join(failed)} failed: see fuzz/crashes/", file=sys.stderr)
        return 1
    print(f"fuzz: {len(args.targets or TARGETS)} targets ran without a crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
