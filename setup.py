"""Build the aiomb._core extension (metadata lives in setup.cfg and pyproject.toml).

``AIOMB_DEBUG_BUILD=1 pip install -e .`` builds for development: -O0 -g (a quicker compile,
debuggable) and Cython's annotated HTML of the core (aiomb/_core.html: per-line Python
interaction, to keep the packet path free of it). The default is the -O3 release build.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("AIOMB_DEBUG_BUILD", "") not in ("", "0")

setup(
    ext_modules=cythonize(
        [Extension("aiomb._core", ["aiomb/_core.pyx"],
                   extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"])],
        compiler_directives={"language_level": "3"},
        annotate=DEBUG,
        force=DEBUG,
    )
)
