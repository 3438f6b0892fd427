"""The `command` generator with real programs: Debian's ffmpeg, and small
Python scripts that hang, crash or spawn children."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from app.worker.generators import GenerationCancelled, GenerationError, GenerationRequest, catalog
from app.worker.generators.catalog import GeneratorSettingError
from app.worker.generators.command import CommandGenerator, build
from tests.integration.processes import make_png, wait_for

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None and not os.environ.get("CI"), reason="no ffmpeg (make test installs it)"
)
ZOOM = [
    "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-loop", "1", "-i", "{image}",
    "-t", "1", "-r", "10", "-vf", "scale=160:120", "-pix_fmt", "yuv420p", "{output}",
]  # fmt: skip


def generator(argv: list[str], **settings: Any) -> CommandGenerator:
    return build("cmd", {"argv": argv, **settings})


def request(tmp_path: Path, **kw: Any) -> GenerationRequest:
    image = make_png(tmp_path / "images", "cat.png", (320, 240))
    return GenerationRequest(image, tmp_path / "videos" / "cat.mp4", {"fps": 10}, **kw)


def python(tmp_path: Path, code: str) -> list[str]:
    """A Python program as the command (in a file: braces in argv are placeholders)."""
    script = tmp_path / "tool.py"
    script.write_text(code)
    return [sys.executable, str(script), "{output}", "{params}", "{prompt}"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped; /proc says which.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@needs_ffmpeg
def test_ffmpeg_makes_the_video(tmp_path: Path) -> None:
    req = request(tmp_path)
    seen: list[float] = []
    video = generator(ZOOM).generate(req, seen.append, lambda: False)
    assert (video.width, video.height, video.frames, video.codec) == (160, 120, 10, "h264")
    with av.open(str(req.output_path)) as container:
        assert len(list(container.decode(video=0))) == 10
    assert seen[-1] == 1.0
    assert sorted(p.name for p in req.output_path.parent.iterdir()) == ["cat.mp4"]


def test_progress_comes_from_stdout_and_placeholders_are_filled(tmp_path: Path) -> None:
    script = (
        "import json, shutil, sys, time\n"
        "out, params, prompt = sys.argv[1:4]\n"
        "assert json.loads(params) == {'fps': 10}, params\n"
        "assert prompt == 'slow zoom', prompt\n"
        "for p in ('progress 0.25', ' 50%|#####', 'progress 0.75'):\n"
        "    print(p, flush=True); time.sleep(0.3)\n"
        f"shutil.copy({str(SAMPLE)!r}, out)\n"
    )
    seen: list[float] = []
    generator(python(tmp_path, script)).generate(
        request(tmp_path, prompt="slow zoom"), seen.append, lambda: False
    )
    assert [p for p in seen if p < 1] == [0.25, 0.5, 0.75]
    assert seen[-1] == 1.0


def test_a_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(GenerationError) as caught:
        generator(python(tmp_path, script), timeout_seconds=1.5, kill_grace_seconds=0.5).generate(
            request(tmp_path), lambda _: None, lambda: False
        )
    assert caught.value.code == "generator.timeout"
    assert caught.value.retryable is True
    assert time.monotonic() - started < 10
    leader, child = (int(p) for p in pids.read_text().split())
    wait_for(lambda: not alive(leader) and not alive(child), timeout=5, what="group gone")


def test_a_cancel_stops_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The leader ignores SIGTERM: the group still ends, by SIGKILL after the grace.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(GenerationCancelled):
        generator(python(tmp_path, script), kill_grace_seconds=0.5).generate(
            request(tmp_path), lambda _: None, stop.is_set
        )
    leader, child = (int(p) for p in pids.read_text().split())
    wait_for(lambda: not alive(leader) and not alive(child), timeout=5, what="group gone")
    assert list((tmp_path / "videos").iterdir()) == []  # no temp file left behind


def test_a_crash_carries_the_tail_of_stderr_without_paths(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "print('loading weights from /srv/models/svd.safetensors', file=sys.stderr)\n"
        "print('CUDA out of memory', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    with pytest.raises(GenerationError) as caught:
        generator(python(tmp_path, script)).generate(
            request(tmp_path), lambda _: None, lambda: False
        )
    assert caught.value.code == "generator.crashed"
    assert caught.value.retryable is True
    assert "exited with 3" in caught.value.message
    assert "CUDA out of memory" in caught.value.message
    assert "/srv/models" not in caught.value.message


def test_an_output_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    script = "import sys\nopen(sys.argv[1], 'w').write('not a video')\n"
    with pytest.raises(GenerationError) as caught:
        generator(python(tmp_path, script)).generate(
            request(tmp_path), lambda _: None, lambda: False
        )
    assert (caught.value.code, caught.value.retryable) == ("generator.bad_output", False)
    assert list((tmp_path / "videos").iterdir()) == []


def test_a_program_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GenerationError) as caught:
        generator(["no-such-video-tool", "{output}"]).generate(
            request(tmp_path), lambda _: None, lambda: False
        )
    assert caught.value.code == "generator.crashed"
    assert "'no-such-video-tool'" in caught.value.message


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"argv": []}, "argv"),
        ({"argv": ["ffmpeg", "{image}"]}, "argv"),  # nowhere to write
        ({"argv": ["tool", "{imagee}", "{output}"]}, "argv.1"),
        ({"argv": ["tool", "{output}"], "timeout": 5}, "timeout"),
    ],
)
def test_bad_settings_name_their_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(GeneratorSettingError) as caught:
        build("cmd", settings)
    assert caught.value.key == key


def test_a_generators_file_runs_a_command_side_by_side(tmp_path: Path) -> None:
    file = tmp_path / "generators.toml"
    file.write_text(
        'default = "kenburns"\n'
        '[generators.kenburns]\nkind = "kenburns"\n'
        '[generators.zoom]\nkind = "command"\n'
        f"argv = {ZOOM!r}\n".replace("'", '"')
    )
    found = catalog.load(file)
    assert [(e.name, e.kind) for e in found.entries.values()] == [
        ("kenburns", "kenburns"),
        ("zoom", "command"),
    ]
    assert found.default == "kenburns"


SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample.mp4"
