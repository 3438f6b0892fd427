"""The `vidledger` command, in process through `main([...])`, and once as a subprocess."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.db.engine import Database, open_database
from app.keys import Role, verify
from app.service import Actor, VideoService


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No stray VIDLEDGER_* variable or .env file; logging restored after `main`."""
    for name in list(os.environ):
        if name.startswith("VIDLEDGER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", db_url)
    return db_url


def test_keys_create_prints_only_the_secret(
    cli_db: str, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "frontend", "--role", "write"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1
    secret = lines[0]
    assert secret.startswith("vl_")
    principal = verify(database, secret)
    assert principal is not None
    assert (principal.name, principal.role) == ("frontend", Role.WRITE)


def test_keys_list_shows_names_and_roles_never_secrets(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "frontend", "--role", "write"]) == 0
    assert main(["keys", "create", "gpu", "--role", "worker"]) == 0
    secrets = capsys.readouterr().out.split()
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "frontend" in listing and "write" in listing
    assert "gpu" in listing and "worker" in listing
    for secret in secrets:
        assert secret not in listing
        assert secret.split("_", 2)[2] not in listing  # the random part


def test_keys_revoke(cli_db: str, database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "frontend", "--role", "write"]) == 0
    secret = capsys.readouterr().out.strip()
    assert main(["keys", "revoke", "frontend"]) == 0
    assert verify(database, secret) is None
    capsys.readouterr()
    assert main(["keys", "revoke", "frontend"]) == 1
    err = capsys.readouterr().err
    assert "frontend" in err
    assert "Traceback" not in err


def test_status_and_history_print_tables(
    cli_db: str, service: VideoService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.request_video("cat.png", "role_card", Actor("tester"), prompt="zoom")
    assert main(["status", "cat.png"]) == 0
    shown = capsys.readouterr().out
    assert "pending" in shown
    assert "role_card" in shown
    assert "cat.png" in shown

    assert main(["history", "cat.png"]) == 0
    shown = capsys.readouterr().out
    assert "VideoRequested" in shown
    assert "tester" in shown
    assert "pending" in shown


def test_status_of_an_image_never_seen(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "never.png"]) == 0
    assert "none" in capsys.readouterr().out


