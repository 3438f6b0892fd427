"""A Cog predictor that turns one image into a short MP4: a slow zoom, encoded with PyAV.

It stands in for an image-to-video model. It behaves as one does for the
service that calls it: it takes a while (`seconds_per_frame` makes it as
slow as you like), prints tqdm-style progress lines, stops when its
prediction is cancelled, and fails with a message on an input it cannot use.

Run it without Docker (README, "Production: your own model"):

    COG_PREDICT_TYPE_STUB=predict.py:Predictor PORT=5000 python -m cog.server.http
"""

from __future__ import annotations

import asyncio
import tempfile
from fractions import Fraction

import av
from cog import BaseRunner, Input, Path
from PIL import Image, ImageOps, UnidentifiedImageError

ZOOM_END = 1.2


def _even(n: float) -> int:
    return max(16, int(n) // 2 * 2)


class Predictor(BaseRunner):
    def setup(self) -> None:
        """A real model would load its weights here."""

    async def run(
        self,
        image: Path = Input(description="the still image to animate"),
        prompt: str = Input(default="", description="kept in the video's title"),
        duration_seconds: float = Input(default=2.0, ge=0.2, le=10.0),
        fps: int = Input(default=12, ge=1, le=30),
        size: int = Input(default=256, ge=16, le=1024, description="the long side, in pixels"),
        seconds_per_frame: float = Input(
            default=0.0, ge=0.0, le=5.0, description="how slow a model to be, per frame"
        ),
    ) -> Path:
        try:
            with Image.open(image) as opened:
                picture = ImageOps.exif_transpose(opened).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"the image cannot be read: {type(exc).__name__}") from None
        scale = size / max(picture.size)
        width, height = _even(picture.width * scale), _even(picture.height * scale)
        frames = max(1, round(duration_seconds * fps))
        out = Path(tempfile.mkdtemp()) / "video.mp4"
        with av.open(str(out), mode="w", format="mp4") as container:
            container.metadata["title"] = prompt[:200]
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = Fraction(1, fps)
            for index in range(frames):
                zoom = 1 + (ZOOM_END - 1) * index / max(1, frames - 1)
                w, h = picture.width / zoom, picture.height / zoom
                left, top = (picture.width - w) / 2, (picture.height - h) / 2
                frame_image = picture.resize((width, height), box=(left, top, left + w, top + h))
                frame = av.VideoFrame.from_image(frame_image)
                frame.pts = index
                container.mux(stream.encode(frame))
                done = index + 1
                percent = 100 * done // frames
                bar = "#" * (percent // 10)
                print(f"{percent:3d}%|{bar:<10}| {done}/{frames}", flush=True)
                # A cancel arrives here, as asyncio.CancelledError: the model stops.
                await asyncio.sleep(seconds_per_frame)
            container.mux(stream.encode(None))
        return out
