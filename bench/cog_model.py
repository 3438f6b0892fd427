"""Videos per minute through the `cog` generator, next to calling the same Cog
server directly in a loop, in the same run, at concurrency 1 and 2.

The model is the example predictor (examples/cog-kenburns/) with two slots.
The direct loop is what a script without vidledger would do: `POST
/predictions` (synchronous), decode the `data:` URI, write the file. Through
vidledger, each video is also requested, claimed, leased, heartbeated,
followed by webhooks, checked frame by frame with PyAV, published
atomically and recorded as completed, in SQLite.
"""

from __future__ import annotations

import base64
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from app.db import migrate
from app.db.engine import open_database
from app.lifecycle import Status
from app.service import Actor, GeneratorNames, Policy, VideoService, utcnow
from app.service.queries import VideoQueries
from app.video_files import VideoFiles
from app.worker.backend import LocalBackend
from app.worker.generators import catalog
from app.worker.loop import Worker, WorkerConfig
from bench.report import Report, Row
from bench.servers import ROOT, cog_model

EXAMPLE = ROOT / "examples" / "cog-kenburns"
#: 18 frames of 256 px, the model waiting 0.05 s per frame: about 1.2 s a video.
PARAMS = {"duration_seconds": 1.5, "fps": 12, "size": 256, "seconds_per_frame": 0.05}
TARGET = 0.9


def _direct(url: str, image: Path, out: Path, n: int, concurrency: int) -> float:
    """Videos per minute of `concurrency` threads calling the model in a loop."""
    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    left = list(range(n))
    lock = threading.Lock()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if not left:
                        return
                    i = left.pop()
                while True:
                    answer = http.post("/predictions", json={"input": {"image": uri, **PARAMS}})
                    if answer.status_code != 409:  # a slot frees a moment after its answer
                        break
                    time.sleep(0.01)
                body = answer.json()
                assert body["status"] == "succeeded", body
                payload = body["output"].split(",", 1)[1]
                (out / f"direct{i}.mp4").write_bytes(base64.b64decode(payload))

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start) * 60


def _through_vidledger(url: str, root: Path, images: Path, n: int, concurrency: int) -> float:
    """Videos per minute from the first request to the last completion."""
    file = root / f"generators{concurrency}.toml"
    inputs = ", ".join(f'{k} = "{{params.{k}}}"' for k in PARAMS)
    file.write_text(
        f'[generators.model]\nkind = "cog"\nurl = "{url}"\n'
        f'input = {{ image = "{{image}}", {inputs} }}\n'
    )
    found = catalog.load(file)
    db_url = f"sqlite:///{root / f'cog{concurrency}.db'}"
    migrate.upgrade(db_url)
    db = open_database(db_url)
    videos = root / f"videos{concurrency}"
    policy = Policy(lease_seconds=60, generators=GeneratorNames(found.names, found.default))
    svc = VideoService(db, policy, files=VideoFiles(videos))
    cfg = WorkerConfig("bench", images, videos, concurrency=concurrency, poll_seconds=0.02)
    worker = Worker(LocalBackend(svc), found.select(None), cfg)
    q = VideoQueries(db)
    thread = threading.Thread(target=worker.run, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        for i in range(n):
            svc.request_video(f"img{i}.png", "scene", Actor("bench"), params=PARAMS)
        worker.wake.set()
        while q.stats(utcnow())["by_status"][Status.COMPLETED.value] < n:
            failed = q.list_videos(status=Status.FAILED, source_type=None, limit=1, cursor=None)
            if failed.items:
                row = failed.items[0].row
                raise RuntimeError(f"a video failed: {row.error_code}: {row.error_message}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    finally:
        worker.stop.set()
        worker.wake.set()
        thread.join(30)
        db.dispose()
    return n / elapsed * 60


def run(report: Report, n: int = 16) -> None:
    print(f"cog: {n} videos through the example predictor, direct and through vidledger")
    with tempfile.TemporaryDirectory() as tmp, cog_model(EXAMPLE, slots=2) as url:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        for i in range(n):
            Image.new("RGB", (640, 480), (40 + i * 10, 120, 200)).save(images / f"img{i}.png")
        out = root / "direct"
        out.mkdir()
        _direct(url, images / "img0.png", out, 4, 2)  # warm both slots up
        for concurrency in (1, 2):
            direct = _direct(url, images / "img0.png", out, n, concurrency)
            ours = _through_vidledger(url, root, images, n, concurrency)
            ratio = ours / direct
            report.add(
                Row(
                    f"cog generator, worker concurrency {concurrency} (example model, 2 slots)",
                    f"{ours:.1f} videos/min",
                    f"the Cog server called directly, {concurrency} at a time: "
                    f"{direct:.1f} videos/min",
                    f"{ratio:.2f}x",
                    target=f">= {TARGET}x",
                )
            )
            if ratio < TARGET:
                report.fail(f"cog generator at concurrency {concurrency}: {ratio:.2f}x < {TARGET}x")
