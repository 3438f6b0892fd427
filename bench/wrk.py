"""Drive wrk (HTTP load over loopback) and read its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int

    @classmethod
    def mean(cls, loads: list[Load]) -> Load:
        """The mean of several runs of the same load."""
        n = len(loads)
        return cls(
            rps=sum(x.rps for x in loads) / n,
            p50_ms=sum(x.p50_ms for x in loads) / n,
            p99_ms=sum(x.p99_ms for x in loads) / n,
            requests=sum(x.requests for x in loads),
        )

    def describe(self) -> str:
        return f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse(output: str) -> Load:
    """Requests/s and latency percentiles from `wrk --latency` output.

    Raises if any request failed: a fast error is not a fast answer.
    """
    errors = re.search(r"Socket errors: (.*)", output)
    if errors:
        raise RuntimeError(f"wrk socket errors ({errors.group(1)}):\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise RuntimeError(f"{bad.group(1)} requests failed:\n{output}")
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    return Load(
        rps=float(rps.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=int(total.group(1)),
    )


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    script: str,
    args: list[str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    threads: int = 2,
) -> Load:
    """`wrk --latency` against `url` with `bench/lua/<script>` and its args."""
    cmd = [
        "wrk",
        "--latency",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / script),
    ]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd += [url, "--", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return parse(done.stdout)
