"""Upcasters: old payload shapes turned into today's when they are read.

Stored rows never change. Each step is a named pure function registered for
(event type, the schema version it reads); `upcast` chains them.
"""

from __future__ import annotations

from collections.abc import Callable

from app.events.types import CURRENT_SCHEMA, DEFAULT_PARAMS, FIRST_GENERATOR, Json
from app.lifecycle import EventType

Upcaster = Callable[[Json], Json]


def video_requested_v1_to_v2(data: Json) -> Json:
    """v1 had no generation settings; v2 carries them, with today's defaults."""
    return {**data, "params": dict(DEFAULT_PARAMS)}


def video_requested_v2_to_v3(data: Json) -> Json:
    """v3 names its generator; before, there was only the built-in one."""
    return {**data, "generator": FIRST_GENERATOR}


UPCASTERS: dict[tuple[EventType, int], Upcaster] = {
    (EventType.REQUESTED, 1): video_requested_v1_to_v2,
    (EventType.REQUESTED, 2): video_requested_v2_to_v3,
}


def upcast(event_type: EventType, schema_version: int, data: Json) -> Json:
    """Bring `data` from `schema_version` to the current schema of `event_type`.

    Raises ValueError for a version newer than this code knows, or for a gap
    in the chain: an event the code cannot read must stop the reader, not be
    skipped.
    """
    target = CURRENT_SCHEMA[event_type]
    if schema_version > target:
        raise ValueError(
            f"{event_type.value} v{schema_version} is newer than this code (v{target})"
        )
    version = schema_version
    while version < target:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise ValueError(f"no upcaster for {event_type.value} v{version}")
        data = step(data)
        version += 1
    return data
