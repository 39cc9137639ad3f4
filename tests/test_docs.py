"""The documentation the code points to: every ``BEHAVIOUR.md §N.M`` cited exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CITATION = re.compile(r"BEHAVIOUR\.md ((?:§[0-9]+(?:\.[0-9]+)?(?:, |-)?)+)")
_SECTION = re.compile(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", re.MULTILINE)


def _sections() -> set[str]:
    text = (ROOT / "docs" / "BEHAVIOUR.md").read_text(encoding="utf-8")
    return set(_SECTION.findall(text))


def test_behaviour_sections_cited_in_the_code_exist() -> None:
    sections = _sections()
    assert {"2.1", "3.5", "4.2", "8.1"} <= sections
    cited: dict[str, set[str]] = {}
    for folder in ("libmsilo", "tests", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in _CITATION.finditer(path.read_text(encoding="utf-8")):
                for number in re.findall(r"§([0-9]+(?:\.[0-9]+)?)", match.group(1)):
                    cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert len(cited) >= 10
    missing = {n: sorted(paths) for n, paths in cited.items() if n not in sections}
    assert not missing, f"cited but not in docs/BEHAVIOUR.md: {missing}"


def test_no_comment_points_into_the_msilo_reference_outside_the_repository() -> None:
    marks = re.compile(r"\[§[0-9]|reference §[0-9]|SPEC §[0-9]")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("libmsilo", "tests", "examples")
        for path in (ROOT / folder).rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if marks.search(line)
    ]
    assert not found, found
