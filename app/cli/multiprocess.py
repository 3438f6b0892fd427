"""`vidledger serve --workers N`: N API processes on one port.

The parent checks the schema, rebuilds a stale projection and checks the
keys, once; binds the socket, once; then starts N children (spawned: each
an interpreter of its own, past the GIL) that all accept on that socket.

The background duties (the embedded worker, the expired-lease reaper and
the webhook dispatcher) run in child 0 only: once per deployment of this
command, not once per process. Each of them would also be safe twice (task
leases, delivery leases, version-checked appends), but twice is needless
work. A child that exits is started again, so the duties come back.

SIGTERM or SIGINT to the parent stops every child the way one `serve` stops
(requests finish, the worker hands back what it holds), then the parent
exits. A child whose parent is killed gets SIGTERM from the kernel
(`PR_SET_PDEATHSIG`), so none outlives it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from app.errors import ConfigError

log = logging.getLogger("vidledger")

#: How often the parent looks for a child that exited.
WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildPlan:
    """What each child builds; the settings come from the same environment."""

    host: str
    worker: bool
    generators: list[str] | None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every child accepts on. Raises ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_processes(count: int, sock: socket.socket, plan: ChildPlan, grace: float) -> None:
    """Run `count` API processes on `sock` until SIGTERM or SIGINT."""
    spawn = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start(index: int) -> BaseProcess:
        child = spawn.Process(
            target=_child, args=(index, sock, plan, os.getpid()), name=f"vidledger-api-{index}"
        )
        child.start()
        return child

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping %d API processes", signal.Signals(signum).name, count)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children = [start(i) for i in range(count)]
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving on http://%s:%d with %d API processes; the background duties run in process 0",
        shown,
        port,
        count,
    )
    try:
        while not stop.wait(WATCH_SECONDS):
            for index, child in enumerate(children):
                if not child.is_alive():
                    log.warning(
                        "API process %d exited (code %s): starting it again", index, child.exitcode
                    )
                    children[index] = start(index)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each stops as one `serve` does
        for child in children:
            child.join(grace + 15)
            if child.is_alive():
                log.warning("API process %s did not stop in time: killing it", child.name)
                child.kill()
                child.join(5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()


def _child(index: int, sock: socket.socket, plan: ChildPlan, parent: int) -> None:
    """One API process: the app, with the duties if it is process 0."""
    _die_with(parent)
    import uvicorn

    from app import logs
    from app.api import create_app, freeze_startup_heap
    from app.config import load_settings

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    duties = index == 0
    app = create_app(
        settings,
        host=plan.host,
        run_worker=plan.worker and duties,
        run_reaper=duties,
        worker_generators=plan.generators,
        run_dispatcher=duties,
    )
    if duties:
        log.info("API process 0: running the background duties (worker, reaper, webhooks)")
    freeze_startup_heap()
    uvicorn.Server(uvicorn.Config(app, log_config=None)).run(sockets=[sock])


def _die_with(parent: int) -> None:
    """Be sent SIGTERM when the parent dies (Linux); exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM is the only stop
        pass
    if os.getppid() != parent:
        os._exit(0)
