"""A process of a parallel rebuild's replay: `python -m app.projections.replay_process`.

A plain subprocess of the running interpreter, not multiprocessing's spawn:
spawn imports the parent's main module again in every child (the CLI's,
a server's, the bench's), which cost each child a second or more of CPU
before its first event, on the cores the replay needs.

The protocol is JSON lines. The process reads one task from stdin (null:
nothing to do), then writes `{"events": n}` as it folds and ends with
`{"rows": n}`, or `{"error": "..."}` and exit code 1. The task holds the
database URL, so it travels on stdin, never on the command line.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TextIO

import orjson

from app.events.types import Json

#: How long a process that was told to stop may take before it is killed.
STOP_GRACE_S = 30


def start() -> subprocess.Popen[str]:
    """A replay process, importing while it waits for its task."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def give(proc: subprocess.Popen[str], task: Json | None) -> None:
    """Send `proc` its task (None: nothing to do)."""
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps(task).decode() + "\n")
    proc.stdin.close()


def parse(line: str) -> Json:
    """A message from a replay process."""
    message: Json = orjson.loads(line)
    return message


def stop(proc: subprocess.Popen[str], *, kill: bool = False) -> None:
    """Wait for `proc` to end (one still waiting for its task sees its stdin
    close and ends), killing it after a grace period, or at once with `kill`
    (the rebuild failed: what it writes is thrown away with the shadow)."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    if kill and proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _send(out: TextIO, message: Json) -> None:
    out.write(orjson.dumps(message).decode() + "\n")
    out.flush()


def main() -> int:
    from app.projections.bulk_replay import replay_task  # here: bulk_replay imports this module

    line = sys.stdin.readline()
    task = orjson.loads(line) if line.strip() else None
    if task is None:
        _send(sys.stdout, {"rows": 0})
        return 0
    try:
        rows = replay_task(task, lambda n: _send(sys.stdout, {"events": n}))
    except Exception as exc:  # reported to the rebuild, which raises it
        _send(sys.stdout, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(sys.stdout, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
