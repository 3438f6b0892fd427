"""The generators file: named generators of pluggable kinds, side by side.

```toml
default = "kenburns"

[generators.kenburns]
kind = "kenburns"

[generators.svd]
kind = "cog"
url = "http://gpu-1:5000"
```

A kind is a callable `build(name, settings) -> VideoGenerator`, found in
the entry-point group `vidledger.generators`; `kenburns`, `cog` and
`command` ship built in, and any installed package can add one. A kind
validates its own settings with `settings_of`, so that every mistake in
the file is one line that names the generator and the key.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.errors import ConfigError
from app.events.types import FIRST_GENERATOR
from app.naming import GENERATOR_RE
from app.worker.generators.base import VideoGenerator

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vidledger.generators"
#: Read when `VIDLEDGER_GENERATORS_FILE` is not set and this file exists.
DEFAULT_FILE = Path("generators.toml")

Kind = Callable[[str, Mapping[str, Any]], VideoGenerator]
M = TypeVar("M", bound=BaseModel)


class GeneratorSettingError(ValueError):
    """One bad setting: `key` is its dotted place under the generator's table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def settings_of(model: type[M], settings: Mapping[str, Any]) -> M:
    """`settings` validated as `model` (which should forbid extra keys).
    Raises `GeneratorSettingError` for the first mistake."""
    try:
        return model.model_validate(dict(settings))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "settings"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise GeneratorSettingError(key, message) from None


@dataclass(frozen=True)
class Configured:
    name: str
    kind: str
    generator: VideoGenerator


@dataclass(frozen=True)
class Catalog:
    """The configured generators, in the file's order, and the default one."""

    entries: dict[str, Configured]
    default: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def select(self, wanted: list[str] | None) -> dict[str, VideoGenerator]:
        """The generators a worker runs: `wanted`, or all of them. Raises
        `ConfigError` for a name that is not configured."""
        names = wanted or list(self.entries)
        unknown = [n for n in names if n not in self.entries]
        if unknown:
            known = ", ".join(self.entries)
            raise ConfigError(f"unknown generator {unknown[0]!r}; configured: {known}")
        return {n: self.entries[n].generator for n in dict.fromkeys(names)}


def kinds() -> dict[str, Kind]:
    """Every installed kind, by name."""
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def builtin() -> Catalog:
    """No generators file: the built-in generator alone, as before there were files."""
    build = kinds()[FIRST_GENERATOR]
    only = Configured(FIRST_GENERATOR, FIRST_GENERATOR, build(FIRST_GENERATOR, {}))
    return Catalog({FIRST_GENERATOR: only}, FIRST_GENERATOR)


def generators_file(configured: Path | None) -> Path | None:
    """The file to read: the configured one, else `./generators.toml` when present."""
    if configured is not None:
        return configured
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def load(configured: Path | None) -> Catalog:
    """The catalog of the generators file, or the built-in one without a file.
    Raises `ConfigError`, in one line naming the generator and the key."""
    path = generators_file(configured)
    if path is None:
        return builtin()
    where = path.name  # the operator's own file, named without the server's folders
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"generators file {where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"generators file {where}: cannot be read ({type(exc).__name__})"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"generators file {where}: not valid TOML: {exc}") from None
    try:
        return parse(document)
    except GeneratorSettingError as exc:
        raise ConfigError(f"generators file {where}: {exc}") from None


def parse(document: Mapping[str, Any]) -> Catalog:
    """A catalog from a parsed generators file. Raises `GeneratorSettingError`."""
    unknown = set(document) - {"default", "generators"}
    if unknown:
        raise GeneratorSettingError(
            sorted(unknown)[0], "unknown key (expected default, generators)"
        )
    tables = document.get("generators")
    if not isinstance(tables, dict) or not tables:
        raise GeneratorSettingError("generators", "declare at least one [generators.<name>] table")
    available = kinds()
    entries: dict[str, Configured] = {}
    for name, table in tables.items():
        key = f"generators.{name}"
        if not GENERATOR_RE.fullmatch(name):
            raise GeneratorSettingError(key, f"a name must match {GENERATOR_RE.pattern}")
        if not isinstance(table, dict):
            raise GeneratorSettingError(key, "must be a table")
        kind = table.get("kind")
        if kind is None:
            raise GeneratorSettingError(f"{key}.kind", "missing")
        if kind not in available:
            known = ", ".join(sorted(available))
            raise GeneratorSettingError(f"{key}.kind", f"unknown kind {kind!r}; installed: {known}")
        settings = {k: v for k, v in table.items() if k != "kind"}
        try:
            generator = available[kind](name, settings)
        except GeneratorSettingError as exc:
            raise GeneratorSettingError(f"{key}.{exc.key}", exc.message) from None
        entries[name] = Configured(name, kind, generator)
    default = document.get("default", next(iter(entries)))
    if not isinstance(default, str) or default not in entries:
        known = ", ".join(entries)
        raise GeneratorSettingError(
            "default", f"{default!r} is not a generator here; known: {known}"
        )
    return Catalog(entries, default)
