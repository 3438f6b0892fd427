"""Random command sequences: the projection always equals a fresh fold of the log,
and the status always matches a model of `app.lifecycle`."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.db.engine import Database
from app.db.tables import image_status
from app.errors import LeaseLost, TransitionRefused
from app.events import store
from app.lifecycle import ACTIVE, Status
from app.projections import status as projection
from app.service import Actor, Policy, VideoService

ME = Actor("prop")
IMAGES = ["a.png", "b.png", "c.png"]
COMMANDS = [
    "request",
    "regenerate",
    "cancel",
    "retry",
    "delete",
    "claim",
    "complete",
    "fail_retryable",
    "fail_fatal",
    "heartbeat",
]

command = st.tuples(st.sampled_from(COMMANDS), st.sampled_from(IMAGES))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(command, min_size=1, max_size=30))
def test_projection_equals_the_fold_after_any_sequence(
    database: Database, steps: list[tuple[str, str]]
) -> None:
    svc = VideoService(
        database, Policy(max_attempts=2, backoff_base_seconds=0.0001, backoff_cap_seconds=0.0001)
    )
    run = uuid.uuid4().hex[:8]
    kind = f"s{run}"  # each example claims only its own images
    model: dict[str, Status] = {}
    tokens: dict[str, str] = {}
    for name, img in steps:
        img = f"{run}-{img}"
        current = model.get(img, Status.NONE)
        try:
            if name in ("request", "regenerate"):
                svc.request_video(img, kind, ME, regenerate=name == "regenerate")
                assert current not in ACTIVE
                assert current is not Status.COMPLETED or name == "regenerate"
                model[img] = Status.PENDING
            elif name == "cancel":
                answer = svc.cancel_video(img, ME)
                assert current in ACTIVE
                model[img] = answer.row.video_status
            elif name == "retry":
                svc.retry_video(img, ME)
                assert current in (Status.FAILED, Status.CANCELLED)
                model[img] = Status.PENDING
            elif name == "delete":
                svc.delete_video(img, ME)
                assert current in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
                model[img] = Status.NONE
            elif name == "claim":
                task = svc.claim_task("w", source_types=[kind])
                if task is None:
                    assert Status.PENDING not in model.values()
                else:
                    assert model[task.img_name] is Status.PENDING
                    tokens[task.img_name] = task.lease_token
                    model[task.img_name] = Status.PROCESSING
            else:
                token = tokens.get(img, "no-token")
                if name == "complete":
                    svc.complete_task(img, token, f"{img}.mp4")
                    model[img] = Status.COMPLETED
                elif name == "heartbeat":
                    svc.heartbeat(img, token, 0.5)
                else:
                    retryable = name == "fail_retryable"
                    state = svc.fail_task(img, token, "generator.crashed", "x", retryable)
                    model[img] = state.row.video_status
                assert current is Status.PROCESSING
                if model[img] is not Status.PROCESSING:
                    del tokens[img]
        except LeaseLost:
            assert current is not Status.PROCESSING or img not in tokens
        except TransitionRefused:
            pass  # each success branch above asserts the model agreed it was allowed
    with database.read() as conn:
        for img in {f"{run}-{i}" for i in IMAGES}:
            folded = projection.fold(store.read_stream(conn, img), img)
            row = (
                conn.execute(
                    select(*[image_status.c[c] for c in projection.COLUMNS]).where(
                        image_status.c.img_name == img
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                assert folded.version == 0
                continue
            assert projection.row_from_mapping(row).as_values() == folded.as_values()
            assert folded.video_status is model.get(img, Status.NONE)
