"""The Ken Burns generator writes real, playable H.264 files, atomically, or nothing."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from app.worker.generators import (
    GeneratedVideo,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    KenBurnsGenerator,
    parse_params,
)
from app.worker.generators.kenburns import output_size

SHORT = {"duration_seconds": 0.5, "fps": 12}  # 6 frames: keeps the suite quick


@dataclass
class Probe:
    codec: str
    pix_fmt: str
    width: int
    height: int
    frames: list[Image.Image]


def probe(path: Path) -> Probe:
    """Decode `path` with PyAV, independently of how it was written."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        return Probe(
            codec=stream.codec_context.name,
            pix_fmt=decoded[0].format.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            # PyAV's stub leaves to_image unannotated; it returns a PIL image.
            frames=[frame.to_image() for frame in decoded],  # type: ignore[no-untyped-call]
        )


def make_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    """A picture with structure (gradient plus shapes), so motion shows in the frames."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(8):
        x, y = width * i // 8, height * ((i * 3) % 8) // 8
        draw.rectangle((x, y, x + width // 10, y + height // 10), fill=(255, 40 * i % 256, 0))
    image.convert(mode).save(path)
    return path


def run(
    image: Path,
    output: Path,
    params: dict[str, Any] | None = None,
    should_stop: Any = None,
) -> tuple[GeneratedVideo, list[float]]:
    calls: list[float] = []
    request = GenerationRequest(image, output, dict(SHORT) if params is None else params)
    video = KenBurnsGenerator().generate(request, calls.append, should_stop or (lambda: False))
    return video, calls


def leftovers(folder: Path, keep: set[str]) -> set[str]:
    return {p.name for p in folder.iterdir()} - keep


def test_default_params_make_three_seconds_at_24_fps(tmp_path: Path) -> None:
    image = make_image(tmp_path / "cat.png", (640, 480))
    output = tmp_path / "videos" / "cat.mp4"

    video, calls = run(image, output, params={})

    seen = probe(output)
    assert (seen.codec, seen.pix_fmt) == ("h264", "yuv420p")
    assert (seen.width, seen.height) == (640, 480)
    assert len(seen.frames) == 72
    assert video == GeneratedVideo(
        width=640,
        height=480,
        frames=72,
        fps=24,
        codec="h264",
        duration_seconds=3.0,
        bytes=output.stat().st_size,
    )
    assert 2 <= len(calls) <= 20
    assert calls == sorted(calls) and calls[-1] == 1.0
    assert leftovers(output.parent, {"cat.mp4"}) == set()


def test_the_camera_moves_between_first_and_last_frame(tmp_path: Path) -> None:
    image = make_image(tmp_path / "cat.png", (320, 240))
    run(image, tmp_path / "cat.mp4")

    frames = probe(tmp_path / "cat.mp4").frames
    change = ImageStat.Stat(ImageChops.difference(frames[0], frames[-1])).mean
    assert sum(change) / 3 > 5, "zoom and pan should visibly change the picture"


def test_the_first_frame_shows_the_whole_picture(tmp_path: Path) -> None:
    image = make_image(tmp_path / "cat.png", (320, 240))
    run(image, tmp_path / "cat.mp4")

    first = probe(tmp_path / "cat.mp4").frames[0]
    source = Image.open(image).convert("RGB")
    error = ImageStat.Stat(ImageChops.difference(first, source)).mean
    assert sum(error) / 3 < 8, "at zoom 1 the frame is the source, give or take compression"


@pytest.mark.parametrize(
    ("source", "max_size", "expected"),
    [
        ((3000, 1000), 1280, (1280, 426)),
        ((1000, 3000), 1280, (426, 1280)),
        ((101, 75), 1280, (100, 74)),
        ((640, 480), 100, (100, 74)),
        ((8, 6), 1280, (16, 16)),
    ],
)
def test_output_size_fits_max_size_with_even_sides(
    tmp_path: Path,
    source: tuple[int, int],
    max_size: int,
    expected: tuple[int, int],
) -> None:
    image = make_image(tmp_path / "src.png", source)
    video, _ = run(image, tmp_path / "out.mp4", params={**SHORT, "max_size": max_size})

    seen = probe(tmp_path / "out.mp4")
    assert (seen.width, seen.height) == expected
    assert (video.width, video.height) == expected
    assert len(seen.frames) == video.frames == 6


@pytest.mark.parametrize("size", [(16, 16), (17, 9999), (4097, 2), (1921, 1081), (640, 480)])
@pytest.mark.parametrize("max_size", [16, 33, 1280, 4096])
def test_output_size_rules(size: tuple[int, int], max_size: int) -> None:
    width, height = output_size(*size, max_size)
    assert width % 2 == 0 and height % 2 == 0
    assert width >= 16 and height >= 16
    assert max(width, height) <= max(max_size, 16)
    # Never enlarged, except to reach the 16 px floor.
    assert width <= max(size[0], 16) and height <= max(size[1], 16)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_is_encoded(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image = make_image(tmp_path / f"src{suffix}", (64, 48), mode=mode)
    run(image, tmp_path / "out.mp4")
    assert probe(tmp_path / "out.mp4").codec == "h264"


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (64, 32), "white").save(path, exif=exif)

    video, _ = run(path, tmp_path / "out.mp4")

    assert (video.width, video.height) == (32, 64)


def test_frame_count_rounds_half_up_and_is_never_zero(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.png", (32, 32))
    video, calls = run(image, tmp_path / "out.mp4", params={"duration_seconds": 0.5, "fps": 1})
    assert video.frames == len(probe(tmp_path / "out.mp4").frames) == 1
    assert calls[-1] == 1.0


def test_progress_is_monotonic_and_bounded_for_a_long_video(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.png", (32, 32))
    _, calls = run(image, tmp_path / "out.mp4", params={"duration_seconds": 30, "fps": 10})
    assert len(calls) <= 20
    assert all(0 < a < b for a, b in itertools.pairwise(calls))
    assert calls[-1] == 1.0


def test_a_second_run_replaces_the_output(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.png", (64, 48))
    output = tmp_path / "out.mp4"
    run(image, output)
    video, _ = run(image, output, params={"duration_seconds": 1, "fps": 12})
    assert len(probe(output).frames) == video.frames == 12
    assert leftovers(tmp_path, {"src.png", "out.mp4"}) == set()


class StopWhen:
    """`should_stop` that turns true once progress reaches `at`, noting temp files seen."""

    def __init__(self, folder: Path, at: float) -> None:
        self.folder, self.at = folder, at
        self.calls: list[float] = []
        self.temps_seen: set[str] = set()

    def __call__(self) -> bool:
        if self.folder.exists():
            self.temps_seen |= {p.name for p in self.folder.glob(".*.part.mp4")}
        return bool(self.calls) and self.calls[-1] >= self.at


@pytest.mark.parametrize("at", [0.5, 0.95], ids=["midway", "after-encoding"])
def test_cancel_raises_and_removes_the_temp_file(tmp_path: Path, at: float) -> None:
    image = make_image(tmp_path / "src.png", (64, 48))
    output = tmp_path / "videos" / "out.mp4"
    stop = StopWhen(output.parent, at)
    # Long enough that the encoder has muxed packets (so the temp file exists) by `at`.
    request = GenerationRequest(image, output, {"duration_seconds": 3, "fps": 24})

    with pytest.raises(GenerationCancelled):
        KenBurnsGenerator().generate(request, stop.calls.append, stop)

    assert stop.temps_seen, "the test should catch the generator mid-write"
    # Stopped promptly: within a few frames of the request, and never reported done.
    assert at <= stop.calls[-1] < min(at + 0.1, 1.0)
    assert not output.exists()
    assert leftovers(output.parent, set()) == set()


def test_cancel_leaves_an_existing_output_untouched(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.png", (64, 48))
    output = tmp_path / "out.mp4"
    output.write_bytes(b"the previous video")

    with pytest.raises(GenerationCancelled):
        run(image, output, should_stop=lambda: True)

    assert output.read_bytes() == b"the previous video"
    assert leftovers(tmp_path, {"src.png", "out.mp4"}) == set()


def test_a_text_file_named_png_is_unreadable(tmp_path: Path) -> None:
    image = tmp_path / "notes.png"
    image.write_text("shopping list: eggs, milk\n")

    with pytest.raises(GenerationError) as caught:
        run(image, tmp_path / "out" / "notes.mp4")

    assert caught.value.code == "image.unreadable"
    assert caught.value.retryable is False
    assert caught.value.message.startswith("'notes.png' is not an image Pillow can read: ")
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out", set()) == set()


def test_a_truncated_png_is_unreadable(tmp_path: Path) -> None:
    whole = make_image(tmp_path / "whole.png", (64, 48)).read_bytes()
    image = tmp_path / "cut.png"
    image.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(GenerationError) as caught:
        run(image, tmp_path / "out.mp4")

    assert caught.value.code == "image.unreadable"
    assert leftovers(tmp_path, {"whole.png", "cut.png"}) == set()


def test_a_missing_image_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(GenerationError) as caught:
        run(tmp_path / "gone.png", tmp_path / "out.mp4")

    assert caught.value.code == "image.not_found"
    assert caught.value.retryable is False
    assert "gone.png" in caught.value.message
    assert leftovers(tmp_path, set()) == set()


def test_an_unwritable_output_folder_is_a_retryable_crash(tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.png", (32, 32))
    (tmp_path / "blocker").write_text("a file where the folder should be")

    with pytest.raises(GenerationError) as caught:
        run(image, tmp_path / "blocker" / "out.mp4")

    assert caught.value.code == "generator.crashed"
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "params",
    [
        {"duration_seconds": 0.4},
        {"duration_seconds": 30.5},
        {"duration_seconds": "3"},
        {"duration_seconds": math.nan},
        {"duration_seconds": None},
        {"fps": 0},
        {"fps": 61},
        {"fps": 2.5},
        {"fps": True},
        {"fps": "24"},
        {"max_size": 15},
        {"max_size": 4097},
        {"max_size": math.inf},
    ],
)
def test_params_out_of_range_are_invalid(tmp_path: Path, params: dict[str, Any]) -> None:
    with pytest.raises(GenerationError) as caught:
        KenBurnsGenerator().generate(
            GenerationRequest(tmp_path / "a.png", tmp_path / "a.mp4", params),
            progress=lambda _: None,
            should_stop=lambda: False,
        )

    assert caught.value.code == "params.invalid"
    assert caught.value.retryable is False
    assert next(iter(params)) in caught.value.message


def test_params_bounds_are_inclusive_and_unknown_keys_ignored() -> None:
    low = parse_params({"duration_seconds": 0.5, "fps": 1, "max_size": 16, "style": "x"})
    high = parse_params({"duration_seconds": 30, "fps": 60.0, "max_size": 4096})
    assert (low.duration_seconds, low.fps, low.max_size) == (0.5, 1, 16)
    assert (high.duration_seconds, high.fps, high.max_size) == (30.0, 60, 4096)
    assert parse_params({}).frames == 72
