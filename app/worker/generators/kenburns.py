"""The local Ken Burns generator: a slow zoom and pan across one image, as H.264 MP4.

It reads the image with Pillow, encodes with PyAV's libx264 and writes the
result atomically (a hidden temp file in the target folder, then `os.replace`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict

from app.worker.generators.base import (
    GeneratedVideo,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    describe,
)
from app.worker.generators.catalog import settings_of
from app.worker.generators.output import discard, publish, temp_path

ZOOM_END = 1.15
# Where the crop box sits inside the free space, as (x, y) fractions, at start and end.
PAN_START = (0.35, 0.40)
PAN_END = (0.65, 0.60)
MIN_SIDE = 16
MAX_PROGRESS_CALLS = 20
STOP_CHECK_EVERY = 4
# Encoding gets this share of the progress; flushing, faststart and the rename the rest.
ENCODE_SHARE = 0.95


@dataclass(frozen=True)
class _Box:
    left: float
    top: float
    right: float
    bottom: float


def output_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """The video size for a `width`x`height` source: at most `max_size` on the long side.

    Never larger than the source, except to make both sides even and at least 16 px,
    which libx264 with yuv420p requires.
    """
    scale = min(1.0, max_size / max(width, height))
    out_w = max(MIN_SIDE, round(width * scale) // 2 * 2)
    out_h = max(MIN_SIDE, round(height * scale) // 2 * 2)
    return out_w, out_h


def _ease(t: float) -> float:
    # Smoothstep: the camera starts and stops gently instead of jerking.
    return t * t * (3.0 - 2.0 * t)


def _full_crop(src_w: int, src_h: int, out_w: int, out_h: int) -> tuple[float, float]:
    """The largest box of the output's aspect that fits in the source: the zoom-1 crop."""
    aspect = out_w / out_h
    if src_w / src_h > aspect:
        return src_h * aspect, float(src_h)
    return float(src_w), src_w / aspect


def _crop_boxes(src_w: int, src_h: int, out_w: int, out_h: int, frames: int) -> Iterator[_Box]:
    """One crop box per frame, of the output's aspect, zooming in and panning."""
    base_w, base_h = _full_crop(src_w, src_h, out_w, out_h)
    for index in range(frames):
        e = _ease(index / (frames - 1)) if frames > 1 else 0.0
        zoom = 1.0 + (ZOOM_END - 1.0) * e
        crop_w, crop_h = base_w / zoom, base_h / zoom
        fx = PAN_START[0] + (PAN_END[0] - PAN_START[0]) * e
        fy = PAN_START[1] + (PAN_END[1] - PAN_START[1]) * e
        left = (src_w - crop_w) * fx
        top = (src_h - crop_h) * fy
        yield _Box(left, top, left + crop_w, top + crop_h)


def _load_image(path: Path) -> Image.Image:
    """The image as upright RGB.

    Raises `GenerationError`: `image.not_found` when the file is missing,
    `image.unreadable` for anything Pillow refuses.
    """
    try:
        with Image.open(path) as opened:
            # Phone photos store rotation in EXIF; without this they come out sideways.
            return ImageOps.exif_transpose(opened).convert("RGB")
    except FileNotFoundError as exc:
        raise GenerationError(
            "image.not_found", f"no image at {str(path)!r}", retryable=False
        ) from exc
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        # UnidentifiedImageError and truncated files are OSErrors; some plugins raise
        # ValueError or SyntaxError on malformed headers.
        raise GenerationError(
            "image.unreadable",
            f"{path.name!r} is not an image Pillow can read: {exc}",
            retryable=False,
        ) from exc


def _working_image(image: Image.Image, out_w: int, out_h: int) -> Image.Image:
    """`image` shrunk once so that the tightest crop (full zoom) maps about 1:1 onto the output.

    Every per-frame resize then reads a small image, which is what keeps encoding fast
    for large photos. Never enlarges: upscaling happens per frame, from the original.
    """
    base_w, _ = _full_crop(image.width, image.height, out_w, out_h)
    scale = out_w * ZOOM_END / base_w
    if scale >= 1.0:
        return image
    size = (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


class KenBurnsGenerator:
    """Local generator: a Ken Burns zoom and pan over the source image."""

    def __init__(self, name: str = "kenburns") -> None:
        self.name = name

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        """Write an H.264 MP4 of `request.image_path` to `request.output_path`.

        Raises `GenerationError` (`image.not_found`, `image.unreadable`: not
        retryable; `generator.crashed`: retryable) and `GenerationCancelled`
        when `should_stop()` turns true. On any failure the output path is left
        as it was and no temp file remains.
        """
        settings = request.settings
        fps, frames = settings.fps, settings.frames
        original = _load_image(request.image_path)
        width, height = output_size(original.width, original.height, settings.max_size)
        source = _working_image(original, width, height)
        boxes = _crop_boxes(source.width, source.height, width, height, frames)
        report_every = math.ceil(frames / (MAX_PROGRESS_CALLS - 1))

        output = request.output_path
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _crashed("cannot create the videos folder", exc) from exc
        temp = temp_path(output)
        try:
            try:
                with av.open(
                    str(temp),
                    mode="w",
                    format="mp4",
                    # Moves the index to the front so a browser can start playing at once.
                    container_options={"movflags": "+faststart"},
                ) as container:
                    stream = container.add_stream("libx264", rate=fps)
                    stream.width = width
                    stream.height = height
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = Fraction(1, fps)
                    stream.options = {"preset": "veryfast", "crf": "23"}
                    for index, box in enumerate(boxes):
                        if index % STOP_CHECK_EVERY == 0 and should_stop():
                            raise GenerationCancelled(f"cancelled at frame {index} of {frames}")
                        picture = source.resize(
                            (width, height),
                            Image.Resampling.BILINEAR,
                            box=(box.left, box.top, box.right, box.bottom),
                        )
                        # PyAV's stub leaves from_image unannotated; it returns a VideoFrame.
                        frame: av.VideoFrame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
                        frame.pts = index
                        container.mux(stream.encode(frame))
                        done = index + 1
                        if done % report_every == 0 or done == frames:
                            progress(ENCODE_SHARE * (done / frames))
                    container.mux(stream.encode(None))
                if should_stop():
                    raise GenerationCancelled("cancelled after encoding, before publishing")
                publish(temp, output)
            except (av.FFmpegError, OSError) as exc:
                raise _crashed("the H.264 encoder failed", exc) from exc
        finally:
            # After a successful replace the temp name no longer exists; this only
            # cleans up after a failure or a cancel.
            discard(temp)

        size = output.stat().st_size
        progress(1.0)
        return GeneratedVideo(
            width=width,
            height=height,
            frames=frames,
            fps=fps,
            codec="h264",
            duration_seconds=frames / fps,
            bytes=size,
        )


def _crashed(what: str, exc: BaseException) -> GenerationError:
    return GenerationError("generator.crashed", f"{what}: {describe(exc)}", retryable=True)


class KenBurnsSettings(BaseModel):
    """The `kenburns` kind takes no settings: its knobs are each request's params."""

    model_config = ConfigDict(extra="forbid")


def build(name: str, settings: Mapping[str, Any]) -> KenBurnsGenerator:
    """The `kenburns` kind (entry point `vidledger.generators`)."""
    settings_of(KenBurnsSettings, settings)
    return KenBurnsGenerator(name)
