"""Mixed commands from many clients, a SIGKILL and a restart: the history must hold.

See `history.py` for what is sent and what is checked. `make test` runs
about 20 s per database; `make soak SECONDS=600` runs the same test for as
long as asked (on PostgreSQL) and prints its counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db.engine import open_database
from app.db.tables import events
from tests.integration.history import Workload, check
from tests.integration.processes import Processes, cli_env

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("VIDLEDGER_HISTORY_SECONDS", "20"))
SEED = os.environ.get("VIDLEDGER_HISTORY_SEED")
#: Two generators: requests name one or neither, claims name one, both or none.
GENERATORS = '[generators.a]\nkind = "kenburns"\n[generators.b]\nkind = "kenburns"\n'


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    generators = tmp_path / "generators.toml"
    generators.write_text(GENERATORS)
    env = cli_env(
        db_url,
        tmp_path / "images",
        tmp_path / "videos",
        reap_interval_seconds="0.5",
        log_level="warning",
        generators_file=str(generators),
    )
    processes = Processes(tmp_path, env)
    yield processes
    processes.stop_all()


def _log(db_url: str) -> list[dict[str, Any]]:
    """The whole log, read straight from the database, shaped as the feed shapes it."""
    db = open_database(db_url, pool_size=1)
    try:
        with db.read() as conn:
            rows = conn.execute(select(events).order_by(events.c.position)).mappings().all()
    finally:
        db.dispose()
    return [
        {
            "event_id": str(r["event_id"]),
            "img_name": r["img_name"],
            "version": r["version"],
            "event_type": r["event_type"],
            "from_status": r["from_status"],
            "to_status": r["to_status"],
            "data": r["data"],
            "actor": r["actor"],
            "reason": r["reason"],
        }
        for r in rows
    ]


def test_a_mixed_history_with_a_kill_holds(procs: Processes, db_url: str, tmp_path: Path) -> None:
    server = procs.server("serve", worker=False)

    def restart() -> None:
        server.kill()
        server.start()
        server.wait_healthy()

    workload = Workload(
        server.url,
        seconds=SECONDS,
        restart=restart,
        seed=int(SEED) if SEED else None,
    )
    history = workload.run()
    log = _log(db_url)
    workload.drain(total=len(log))
    verify = subprocess.run(
        [sys.executable, "-m", "app.cli", "projections", "verify"],
        env=procs.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    problems = check(history, log)
    if verify.returncode != 0:
        problems.append(f"projections verify exited {verify.returncode}: {verify.stdout[-2000:]}")
    answered = [o for o in history.ops if o.status is not None]
    print(
        f"\nhistory ({db_url.split(':')[0]}, seed {workload.seed}): "
        f"operations {len(history.ops)}, answered {len(answered)}, "
        f"acknowledged writes {history.acknowledged_writes()}, events {len(log)}, "
        f"restarts {len(history.outages)}"
    )
    if problems:
        dumped = history.dump(tmp_path / "history.json", log, problems)
        shown = "\n".join(problems[:20])
        pytest.fail(
            f"{len(problems)} problems (seed {workload.seed}); history in {dumped}:\n{shown}"
        )
    # A history that exercised nothing proves nothing.
    assert history.acknowledged_writes() > 50, "too few writes to mean anything"
    kinds = {e["event_type"] for e in log}
    assert {"VideoRequested", "VideoProcessingStarted", "VideoCompleted"} <= kinds, kinds
