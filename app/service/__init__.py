"""Use cases: commands (`videos`, `tasks`) and reads (`queries`).

They return domain results (`results`) and know nothing of HTTP. The edges
(`api`, `worker`, `cli`) call them and nothing below them.
"""

from app.service.base import CONFLICT_RETRIES, Actor, GeneratorNames, Policy, utcnow
from app.service.results import Heartbeat, Idempotency, Outcome, Page, Replayed, Task, VideoState
from app.service.tasks import TaskCommands
from app.service.videos import IDEMPOTENCY_TTL, VideoCommands


class VideoService(VideoCommands, TaskCommands):
    """Every command of `app.lifecycle` over one `Database`."""


__all__ = [
    "CONFLICT_RETRIES",
    "IDEMPOTENCY_TTL",
    "Actor",
    "GeneratorNames",
    "Heartbeat",
    "Idempotency",
    "Outcome",
    "Page",
    "Policy",
    "Replayed",
    "Task",
    "VideoService",
    "VideoState",
    "utcnow",
]
