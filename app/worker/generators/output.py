"""Checking and publishing a video file: atomically, and only once it decodes.

The built-in generator encodes its own frames; the `cog` and `command` kinds
get a file from elsewhere, which `probe` checks before `publish` puts it
in place. Either way a video appears at its final name whole, or not at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import av

from app.worker.generators.base import GeneratedVideo, GenerationError


def temp_path(output: Path) -> Path:
    """A hidden name beside `output`, still ending in `.mp4` (tools pick the format by it)."""
    return output.with_name(f".{output.name}.{secrets.token_hex(6)}.part.mp4")


def fsync(path: Path, *, directory: bool = False) -> None:
    """Flush `path` to disk. The worker records completion right after a
    generator returns; without this a power cut could leave the log saying
    "completed" with no file, or an empty one, on disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, output: Path) -> None:
    """Move the finished `temp` to `output` in one step (same folder: `os.replace`)."""
    fsync(temp)
    os.replace(temp, output)
    # Published now; a folder that refuses fsync (some network filesystems
    # do) must not turn a finished video into a failure.
    with contextlib.suppress(OSError):
        fsync(output.parent, directory=True)


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def probe(path: Path, code: str) -> GeneratedVideo:
    """The real numbers of the video at `path`, every frame decoded.

    Raises `GenerationError(code)`, not retryable, when it is not a video
    that decodes: no file, no video stream, no frame, or a decoding error.
    """

    def bad(why: str) -> GenerationError:
        return GenerationError(code, f"the output is not a playable video: {why}", retryable=False)

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise bad("no file was written") from None
    if size == 0:
        raise bad("the file is empty")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise bad("it has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            frames = 0
            width = height = 0
            for frame in container.decode(stream):
                frames += 1
                width, height = frame.width, frame.height
            rate = stream.average_rate or stream.guessed_rate
            base = stream.time_base
            seconds = float(stream.duration * base) if stream.duration and base else 0.0
    except av.FFmpegError as exc:
        raise bad(f"it does not decode ({type(exc).__name__})") from exc
    if frames == 0:
        raise bad("it has no frames")
    fps = round(float(rate)) if rate else 0
    if not seconds and fps:
        seconds = frames / fps
    return GeneratedVideo(
        width=width,
        height=height,
        frames=frames,
        fps=fps,
        codec=codec,
        duration_seconds=round(seconds, 3),
        bytes=size,
    )
