"""Video generation throughput: the worker pipeline at concurrency 1 and 2,
against the bare generator (no database, no leases) in the same run."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

from app.db import migrate
from app.db.engine import open_database
from app.lifecycle import Status
from app.service import Actor, Policy, VideoService, utcnow
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker.backend import LocalBackend
from app.worker.generators import GenerationRequest, KenBurnsGenerator
from app.worker.loop import Worker, WorkerConfig
from bench.report import Report, Row

SIZE = (640, 480)
PARAMS = {"duration_seconds": 3.0, "fps": 24}


def _image(path: Path) -> None:
    image = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse(
            (i * 50, (i * 37) % 400, i * 50 + 60, (i * 37) % 400 + 60), fill=(255, i * 20, 90)
        )
    image.save(path)


def bare_generator(images: Path, out: Path, n: int) -> float:
    """Videos per minute of the generator alone, one after another."""
    gen = KenBurnsGenerator()
    start = time.perf_counter()
    for i in range(n):
        request = GenerationRequest(images / "img0.png", out / f"bare{i}.mp4", PARAMS)
        gen.generate(request, lambda _: None, lambda: False)
    return n / (time.perf_counter() - start) * 60


def pipeline(root: Path, images: Path, n: int, concurrency: int) -> float:
    """Videos per minute through request → claim → generate → complete (SQLite)."""
    url = f"sqlite:///{root / f'gen{concurrency}.db'}"
    migrate.upgrade(url)
    db = open_database(url)
    videos = root / f"videos{concurrency}"
    svc = VideoService(db, Policy(lease_seconds=60), files=VideoFiles(videos))
    for i in range(n):
        name = f"img{i}.png"
        svc.request_video(name, "scene", Actor("bench"), params=PARAMS)
    cfg = WorkerConfig("bench", images, videos, concurrency=concurrency, poll_seconds=0.02)
    worker = Worker(LocalBackend(svc), {"kenburns": KenBurnsGenerator()}, cfg)
    q = VideoQueries(db)
    start = time.perf_counter()
    thread = threading.Thread(target=worker.run)
    thread.start()
    while q.stats(utcnow())["by_status"][Status.COMPLETED.value] < n:
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.stop.set()
    worker.wake.set()
    thread.join()
    db.dispose()
    return n / elapsed * 60


def run(report: Report, n: int = 8) -> None:
    print(f"generation: {n} videos of {SIZE[0]}x{SIZE[1]}, 3 s at 24 fps", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        for i in range(n):
            _image(images / f"img{i}.png")
        out = root / "bare"
        out.mkdir()
        bare = bare_generator(images, out, n)
        for concurrency in (1, 2):
            vpm = pipeline(root, images, n, concurrency)
            report.add(
                Row(
                    f"generation, worker concurrency {concurrency} (640x480, 3 s)",
                    f"{vpm:.1f} videos/min",
                    f"bare generator, sequential: {bare:.1f} videos/min",
                    f"{vpm / bare:.2f}x",
                )
            )
