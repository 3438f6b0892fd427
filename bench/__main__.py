"""Run the benchmarks: `python -m bench [name ...]` (default: all)."""

from __future__ import annotations

import logging
import sys

from bench import (
    cog_model,
    generation,
    http_api,
    peer,
    processes,
    rebuild,
    scale,
    webhooks,
    writes,
)
from bench.report import Report

SUITES = {
    "writes": writes.run,
    "rebuild": rebuild.run,
    "generation": generation.run,
    "cog": cog_model.run,
    "webhooks": webhooks.run,
    "http": http_api.run,
    "processes": processes.run,
    "scale": scale.run,
    "peer": peer.run,
}


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
    if set(names) == set(SUITES):
        report.write("vidledger benchmark results")
    else:
        print(report.table())
        print("\n(a partial run: bench/RESULTS.md is written only by the full `make bench`)")
    for failure in report.failures:
        print(f"FAILED: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
