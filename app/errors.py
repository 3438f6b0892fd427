"""The AppError tree: every outcome a caller can be refused with.

This module imports nothing from `app`; the HTTP edge maps each class to one
status and problem `code` in `app/api/errors.py`.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of every domain error; `detail` is the sentence shown to people."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(AppError):
    """Input that breaks the contract (bad name, unknown field, …)."""


class IdempotencyKeyReused(AppError):
    """The same Idempotency-Key arrived with a different body."""


class TransitionRefused(AppError):
    """The state machine refused a transition; subclasses say which kind."""


class VideoInProgress(TransitionRefused):
    """A request while the image's video is pending or processing."""


class VideoExists(TransitionRefused):
    """A request while a video is completed, without `regenerate`."""


class InvalidTransition(TransitionRefused):
    """Any other refused transition."""


class LeaseLost(AppError):
    """A worker write whose lease token is no longer current."""


class NotFound(AppError):
    """No such resource."""


class Unauthorized(AppError):
    """Missing or unknown API key."""


class Forbidden(AppError):
    """The key's role does not allow this."""


class PayloadTooLarge(AppError):
    """The request body is over the size limit."""


class RangeNotSatisfiable(AppError):
    """A Range request that starts past the end of the file."""


class Unavailable(AppError):
    """The database cannot be reached right now; the caller may retry."""


class ConcurrencyConflict(AppError):
    """Another writer appended to the stream first (expected version moved).

    Internal: the service decides again; it never reaches a client as such.
    """


class ConfigError(AppError):
    """A setting that cannot be used; startup stops with one line."""
