"""atheris (libFuzzer) harness for libmsilo's parsers.

Usage::

    pip install atheris            # or: pip install -e '.[dev]'
    cp -r fuzz/corpus/sip /tmp/sip  # libFuzzer adds what it finds to the first directory
    python fuzz/fuzz_msilo.py sip /tmp/sip -max_total_time=300
    python fuzz/fuzz_msilo.py store /tmp/sip -max_total_time=300
    python fuzz/fuzz_msilo.py uri <copy of fuzz/corpus/uri> -max_total_time=300
    python fuzz/fuzz_msilo.py template <copy of fuzz/corpus/template> -max_total_time=300

The first argument names the target in ``fuzz/targets.py``; the rest go to libFuzzer (corpus
directories, ``-max_total_time``, ``-runs``, ...). A crash leaves ``crash-<sha1>`` with the
input: add it to ``REGRESSIONS`` in ``tests/test_fuzz.py``. ``fuzz/corpus/`` holds only the
hand-written seeds (CI runs them through the targets).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # ships no type information

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["libmsilo", "targets"]):
    import targets

TARGETS: dict[str, Callable[[bytes], None]] = {
    "sip": targets.sip_request,
    "store": targets.store_and_dump,
    "uri": targets.uri,
    "template": targets.template,
}


def main() -> None:
    """Run the target named by the first argument under libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
