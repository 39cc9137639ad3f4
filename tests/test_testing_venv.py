"""Done means: the plugin loads from an installed libmsilo in a fresh virtual environment.

libmsilo is built from this checkout and installed (not editable) into a new venv; its
dependencies are linked in from this interpreter without libmsilo's own metadata, so the
``pytest11`` entry point can only come from the installed copy. A test file in a directory with
no conftest then uses the plugin's fixtures, marker and options.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import Distribution, distribution
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("pytest", "pydantic", "pydantic-settings", "sqlalchemy", "tzdata")

TINY_TEST = """
import sys

import pytest

import libmsilo
from libmsilo.testing import assert_notice, assert_stored, sip


@pytest.mark.msilo(max_messages=1, from_address="sip:registrar@example.com",
                   offline_message="$rU is offline", content_type_hdr="Content-Type: text/plain")
def test_first_policy(msilo, msilo_phone):
    first = msilo.store(sip.message("sip:bob@example.org", "sip:alice@example.com", "one"))
    assert_notice(first, to="sip:bob@example.org", contains="alice is offline")
    assert not msilo.store(sip.message("sip:bob@example.org", "sip:alice@example.com", "2")).stored
    assert_stored(msilo, "sip:alice@example.com", count=1, body="one")
    assert len(msilo_phone("sip:alice@example.com").deliver_all()) == 1


def test_the_plugin_comes_from_this_venv(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("msilo")
    assert plugin is not None and plugin.__file__.startswith(sys.prefix)
    assert libmsilo.__file__.startswith(sys.prefix)
"""


def dependency_closure(names: tuple[str, ...]) -> list[Distribution]:
    """The installed distributions ``names`` need, themselves included (markers evaluated)."""
    found: dict[str, Distribution] = {}
    todo = list(names)
    while todo:
        dist = distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def link_distributions(dists: list[Distribution], target: Path) -> None:
    """Symlink the top-level files and folders of ``dists`` into ``target``."""
    target.mkdir()
    for dist in dists:
        assert dist.files is not None, f"{dist.metadata['Name']} lists no files"
        tops = {PurePosixPath(f).parts[0] for f in dist.files}
        for top in tops - {"..", "__pycache__"}:
            link = target / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))).resolve())


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "MSILO"))}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_plugin_loads_from_an_installed_libmsilo_in_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: the build writes egg-info and build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "libmsilo", source / "libmsilo", ignore=shutil.ignore_patterns("__pycache__")
    )

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", source)
    deps = tmp_path / "deps"
    link_distributions(dependency_closure(NEEDED), deps)
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    (site / "libmsilo-test-deps.pth").write_text(f"{deps}\n")

    project = tmp_path / "project"  # no conftest.py, no ini file above it
    project.mkdir()
    (project / "test_policy.py").write_text(TINY_TEST)
    done = run(
        python, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", "-v", cwd=project
    )
    assert "test_first_policy PASSED" in done.stdout
    assert "test_the_plugin_comes_from_this_venv PASSED" in done.stdout
    assert "2 passed" in done.stdout
    help_text = run(python, "-m", "pytest", "--help", cwd=project).stdout
    assert "--msilo-backend=URL" in help_text and "--msilo-update-snapshots" in help_text
    assert not list(project.glob("conftest.py"))
