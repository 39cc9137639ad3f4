"""The storage benchmark: libmsilo against hand-written code on the bare clients, same run.

A thin wrapper of ``msilo bench`` (the code lives in :mod:`libmsilo.bench`, so the installed
command works too); every option of ``msilo bench --help`` is accepted, e.g.::

    python benchmarks/storage.py \\
        --db-url sqlite:////tmp/bench.db \\
        --db-url postgresql+psycopg://root@127.0.0.1:5432/test \\
        --db-url mysql+pymysql://root@127.0.0.1:3306/test \\
        --db-url redis://127.0.0.1:6379/14 \\
        --scale 10000 --scale 1000000 --json results.json --plot results.png

Results and the machine they came from are recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import sys

from libmsilo.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="storage.py")