def test_bad_setting_is_one_line_and_exit_2(
    cli_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIDLEDGER_MAX_ATTEMPTS", "abc")
    assert main(["keys", "list"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "VIDLEDGER_MAX_ATTEMPTS" in lines[0]
    assert "Traceback" not in captured.err


def test_unmigrated_sqlite_asks_for_db_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIDLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["keys", "list"]) == 2
    err = capsys.readouterr().err
    assert "vidledger db upgrade" in err
    assert "Traceback" not in err


def test_end_to_end_as_a_subprocess(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDLEDGER_")}
    env["VIDLEDGER_DATABASE_URL"] = url

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    made = run("keys", "create", "x", "--role", "admin")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vl_")
    db = open_database(url, pool_size=1)
    try:
        principal = verify(db, lines[0])
    finally:
        db.dispose()
    assert principal is not None
    assert (principal.name, principal.role) == ("x", Role.ADMIN)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["statuss"], "No such command 'statuss'"),
        (["status"], "Missing argument"),
        (["keys", "create", "bob", "--role", "root"], "Invalid value for '--role'"),
        (["history", "a.png", "--limit", "many"], "Invalid value for '--limit'"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_a_usage_error_is_one_line_and_the_usage_with_exit_2_and_no_traceback(
    cli_db: str, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert main(argv) == 2
    shown = capsys.readouterr()
    assert said in shown.err
    assert "Usage:" in shown.err
    assert "Traceback" not in shown.err + shown.out


def test_a_usage_error_as_a_subprocess_prints_no_traceback(cli_db: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "statuss"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "No such command" in done.stderr and "Traceback" not in done.stderr


def test_piped_tables_are_not_cut_to_80_columns(cli_db: str) -> None:
    env = {**os.environ, "VIDLEDGER_DATABASE_URL": cli_db, "COLUMNS": "40"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "projections", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    whole = [line for line in done.stdout.splitlines() if "image_video_status" in line]
    assert len(whole) == 1, done.stdout
    assert "…" not in done.stdout


def test_every_data_command_prints_json_with_json(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = open_database(cli_db, pool_size=1)
    try:
        VideoService(db).request_video("a.png", "scene", Actor("app"), prompt="zoom")
    finally:
        db.dispose()
    assert main(["keys", "create", "ops", "--role", "admin"]) == 0
    capsys.readouterr()

    def lines(argv: list[str]) -> list[Any]:
        assert main([*argv, "--json"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    [status] = lines(["status", "a.png"])
    assert (status["video_status"], status["prompt"], status["version"]) == ("pending", "zoom", 1)
    [requested] = lines(["history", "a.png"])
    assert (requested["event_type"], requested["to_status"]) == ("VideoRequested", "pending")
    [projection] = lines(["projections", "status"])
    assert projection["name"] == "image_video_status" and projection["rows"] == 1
    [key] = lines(["keys", "list"])
    assert (key["name"], key["role"], key["revoked_at"]) == ("ops", "admin", None)
    assert "secret" not in key and "hash" not in json.dumps(key)


def _commands() -> list[tuple[list[str], list[str]]]:
    """Every command of the CLI tree: its path, and its required arguments."""
    import typer

    from app.cli.base import cli

    found: list[tuple[list[str], list[str]]] = []

    def walk(command: Any, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
            return
        required = [p.name for p in command.params if p.param_type_name == "argument"]
        found.append((path, required))

    walk(typer.main.get_command(cli), [])
    return found


COMMANDS = _commands()


@pytest.mark.parametrize(("path", "required"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_answers_a_usage_error_with_the_usage_and_exit_2(
    cli_db: str, capsys: pytest.CaptureFixture[str], path: list[str], required: list[str]
) -> None:
    assert main([*path, "--no-such-option"]) == 2
    shown = capsys.readouterr()
    assert "No such option" in shown.err and "Usage:" in shown.err
    assert "Traceback" not in shown.err + shown.out
    assert len([line for line in shown.err.splitlines() if "Error" in line]) == 1
    if required:
        assert main(path) == 2  # its argument left out
        shown = capsys.readouterr()
        assert "Missing argument" in shown.err and "Usage:" in shown.err
        assert "Traceback" not in shown.err + shown.out


def _json_tool(stdout: str, lines: bool) -> None:
    args = [sys.executable, "-m", "json.tool", *(["--json-lines"] if lines else [])]
    done = subprocess.run(args, input=stdout, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (stdout, done.stderr)


def test_every_data_command_s_json_goes_through_json_tool(
    cli_db: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIDLEDGER_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")
    db = open_database(cli_db, pool_size=1)
    try:
        for name in ("a.png", "b.png"):
            VideoService(db).request_video(name, "scene", Actor("app"))
    finally:
        db.dispose()
    exported = tmp_path / "log.jsonl"
    single = [
        ["status", "a.png"],
        ["db", "current"],
        ["keys", "create", "ops", "--role", "admin"],
        ["keys", "revoke", "ops"],
        ["projections", "verify"],
        ["projections", "rebuild"],
        ["events", "export", str(exported)],
        ["events", "import", str(exported)],
        ["webhooks", "add", "http://127.0.0.1:9/in"],
    ]
    listed = [
        ["history", "a.png"],
        ["keys", "list"],
        ["projections", "status"],
        ["generators", "list"],
        ["events", "tail"],
        ["webhooks", "list"],
    ]
    for argv, lines in [*((a, False) for a in single), *((a, True) for a in listed)]:
        code = main([*argv, "--json"])
        shown = capsys.readouterr()
        assert code == 0, (argv, shown.err)
        assert shown.out.strip(), argv
        if not lines:
            assert len(shown.out.strip().splitlines()) == 1, (argv, shown.out)
        _json_tool(shown.out, lines)


def test_events_tail_shows_the_last_events_oldest_first(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = open_database(cli_db, pool_size=1)
    try:
        for i in range(5):
            VideoService(db).request_video(f"img{i}.png", "scene", Actor("app"))
    finally:
        db.dispose()
    assert main(["events", "tail", "--limit", "2", "--json"]) == 0
    tail = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["img_name"] for e in tail] == ["img3.png", "img4.png"]
    assert main(["events", "tail", "--img", "img1.png"]) == 0
    table = capsys.readouterr().out
    assert "img1.png" in table and "img2.png" not in table


def test_events_tail_follows_new_events(cli_db: str) -> None:
    env = {**os.environ, "VIDLEDGER_DATABASE_URL": cli_db}
    with subprocess.Popen(
        [sys.executable, "-m", "app.cli", "events", "tail", "--follow", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follower:
        try:
            db = open_database(cli_db, pool_size=1)
            try:
                VideoService(db).request_video("late.png", "scene", Actor("app"))
            finally:
                db.dispose()
            assert follower.stdout is not None
            line = follower.stdout.readline()  # blocks until the follower prints it
            assert json.loads(line)["img_name"] == "late.png"
        finally:
            follower.terminate()
            follower.wait(10)
