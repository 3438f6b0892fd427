"""requirements.lock is what gets installed: every dependency pinned, hashed, and in use."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, how many hashes)."""
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = PIN.match(line)
        if pin:
            current = _norm(pin.group(1))
            found[current] = (pin.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {_norm(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def test_every_declared_dependency_is_pinned_with_hashes() -> None:
    locked = _locked()
    assert _declared() <= set(locked), _declared() - set(locked)
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert not unhashed, unhashed


def test_the_installed_versions_are_the_locked_ones() -> None:
    installed: dict[str, str | None] = {}
    for name in _locked():
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
    differ = {n: (v, installed[n]) for n, (v, _) in _locked().items() if installed[n] != v}
    assert not differ, f"installed differs from requirements.lock (run make install): {differ}"
