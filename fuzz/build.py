"""Build aiomb for fuzzing into build/fuzz: the core compiled by clang with libFuzzer's coverage
instrumentation, AddressSanitizer and UBSan, beside a copy of the Python package.

    python -m fuzz.build            # then: python -m fuzz.run --sanitized

The work tree's own build (``pip install -e .``) is left alone. Needs clang (Debian: ``clang``)
and atheris built against it (``pip install --no-binary atheris atheris``), whose
``asan_with_fuzzer.so`` is the runtime :func:`sanitized_env` preloads.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "fuzz"
SANITIZE = "address,undefined,fuzzer"


def runtime() -> Path:
    """atheris's ASan runtime with libFuzzer linked in (UBSan's handlers are part of it)."""
    import atheris

    path = Path(atheris.path()) / "asan_with_fuzzer.so"
    if not path.exists():
        raise SystemExit(f"{path} is missing: atheris was installed from a wheel; rebuild it with clang: "
                         "CLANG_BIN=$(command -v clang) pip install --no-binary atheris --force-reinstall atheris")
    return path


def sanitized_env(env=None) -> dict:
    """The environment to run Python with the sanitized build: its runtime preloaded, CPython's
    own allocations left to the system (its leaks and pymalloc pools are not our bugs). Run
    Python in BUILD: ``python -m`` puts the working directory first on sys.path."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = str(runtime())
    env["PYTHONMALLOC"] = "malloc"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BUILD), str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:allocator_may_return_null=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


def build() -> Path:
    if shutil.which("clang") is None:
        raise SystemExit("clang is needed for the fuzzing build (Debian: apt-get install clang)")
    runtime()
    shutil.rmtree(BUILD / "aiomb", ignore_errors=True)
    shutil.copytree(ROOT / "aiomb", BUILD / "aiomb", ignore=shutil.ignore_patterns("*.so", "*.c", "*.html",
                                                                                    "__pycache__"))
    env = dict(os.environ, AIOMB_SANITIZE=SANITIZE, CC="clang", LDSHARED="clang -shared")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(BUILD),
                    "--build-temp", str(BUILD / "tmp")], cwd=ROOT, env=env, check=True)
    return BUILD


if __name__ == "__main__":
    print(f"fuzz: sanitized build in {build()}")
