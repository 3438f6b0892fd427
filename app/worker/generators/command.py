"""The `command` kind: any program that turns an image into a video file.

The argv list runs as it is, never through a shell, with `{image}`,
`{output}`, `{prompt}` and `{params}` (JSON) filled in. The program
writes `{output}`, a hidden name beside the final one, which is published
once it is checked to be a decodable video.

- Progress: stdout lines `progress 0.42`, or a tqdm-style `NN%`.
- Errors: a non-zero exit is `generator.crashed` (retryable), with the
  tail of stderr in the message.
- Stopping: on a cancel, a lost lease, shutdown or the timeout, the whole
  process group gets SIGTERM, then SIGKILL after `kill_grace_seconds`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from app.worker.generators import output, template
from app.worker.generators.base import (
    GeneratedVideo,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    describe,
    redact,
)
from app.worker.generators.catalog import GeneratorSettingError, settings_of

PLACEHOLDERS = {"image", "output", "prompt", "params", "img_name"}
STDERR_TAIL_LINES = 20
_PROGRESS = re.compile(r"^\s*progress[\s:=]+([0-9]*\.?[0-9]+)\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%")


class CommandSettings(BaseModel):
    """A `[generators.<name>]` table of kind `command` (README, "Generators")."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1, description="the program and its arguments")
    timeout_seconds: float = Field(600.0, gt=0, le=86_400)
    #: Between SIGTERM and SIGKILL when the program is stopped.
    kill_grace_seconds: float = Field(5.0, ge=0, le=600)
    #: Added to the worker's environment for the program.
    env: dict[str, str] = Field(default_factory=dict)


def build(name: str, settings: Mapping[str, Any]) -> CommandGenerator:
    """The `command` kind (entry point `vidledger.generators`)."""
    parsed = settings_of(CommandSettings, settings)
    template.check(parsed.argv, PLACEHOLDERS, "argv")
    if not any("{output}" in arg for arg in parsed.argv):
        raise GeneratorSettingError("argv", "must contain {output}, where the video is written")
    return CommandGenerator(name, parsed)


def progress_line(line: str) -> float | None:
    """The fraction a stdout line reports: `progress 0.42`, or `42%`."""
    match = _PROGRESS.match(line)
    if match:
        return min(1.0, float(match.group(1)))
    percent = _PERCENT.findall(line)
    if percent:
        return min(1.0, float(percent[-1]) / 100)
    return None


class CommandGenerator:
    """Runs each task as one run of `settings.argv`."""

    def __init__(self, name: str, settings: CommandSettings) -> None:
        self.name = name
        self.settings = settings
        self.timeout_seconds = settings.timeout_seconds

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> GeneratedVideo:
        """Run the program once; see the module docstring. Raises
        `GenerationError` (`generator.crashed`, `generator.timeout`:
        retryable; `generator.bad_output`: not) and `GenerationCancelled`."""
        request.output_path.parent.mkdir(parents=True, exist_ok=True)
        temp = output.temp_path(request.output_path)
        values = {
            "image": str(request.image_path),
            "output": str(temp),
            "prompt": request.prompt,
            "params": request.params,
            "img_name": request.img_name,
        }
        argv = [template.fill_text(arg, values) for arg in self.settings.argv]
        try:
            code, stderr = self._run(argv, progress, should_stop)
            if code != 0:
                tail = redact(stderr, limit=1500) or "(stderr was empty)"
                raise GenerationError(
                    "generator.crashed", f"the command exited with {code}: {tail}", retryable=True
                )
            video = output.probe(temp, "generator.bad_output")
            output.publish(temp, request.output_path)
        finally:
            output.discard(temp)
        progress(1.0)
        return video

    def _run(
        self,
        argv: list[str],
        progress: Callable[[float], None],
        should_stop: Callable[[], bool],
    ) -> tuple[int, str]:
        """The exit code and the tail of stderr; stops the process group early
        on `should_stop` (GenerationCancelled) or the timeout."""
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **self.settings.env},
                start_new_session=True,  # its own process group: stopped as a whole
            )
        except OSError as exc:
            raise GenerationError(
                "generator.crashed",
                f"cannot start {os.path.basename(argv[0])!r}: {describe(exc)}",
                retryable=False,
            ) from exc
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        done = [0.0]

        def on_stdout(line: str) -> None:
            fraction = progress_line(line)
            if fraction is not None and fraction > done[0]:
                done[0] = fraction
                progress(min(fraction, 0.99))

        readers = [
            threading.Thread(target=_lines, args=(process.stdout, on_stdout), daemon=True),
            threading.Thread(target=_lines, args=(process.stderr, tail.append), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + self.settings.timeout_seconds
        try:
            while process.poll() is None:
                if should_stop():
                    self._stop(process)
                    raise GenerationCancelled("the command was stopped")
                if time.monotonic() >= deadline:
                    self._stop(process)
                    raise GenerationError(
                        "generator.timeout",
                        f"the command ran past {self.settings.timeout_seconds:g} s",
                        retryable=True,
                    )
                time.sleep(0.05)
        finally:
            if process.poll() is None:  # an unexpected error above: leave nothing running
                self._stop(process)
            for reader in readers:
                reader.join(2)
        return process.returncode, "\n".join(tail)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period; reaped."""
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self.settings.kill_grace_seconds)
        # The leader may be gone while children it started live on: kill the group.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _lines(stream: IO[bytes] | None, sink: Callable[[str], None]) -> None:
    if stream is None:
        return
    with stream:
        for raw in iter(stream.readline, b""):
            # tqdm redraws with \r: each redraw is a line of its own.
            for line in raw.decode("utf-8", "replace").replace("\r", "\n").splitlines():
                if line.strip():
                    sink(line)
