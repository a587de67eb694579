"""Coverage-guided fuzz targets (atheris): ``python -m fuzz.run``; see README, "Fuzzing"."""

import sys


def fuzz_main(test_one_input) -> None:
    """A target's entry point: libFuzzer (atheris) drives ``test_one_input`` with ``sys.argv``'s
    corpus and options, saying which build of the core it runs on."""
    import atheris

    import aiomb

    print(f"fuzz: {test_one_input.__module__} on {aiomb._core.__file__}", flush=True)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
