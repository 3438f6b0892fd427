"""The pluggable generator contract: request, result, errors and safe image paths.

Pure Python with no I/O at import; a generator (local or remote) implements
`VideoGenerator`, and the worker only ever sees the types defined here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.naming import img_name_problem

DURATION_RANGE = (0.5, 30.0)
FPS_RANGE = (1, 60)
MAX_SIZE_RANGE = (16, 4096)


class GenerationError(Exception):
    """A generation that failed in a way the worker can record and act on.

    `code` is dot-separated (`image.not_found`, `image.unreadable`,
    `params.invalid`, `generator.crashed`, `generator.timeout`), `message` is a
    sentence a person understands, and `retryable` says whether trying the same
    request again might succeed.
    """

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


#: An absolute path (two or more parts) inside a message; `redact` hides it.
_PATH = re.compile(r"(?<![\w.:/~-])(?:/[\w.@+~-]+){2,}/?")
MESSAGE_MAX = 500


def redact(text: str, *, limit: int = MESSAGE_MAX) -> str:
    """`text` fit for the log and a client: absolute paths replaced by
    `<path>`, cut to `limit` characters. For messages that come from
    elsewhere (a model, a command's stderr, an exception)."""
    cleaned = _PATH.sub("<path>", text.strip())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1].rstrip() + "…"


def describe(exc: BaseException) -> str:
    """A path-free description of `exc`: an OSError's reason without its
    file name, else the exception's own text, redacted."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return redact(str(exc)) or type(exc).__name__


class GenerationCancelled(Exception):
    """The generator noticed `should_stop()` and stopped; no output was written."""


@dataclass(frozen=True)
class GenerationParams:
    """The validated knobs of a generation, defaults filled in."""

    duration_seconds: float = 3.0
    fps: int = 24
    max_size: int = 1280

    @property
    def frames(self) -> int:
        """Frames to encode: `duration_seconds * fps`, rounded half up, at least one."""
        return max(1, math.floor(self.duration_seconds * self.fps + 0.5))


def _invalid(message: str) -> GenerationError:
    return GenerationError("params.invalid", message, retryable=False)


def _whole_number(key: str, value: Any, bounds: tuple[int, int]) -> int:
    low, high = bounds
    # bool is an int subclass, but `"fps": true` is a mistake, not 1 fps.
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value != int(value):
        raise _invalid(f"{key} must be a whole number from {low} to {high}, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise _invalid(f"{key} must be from {low} to {high}, got {number}")
    return number


def parse_params(params: dict[str, Any]) -> GenerationParams:
    """Validate `params` into `GenerationParams`; unknown keys are ignored.

    Raises `GenerationError` with code `params.invalid` (not retryable) when a
    known key has the wrong type or is out of range: duration_seconds 0.5-30,
    fps 1-60, max_size 16-4096.
    """
    defaults = GenerationParams()
    duration: Any = params.get("duration_seconds", defaults.duration_seconds)
    low, high = DURATION_RANGE
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not math.isfinite(duration)
    ):
        raise _invalid(f"duration_seconds must be a number of seconds, got {duration!r}")
    if not low <= duration <= high:
        raise _invalid(f"duration_seconds must be from {low} to {high}, got {duration}")
    return GenerationParams(
        duration_seconds=float(duration),
        fps=_whole_number("fps", params.get("fps", defaults.fps), FPS_RANGE),
        max_size=_whole_number(
            "max_size", params.get("max_size", defaults.max_size), MAX_SIZE_RANGE
        ),
    )


@dataclass(frozen=True)
class GenerationRequest:
    """One video to make: read `image_path`, write `output_path`.

    `img_name`, `generation` and `attempt` name the task it is for: a remote
    generator derives an id from them that is the same however often the
    same attempt is sent. `params` are the request's, as the client sent
    them with the built-in defaults filled in; `settings` reads the built-in
    generator's knobs out of them.
    """

    image_path: Path
    output_path: Path
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    img_name: str = ""
    generation: int = 1
    attempt: int = 1

    @property
    def settings(self) -> GenerationParams:
        """The validated knobs of the built-in generator; raises `GenerationError`
        (`params.invalid`) for a known key with a wrong value."""
        return parse_params(self.params)


@dataclass(frozen=True)
class GeneratedVideo:
    """What was written: the real numbers of the finished file."""

    width: int
    height: int
    frames: int
    fps: int
    codec: str
    duration_seconds: float
    bytes: int


class VideoGenerator(Protocol):
    """Turns one image into one video file.

    `generate` calls `progress(fraction)` with non-decreasing values ending at
    1.0, polls `should_stop()` and raises `GenerationCancelled` when it turns
    true, and raises `GenerationError` for every failure it understands. The
    output file appears atomically or not at all.
    """

    name: str

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        """Write `request.output_path` from `request.image_path`; see the class docstring."""
        ...


def _not_found(message: str) -> GenerationError:
    return GenerationError("image.not_found", message, retryable=False)


def resolve_image(images_dir: Path, img_name: str) -> Path:
    """The resolved path of `img_name` inside `images_dir`, guaranteed not to escape it.

    Raises `GenerationError` with code `image.not_found` (not retryable) when the
    name is not a plain file name (separators, control characters, `.`, `..`,
    absolute paths), when it resolves outside the folder (a symlink pointing
    elsewhere), or when no such file exists. Messages name the image, never
    the server's folder: they are recorded in the log and shown to clients.
    """
    problem = img_name_problem(img_name)
    if problem is None and Path(img_name).is_absolute():
        problem = "img_name must not be an absolute path"
    if problem is not None:
        raise _not_found(f"refusing image name {img_name!r}: {problem}")

    try:
        folder = images_dir.resolve(strict=False)
        # Resolve after joining so a symlink inside the folder is followed to its target;
        # the containment check below is the guarantee, the name rules above the courtesy.
        candidate = (images_dir / img_name).resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        # Python 3.11 raises RuntimeError on a symlink loop (3.13 raises OSError).
        raise _not_found(f"image {img_name!r} cannot be resolved (a symlink loop?)") from exc
    if not candidate.is_relative_to(folder) or candidate == folder:
        raise _not_found(f"image {img_name!r} points outside the images folder")
    if not candidate.exists():
        raise _not_found(f"no image named {img_name!r} in the images folder")
    if not candidate.is_file():
        raise _not_found(f"{img_name!r} in the images folder is not a file")
    return candidate
