"""`vidledger serve` and `vidledger worker`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from app import bootstrap
from app import keys as key_store
from app.cli.admin import announced_rebuild
from app.cli.base import cli, ctx, log
from app.errors import ConfigError


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="run the worker")] = True,
    generator: Annotated[
        list[str] | None,
        typer.Option(help="the in-process worker runs only these generators (repeatable)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="API processes on the one port; default: the number of cores"
        ),
    ] = None,
) -> None:
    """Serve the HTTP API, with the worker in-process unless --no-worker."""
    import uvicorn

    from app.api import create_app, freeze_startup_heap
    from app.api.app import is_loopback
    from app.cli.multiprocess import ChildPlan, serve_processes
    from app.cli.multiprocess import bind as listen

    settings = ctx().settings
    address = host or settings.host
    db = ctx().db  # checks that the schema is current
    bootstrap.rebuild_if_stale(db, run=announced_rebuild)
    if not is_loopback(address) and not key_store.has_any_key(db):
        raise ConfigError(
            f"refusing to listen on {address} with no API keys: create one with "
            "'vidledger keys create NAME --role admin', or listen on 127.0.0.1"
        )
    if worker:
        settings.images_dir.mkdir(parents=True, exist_ok=True)
        log.info("in-process worker on; put images in %s", settings.images_dir.resolve())
    count = workers or os.cpu_count() or 1
    if count > 1:
        sock = listen(address, port or settings.port)
        ctx().close()  # the children open their own
        plan = ChildPlan(host=address, worker=worker, generators=generator)
        serve_processes(count, sock, plan, grace=settings.shutdown_grace_seconds)
        return
    app = create_app(
        settings,
        host=address,
        run_worker=worker,
        run_reaper=True,
        worker_generators=generator,
        run_dispatcher=True,
    )
    freeze_startup_heap()
    uvicorn.run(app, host=address, port=port or settings.port, log_config=None)


@cli.command("worker")
def worker_cmd(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="tasks at once")] = 1,
    worker_id: Annotated[str | None, typer.Option(help="recorded as worker:<id>")] = None,
    source_type: Annotated[
        list[str] | None, typer.Option(help="only claim these source types (repeatable)")
    ] = None,
    generator: Annotated[
        list[str] | None,
        typer.Option(help="run only these configured generators (repeatable); default: all"),
    ] = None,
    remote: Annotated[
        str | None, typer.Option(help="a vidledger server URL: use its worker HTTP API")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="VIDLEDGER_API_KEY", help="a worker key, for --remote")
    ] = None,
) -> None:
    """Run a standalone worker until SIGINT or SIGTERM (then finish or release, exit 0)."""
    import signal

    from app.worker.backend import LocalBackend, RemoteBackend, TaskBackend
    from app.worker.generators import catalog
    from app.worker.runtime import build_worker, wake_if_pending

    settings = ctx().settings
    backend: TaskBackend
    generators = catalog.load(settings.generators_file).select(generator)
    if remote is not None:
        if not api_key:
            raise ConfigError("--remote needs --api-key (or VIDLEDGER_API_KEY): a worker key")
        backend = RemoteBackend(remote, api_key)
    else:
        backend = LocalBackend(bootstrap.build(settings, db=ctx().db).videos)
    w = build_worker(
        settings,
        backend,
        generators,
        worker_id=worker_id,
        concurrency=concurrency,
        source_types=source_type or None,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        w.stop.set()
        w.wake.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if remote is None:
        ctx().db.backend.start_listener(
            settings.database_url, lambda s: wake_if_pending(w.wake, s), w.stop
        )
    w.run()
