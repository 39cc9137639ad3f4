"""The README tour (examples/quickstart.py) runs and sends what the README says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from libmsilo import MessageKind

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sent = module.main(f"sqlite:///{tmp_path / 'tour.db'}")
    assert [m.kind for m in sent] == [MessageKind.NOTICE, MessageKind.DUMP, MessageKind.REMINDER]
    notice, dumped, reminder = sent
    assert notice.ruri == "sip:bob@192.0.2.4:5060"
    assert dumped.ruri == "sip:alice@192.0.2.7:5060"
    assert dumped.body.endswith(b"] Watson, come here.")
    assert reminder.body.startswith(b"[Reminder message - ")


def test_the_readme_demo_command_runs() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "libmsilo", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "MESSAGE sip:alice@" in done.stdout
