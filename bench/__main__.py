"""Run the benchmarks: `python -m bench [name ...]` (default: all)."""

from __future__ import annotations

import logging
import sys

from bench import generation, rebuild
from bench.report import Report

SUITES = {"generation": generation.run, "rebuild": rebuild.run}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    names = argv or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(SUITES)}")
        return 2
    report = Report()
    for name in names:
        SUITES[name](report)
    report.write("vidledger benchmark results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
