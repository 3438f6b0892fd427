"""Settings, from the environment (prefix `VIDLEDGER_`) or a `.env` file.

Only the edges (`create_app`, `cli.main`) read them; deeper code receives
plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigError
from app.service.webhook_urls import parse_networks


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDLEDGER_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./var/vidledger.db"
    #: A read replica of `database_url` for status reads (single, batch, listing).
    read_replica_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    images_dir: Path = Path("./var/images")
    videos_dir: Path = Path("./var/videos")
    max_attempts: int = Field(3, ge=1, le=100)
    lease_seconds: int = Field(60, ge=1, le=86_400)
    backoff_base_seconds: float = Field(2.0, gt=0, le=3600)
    backoff_cap_seconds: float = Field(300.0, gt=0, le=86_400)
    pool_size: int = Field(20, ge=1, le=500)
    #: The generators file (README, "Generators"); default ./generators.toml when present.
    generators_file: Path | None = None
    worker_concurrency: int = Field(1, ge=1, le=64)
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=3600)
    task_timeout_seconds: float = Field(600.0, gt=0, le=86_400)
    #: How often the reaper looks for expired leases.
    reap_interval_seconds: float = Field(5.0, gt=0, le=3600)
    #: Webhooks: a receiver's time to answer; the waits between attempts (seconds,
    #: the first before the first attempt); how long an endpoint may fail with
    #: nothing delivered before it is disabled; CIDRs allowed despite being private.
    webhook_timeout_seconds: float = Field(15.0, gt=0, le=300)
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,36000"
    webhook_disable_after_seconds: float = Field(5 * 86400, gt=0)
    webhook_allowed_networks: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        schedule_of(value)
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("database_url", "read_replica_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value is not None else None


def schedule_of(text: str) -> tuple[float, ...]:
    """`0,5,300`: the waits before each attempt. Raises ValueError."""
    try:
        waits = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("must be comma-separated seconds, e.g. 0,5,300") from None
    if not waits or any(w < 0 or w != w for w in waits):
        raise ValueError("must be comma-separated seconds, each 0 or more")
    return waits


def normalize_database_url(value: str) -> str:
    """Accept sqlite:/// and postgresql:// URLs; PostgreSQL always goes through psycopg2."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if value.startswith(prefix):
            return "postgresql+psycopg2://" + value[len(prefix) :]
    if value.startswith("sqlite:"):
        return value
    raise ValueError("must be a sqlite:/// or postgresql:// URL")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value raises `ConfigError` in one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic-settings kwargs
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"VIDLEDGER_{field.upper()}: {first['msg']}") from None
