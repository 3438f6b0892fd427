"""A results table: printed, and written to bench/RESULTS.md."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def in_turn(n: int, sides: Sequence[T]) -> Sequence[T]:
    """The sides of round `n` (from 1) in the order they run, swapped every
    other round (A B, B A, A B): with one order throughout, a machine that
    slows over a run would always land on the side that goes second."""
    return sides if n % 2 else sides[::-1]


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Row:
    figure: str
    project: str
    baseline: str
    ratio: str
    target: str = "reported"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What must not happen (a sequential scan at scale): `make bench` fails.
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"  FAILED: {message}", flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.figure}: {row.project} | baseline {row.baseline} | ratio {row.ratio}",
            flush=True,
        )

    def table(self) -> str:
        lines = [
            "| figure | project | baseline (same run) | ratio | target |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.figure} | {r.project} | {r.baseline} | {r.ratio} | {r.target} |"
            for r in self.rows
        ]
        return "\n".join(lines)

    def write(self, title: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        body = [
            f"# {title}",
            "",
            f"Run {stamp} on {platform.node()} ({platform.machine()}, "
            f"Python {platform.python_version()}).",
            "Regenerate with `make bench`.",
            "",
            self.table(),
            "",
        ]
        body += [f"- {n}" for n in self.notes]
        body += [f"- **FAILED**: {f}" for f in self.failures]
        RESULTS.write_text("\n".join(body) + "\n")
        print()
        print(self.table())
        print(f"\nwritten to {RESULTS}")
