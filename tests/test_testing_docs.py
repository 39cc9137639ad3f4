"""The test files of docs/testing-policies.md pass as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing-policies.md"
BLOCK = re.compile(r"```python\n# (test_\w+\.py)\n(.*?)```", re.DOTALL)


def doc_test_files() -> dict[str, str]:
    files = dict(BLOCK.findall(DOC.read_text()))
    assert len(files) >= 6, sorted(files)
    return files


def test_the_tutorials_test_files_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = doc_test_files()
    pytester.makepyfile(**{name.removesuffix(".py"): code for name, code in files.items()})
    monkeypatch.setenv("MSILO_TEST_BACKEND", "mongomock://")
    written = pytester.runpytest("--strict-markers", "--msilo-update-snapshots")
    written.assert_outcomes(passed=len(files) + 1)  # test_every_store runs on memory and mongomock
    assert (
        pytester.path / "snapshots" / "test_snapshot" / "test_the_dump_on_the_wire.sip"
    ).exists()
    pytester.runpytest("--strict-markers").assert_outcomes(passed=len(files) + 1)
