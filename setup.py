"""Build the aiomb._core extension (metadata lives in setup.cfg and pyproject.toml).

``AIOMB_DEBUG_BUILD=1 pip install -e .`` builds for development: -O0 -g (a quicker compile,
debuggable) and Cython's annotated HTML of the core (aiomb/_core.html: per-line Python
interaction, to keep the packet path free of it). The default is the -O3 release build.

``AIOMB_SANITIZE=address,undefined`` compiles and links the core with those sanitizers (-O1 -g,
frame pointers kept, every UBSan finding fatal); ``fuzzer`` in the list adds libFuzzer's coverage
instrumentation (-fsanitize=fuzzer-no-link, clang only: ``CC=clang LDSHARED="clang -shared"``).
Python must then run with the sanitizer runtime preloaded: README, "Fuzzing".

An optimization level in ``CFLAGS`` (``-O2``, ``-Og``, ...) takes precedence over these defaults.
"""

import os
import re

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("AIOMB_DEBUG_BUILD", "") not in ("", "0")
SANITIZE = [s for s in os.environ.get("AIOMB_SANITIZE", "").replace(" ", "").split(",") if s]
SANITIZERS = {"address", "undefined", "fuzzer"}

if set(SANITIZE) - SANITIZERS:
    raise SystemExit(f"AIOMB_SANITIZE: unknown sanitizer {', '.join(sorted(set(SANITIZE) - SANITIZERS))}; "
                     f"give a comma-separated list of {', '.join(sorted(SANITIZERS))}")


def build_flags() -> tuple[list[str], list[str]]:
    """(compile args, link args) of the extension."""
    compile_args, link_args = [], []
    if DEBUG:
        compile_args += ["-O0", "-g"]
    elif SANITIZE:
        compile_args += ["-O1", "-g"]
    else:
        compile_args += ["-O3"]
    if re.search(r"(^|\s)-O", os.environ.get("CFLAGS", "")):
        compile_args = [a for a in compile_args if not a.startswith("-O")]     # the user's level wins
    if SANITIZE:
        kinds = ",".join("fuzzer-no-link" if s == "fuzzer" else s for s in SANITIZE)
        compile_args += [f"-fsanitize={kinds}", "-fno-omit-frame-pointer"]
        if "undefined" in SANITIZE:
            compile_args.append("-fno-sanitize-recover=undefined")
        link_args.append(f"-fsanitize={kinds}")
    return compile_args, link_args


compile_args, link_args = build_flags()
setup(
    ext_modules=cythonize(
        [Extension("aiomb._core", ["aiomb/_core.pyx"], extra_compile_args=compile_args, extra_link_args=link_args)],
        compiler_directives={"language_level": "3"},
        annotate=DEBUG,
        force=DEBUG,
    )
)
