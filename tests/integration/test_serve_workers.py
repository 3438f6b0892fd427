"""`vidledger serve --workers 2`: two API processes on one port, the
background duties once, and SIGTERM (or the parent's death) ends them all.
On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import Processes, Server, cli_env, make_png, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = cli_env(db_url, tmp_path / "images", tmp_path / "videos", log_level="info")
    processes = Processes(tmp_path, env)
    yield processes
    processes.stop_all()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_api_processes_answer_everything_and_run_each_duty_once(
    procs: Processes, tmp_path: Path
) -> None:
    server = procs.server("api", workers=2)
    names = [f"img{i}.png" for i in range(4)]
    for name in names:
        make_png(tmp_path / "images", name)
        body = {
            "img_name": name,
            "source_type": "scene",
            "params": {"fps": 4, "duration_seconds": 0.5},
        }
        assert httpx.post(f"{server.url}/v1/videos", json=body).status_code == 202

    def status(name: str) -> str:
        return str(httpx.get(f"{server.url}/v1/videos/{name}").json()["video_status"])

    wait_for(lambda: all(status(n) == "completed" for n in names), 60, "every video made")
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda i: httpx.get(f"{server.url}/v1/videos/{names[i % 4]}").status_code,
                range(200),
            )
        )
    assert codes == [200] * 200

    log = server.output(tail=100_000)
    assert log.count("Started server process") == 2  # two API processes
    assert log.count("running the background duties") == 1  # the duties, once
    assert log.count("worker started") == 1
    events = httpx.get(f"{server.url}/v1/events", params={"limit": 100}).json()["items"]
    workers = {e["actor"] for e in events if e["event_type"] == "VideoProcessingStarted"}
    assert len(workers) == 1, workers  # one embedded worker made them all

    children = [pid for pid in _children(server.proc.pid) if _alive(pid)]
    assert len(children) >= 2
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(60)
    wait_for(lambda: not any(_alive(pid) for pid in children), 30, "every API process stopped")
    assert "worker stopped" in server.output(tail=100_000)


def test_api_processes_do_not_outlive_a_killed_parent(procs: Processes) -> None:
    server: Server = procs.server("api", worker=False, workers=2)
    children = [pid for pid in _children(server.proc.pid) if _alive(pid)]
    assert len(children) >= 2
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in children), 30, "no API process left")
