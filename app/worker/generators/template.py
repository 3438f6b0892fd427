"""Placeholders in a generator's settings: `{image}`, `{prompt}`, `{params.motion}`…

A `cog` generator's `input` and a `command` generator's `argv` are
templates filled per task. A string that is exactly one placeholder takes
the value with its JSON type (a number stays a number); a placeholder inside
other text is written as text. `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from app.worker.generators.catalog import GeneratorSettingError

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_PARAM_KEY = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What a placeholder of a param the request did not send, or of a None, fills.
MISSING: Any = _Missing()


def check(template: Any, allowed: set[str], key: str) -> None:
    """Raise `GeneratorSettingError` at `key` for a placeholder not in
    `allowed` (`params.<key>` is allowed when `params` is), or a stray brace."""
    if isinstance(template, dict):
        for k, v in template.items():
            check(v, allowed, f"{key}.{k}")
    elif isinstance(template, list):
        for i, v in enumerate(template):
            check(v, allowed, f"{key}.{i}")
    elif isinstance(template, str):
        rest = _TOKEN.sub("", template)
        if "{" in rest or "}" in rest:
            raise GeneratorSettingError(key, "unbalanced brace (write {{ or }} for a literal one)")
        for match in _TOKEN.finditer(template):
            name = match.group(1)
            if name is None:
                continue
            head, _, param = name.partition(".")
            ok = name in allowed or (head == "params" and "params" in allowed and param != "")
            if not ok or (param and not _PARAM_KEY.fullmatch(param)):
                known = ", ".join("{" + a + "}" for a in sorted(allowed))
                raise GeneratorSettingError(
                    key, f"unknown placeholder {{{name}}}; known: {known} and {{params.<key>}}"
                )


def _lookup(name: str, values: Mapping[str, Any]) -> Any:
    head, _, param = name.partition(".")
    value = values.get(head, MISSING)
    if param:
        value = value.get(param, MISSING) if isinstance(value, dict) else MISSING
    return MISSING if value is None else value


def _as_text(value: Any) -> str:
    if value is MISSING:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def fill_text(template: str, values: Mapping[str, Any]) -> str:
    """`template` with every placeholder written as text."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return _as_text(_lookup(match.group(1), values))

    return _TOKEN.sub(one, template)


def fill(template: Any, values: Mapping[str, Any]) -> Any:
    """`template` filled: whole-placeholder strings keep their value's type,
    and a table's key whose value is `MISSING` is left out (so the model's
    own default applies)."""
    if isinstance(template, dict):
        filled = {k: fill(v, values) for k, v in template.items()}
        return {k: v for k, v in filled.items() if v is not MISSING}
    if isinstance(template, list):
        return [v for v in (fill(item, values) for item in template) if v is not MISSING]
    if isinstance(template, str):
        whole = _TOKEN.fullmatch(template)
        if whole and whole.group(1) is not None:
            return _lookup(whole.group(1), values)
        return fill_text(template, values)
    return template
