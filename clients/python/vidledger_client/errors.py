"""Errors a caller can catch by name.

Every answer of 400 or more becomes an `ApiError` carrying the problem's
`status`, `code`, `detail` and the server's `request_id`; each problem
code has its own subclass (`VideoInProgress`, `LeaseLost`, …), and the
subclasses of one kind share a parent (`TransitionRefused`).
"""

from __future__ import annotations

from typing import Any


class VidLedgerError(Exception):
    """Anything this client raises on purpose."""


class ConnectionFailed(VidLedgerError):
    """The server could not be reached (after the retries)."""


class ApiError(VidLedgerError):
    """The server answered with a problem (RFC 9457)."""

    #: The problem code this class stands for; None for the base class.
    code_name: str | None = None

    def __init__(
        self,
        status: int,
        code: str | None,
        detail: str,
        *,
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code or 'error'}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        #: The whole problem body, extra members included (e.g. `errors`).
        self.problem: dict[str, Any] = problem or {}


class ValidationError(ApiError):
    code_name = "validation_error"

    @property
    def errors(self) -> list[dict[str, Any]]:
        """`[{"loc": [...], "msg": ...}]`: what was wrong, field by field."""
        return list(self.problem.get("errors") or [])


class IdempotencyKeyReused(ApiError):
    code_name = "idempotency_key_reused"


class TransitionRefused(ApiError):
    """The state machine refused the change (409)."""


class VideoInProgress(TransitionRefused):
    code_name = "video_in_progress"


class VideoExists(TransitionRefused):
    code_name = "video_exists"


class InvalidTransition(TransitionRefused):
    code_name = "invalid_transition"


class LeaseLost(ApiError):
    code_name = "lease_lost"


class NotFound(ApiError):
    code_name = "not_found"


class Unauthorized(ApiError):
    code_name = "unauthorized"


class Forbidden(ApiError):
    code_name = "forbidden"


class PayloadTooLarge(ApiError):
    code_name = "payload_too_large"


class RangeNotSatisfiable(ApiError):
    code_name = "range_not_satisfiable"


class Unavailable(ApiError):
    code_name = "unavailable"


class ServerError(ApiError):
    """A 5xx the server did not describe further."""


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code_name: cls
    for cls in (
        ValidationError,
        IdempotencyKeyReused,
        VideoInProgress,
        VideoExists,
        InvalidTransition,
        LeaseLost,
        NotFound,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        RangeNotSatisfiable,
        Unavailable,
    )
    if cls.code_name is not None
}


def error_for(status: int, body: Any, request_id: str | None, fallback: str = "") -> ApiError:
    """The `ApiError` subclass for an answer's status and problem body."""
    problem = body if isinstance(body, dict) else {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    detail = str(problem.get("detail") or fallback or f"HTTP {status}")
    cls = _BY_CODE.get(code or "") or (ServerError if status >= 500 else ApiError)
    return cls(status, code, detail, request_id=request_id, problem=problem)


class VideoFailed(VidLedgerError):
    """`wait` saw the video end without a video: failed or cancelled."""

    def __init__(self, status: Any) -> None:
        error = getattr(status, "error", None)
        why = f": {error.code}: {error.message}" if error is not None else ""
        super().__init__(f"the video of {status.img_name!r} is {status.video_status}{why}")
        #: The final VideoStatus.
        self.status = status


class WaitTimeout(VidLedgerError):
    """`wait` gave up before the video finished."""

    def __init__(self, img_name: str, timeout: float, last: Any) -> None:
        super().__init__(f"{img_name!r} did not finish within {timeout:g} s")
        #: The last VideoStatus seen.
        self.last = last


class WebhookVerificationError(VidLedgerError):
    """A webhook whose signature or timestamp does not check out."""
