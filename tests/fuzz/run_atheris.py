"""Coverage-guided fuzzing of one target (or all at once) with atheris.

Usage (repository root)::

    .venv/bin/python -m tests.fuzz.run_atheris TARGET [libFuzzer options] [corpus dirs]

``TARGET`` is a name from :data:`tests.fuzz.targets.TARGETS`, or ``all``:
one process whose first input byte picks the target (the short run of the
test suite uses it, to pay the import cost once). iotguard, dpkt and python-tuf
(with securesystemslib) are instrumented for coverage; an exception other than ``IotGuardError`` is a
crash, saved by libFuzzer under ``-artifact_prefix``.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["iotguard", "dpkt", "tuf", "securesystemslib", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS, run_one

#: ``all`` runs every target but those named in ``IOTGUARD_FUZZ_SKIP`` (comma-separated).
NAMES = sorted(set(TARGETS) - set(os.environ.get("IOTGUARD_FUZZ_SKIP", "").split(",")))


def _all(data: bytes) -> None:
    if data:
        run_one(NAMES[data[0] % len(NAMES)], data[1:])


def main() -> None:
    """Run libFuzzer on the target named in ``argv[1]``."""
    if len(sys.argv) < 2 or (sys.argv[1] != "all" and sys.argv[1] not in TARGETS):
        sys.exit(f"usage: run_atheris TARGET [libFuzzer args]; TARGET one of: all {' '.join(NAMES)}")
    name = sys.argv.pop(1)

    def one(data: bytes) -> None:
        run_one(name, data)

    atheris.Setup(sys.argv, _all if name == "all" else one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
