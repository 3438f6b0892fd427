"""The replay process of a parallel rebuild, driven as the rebuild drives it."""

from __future__ import annotations

from app.projections import replay_process


def _answers(task: object) -> tuple[list[object], int]:
    proc = replay_process.start()
    replay_process.give(proc, task)  # type: ignore[arg-type]
    assert proc.stdout is not None
    with proc.stdout as output:
        answers = [replay_process.parse(line) for line in output]
    return answers, proc.wait(timeout=30)


def test_a_process_with_nothing_to_do_reports_no_rows() -> None:
    assert _answers(None) == ([{"rows": 0}], 0)


def test_a_failed_replay_is_one_error_message_without_secrets_or_traceback() -> None:
    task = {
        "url": "postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/nowhere",
        "batch": 10,
        "cursor": "0.0",
        "lower": None,
        "upper": None,
    }
    answers, code = _answers(task)
    assert code == 1
    assert len(answers) == 1 and set(answers[0]) == {"error"}  # type: ignore[arg-type]
    error = answers[0]["error"]  # type: ignore[index]
    assert "the database is unavailable" in error
    assert "s3cret" not in error and "Traceback" not in error


def test_a_stopped_process_ends_though_it_never_got_a_task() -> None:
    proc = replay_process.start()
    replay_process.stop(proc)
    assert proc.returncode == 0
    assert proc.stdout is not None
    with proc.stdout as output:
        assert [replay_process.parse(line) for line in output] == [{"rows": 0}]
