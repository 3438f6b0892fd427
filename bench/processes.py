"""`vidledger serve --workers 2` next to `--workers 1`: status reads at 64
connections under wrk, the two alternating, on PostgreSQL. Reported, no
target: how much a second API process buys on this machine (2 cores, with
PostgreSQL and wrk on the same cores)."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import AbstractContextManager

from bench import dataset, wrk
from bench.http_api import IMAGES, PROBE, SECONDS, WARMUP_SECONDS
from bench.pg import scratch_database
from bench.report import Report, Row
from bench.servers import _free_port, running
from bench.wrk import Load

CONNECTIONS = 64
ROUNDS = 2


def _serve(url: str, workers: int) -> AbstractContextManager[str]:
    """`vidledger serve --no-worker --workers N` on a port of its own."""
    port = _free_port()
    env = {
        **os.environ,
        "VIDLEDGER_DATABASE_URL": url,
        "VIDLEDGER_VIDEOS_DIR": os.path.join(tempfile.gettempdir(), "vidledger-bench-videos"),
        "VIDLEDGER_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    what = f"serve --workers {workers}"
    return running(cmd, env, port, PROBE, what, start_seconds=60, stop_seconds=60)


def _reads(base: str) -> Load:
    def load(seconds: float) -> Load:
        return wrk.run(
            base, "get_status.lua", [str(IMAGES)], connections=CONNECTIONS, seconds=seconds
        )

    load(WARMUP_SECONDS)  # every process's pool filled, caches warm
    return load(SECONDS)


def run(report: Report) -> None:
    if not wrk.available():
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    print(f"serve --workers 2 vs --workers 1: GET at {CONNECTIONS} connections", flush=True)
    from app import bootstrap
    from app.db.engine import open_database

    with scratch_database() as url:
        bootstrap.upgrade(url)
        db = open_database(url, pool_size=2)
        try:
            dataset.load(db, 1, IMAGES + 1)
        finally:
            db.dispose()
        ones, twos = [], []
        for n in range(1, ROUNDS + 1):
            for workers, runs in ((1, ones), (2, twos)):
                with _serve(url, workers) as base:
                    runs.append(_reads(base))
                print(f"  round {n}, --workers {workers}: {runs[-1].describe()}", flush=True)
    one, two = Load.mean(ones), Load.mean(twos)
    report.add(
        Row(
            f"serve --workers 2, HTTP GET /v1/videos/{{img}}, {CONNECTIONS} connections",
            two.describe(),
            f"serve --workers 1: {one.describe()}",
            f"{two.rps / one.rps:.2f}x",
            "reported",
        )
    )
