"""HTTP throughput over loopback with wrk: the project's status read and video
request against a minimal FastAPI app doing the same SQL through a plain
psycopg2 pool (`bench/baseline_app.py`), both under uvicorn with the same
settings, one server at a time, measured in the same run."""

from __future__ import annotations

import uuid

from sqlalchemy import make_url

from app import keys
from app.db import migrate
from app.db.engine import open_database
from app.keys import Role
from app.projections import rebuild
from app.service import utcnow
from bench import dataset, wrk
from bench.pg import scratch_database
from bench.report import Report, Row, in_turn
from bench.servers import serve
from bench.wrk import Load

IMAGES = 10_000
SECONDS = 5.0
WARMUP_SECONDS = 1.0
#: Rounds of (baseline, project in open mode), alternated. On a 2-core VM
#: one server's rate moves by up to 25% from one 5 s window to the next:
#: five rounds, not three, so that a figure near its target is not one
#: unlucky window.
ROUNDS = 5
READ_CONNECTIONS = (16, 64)
WRITE_CONNECTIONS = 16
PROBE = "/v1/videos/img1.png"


def _measure(base: str, headers: dict[str, str] | None = None) -> dict[str, Load]:
    """Reads at each concurrency, then requests for new images, on one server."""

    def reads(connections: int, seconds: float) -> Load:
        return wrk.run(
            base,
            "get_status.lua",
            [str(IMAGES)],
            connections=connections,
            seconds=seconds,
            headers=headers,
        )

    reads(16, WARMUP_SECONDS)  # fills the pools and warms the caches
    out = {f"get{c}": reads(c, SECONDS) for c in READ_CONNECTIONS}
    for c in READ_CONNECTIONS:
        print(f"    GET, {c} connections: {out[f'get{c}'].describe()}", flush=True)
    out["post"] = wrk.run(
        base,
        "request_video.lua",
        [uuid.uuid4().hex[:8]],
        connections=WRITE_CONNECTIONS,
        seconds=SECONDS,
        headers=headers,
    )
    print(f"    POST, {WRITE_CONNECTIONS} connections: {out['post'].describe()}", flush=True)
    return out


def _mean(runs: list[dict[str, Load]]) -> dict[str, Load]:
    return {figure: Load.mean([run[figure] for run in runs]) for figure in runs[0]}


def _row(figure: str, ours: Load, base: Load, target: str, *, p50: bool = True) -> Row:
    shown = ours.describe() if p50 else f"{ours.rps:,.0f} req/s, p99 {ours.p99_ms:.1f} ms"
    based = base.describe() if p50 else f"{base.rps:,.0f} req/s, p99 {base.p99_ms:.1f} ms"
    ratio = f"{ours.rps / base.rps:.2f}x"
    return Row(figure, shown, f"FastAPI + psycopg2 pool: {based}", ratio, target)


def run(report: Report) -> None:
    if not wrk.available():
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    print(f"HTTP over loopback (wrk, {SECONDS:g} s each): project vs minimal FastAPI", flush=True)
    with scratch_database() as url:
        migrate.upgrade(url)
        db = open_database(url, pool_size=2)
        try:
            rebuild.rebuild(db)
            dataset.load(db, 1, IMAGES + 1)
            u = make_url(url)
            dsn = f"host={u.host} port={u.port} user={u.username} dbname={u.database}"
            env = {"VIDLEDGER_BENCH_URL": url}
            # Alternate the two servers, each round swapping which goes first,
            # so that a drift in the machine's load lands on both sides of the
            # ratio; each figure is the mean.
            baselines: list[dict[str, Load]] = []
            opens: list[dict[str, Load]] = []

            def baseline_round(n: int) -> None:
                print(f"  round {n}: baseline (FastAPI + psycopg2 pool)", flush=True)
                with serve("bench.baseline_app:app", {"VIDLEDGER_BENCH_DSN": dsn}, PROBE) as base:
                    baselines.append(_measure(base))

            def project_round(n: int) -> None:
                print(f"  round {n}: project, open mode", flush=True)
                with serve("bench.servers:project", env, PROBE) as base:
                    opens.append(_measure(base))

            for n in range(1, ROUNDS + 1):
                for side in in_turn(n, (baseline_round, project_round)):
                    side(n)
            baseline, open_mode = _mean(baselines), _mean(opens)
            # With a key, as any server off loopback runs: one key lookup per request.
            secret = keys.create_key(db, "bench", Role.WRITE, utcnow())
            auth = {"Authorization": f"Bearer {secret}"}
            print("  project, with an API key", flush=True)
            with serve("bench.servers:project", env, PROBE) as base:
                keyed = _measure(base, auth)
        finally:
            db.dispose()
    for c in READ_CONNECTIONS:
        report.add(
            _row(
                f"HTTP GET /v1/videos/{{img}}, {c} connections (open mode)",
                open_mode[f"get{c}"],
                baseline[f"get{c}"],
                "≥ 0.80x",
            )
        )
    for c in READ_CONNECTIONS:
        report.add(
            _row(
                f"HTTP GET /v1/videos/{{img}}, {c} connections (API key)",
                keyed[f"get{c}"],
                baseline[f"get{c}"],
                "reported",
            )
        )
    report.add(
        _row(
            f"HTTP POST /v1/videos (new image each), {WRITE_CONNECTIONS} connections (open mode)",
            open_mode["post"],
            baseline["post"],
            "≥ 0.60x",
            p50=False,
        )
    )
    report.add(
        _row(
            f"HTTP POST /v1/videos (new image each), {WRITE_CONNECTIONS} connections (API key)",
            keyed["post"],
            baseline["post"],
            "reported",
            p50=False,
        )
    )
