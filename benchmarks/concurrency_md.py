"""Rewrite the concurrency section of ``benchmarks/RESULTS.md`` (and redraw its chart) from the
JSON of an earlier ``msilo bench --concurrency N --json FILE`` run, e.g. after editing the
method text in :mod:`libmsilo.bench.concurrency_report`::

    python benchmarks/concurrency_md.py benchmarks/concurrency.json \\
        [--plot benchmarks/concurrency.png] [--results benchmarks/RESULTS.md]

``msilo bench --concurrency N --json ... --plot ... --results-md ...`` does both in the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from libmsilo.bench.concurrency import ConcurrencyReport
from libmsilo.bench.concurrency_report import write_png, write_results_md

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Read the JSON, redraw the chart if asked, rewrite the marked section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="the --json file of a --concurrency run")
    parser.add_argument(
        "--plot",
        type=Path,
        help="redraw the chart into this PNG (default: referenced if the "
        "JSON file's .png sibling exists)",
    )
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    report = ConcurrencyReport.from_dict(json.loads(args.json.read_text(encoding="utf-8")))
    chart = args.plot
    if chart is not None:
        write_png(report, chart)
    elif args.json.with_suffix(".png").exists():
        chart = args.json.with_suffix(".png")
    write_results_md(report, args.results, json_path=args.json, chart=chart)
    print(f"wrote the concurrency section of {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
