"""Checking a webhook delivery: the Standard Webhooks signature and its age.

    message = verify(body, headers, secret)   # raises WebhookVerificationError

`body` is the raw request body (bytes or str, exactly as received: parse
it only after checking); `headers` any mapping with the `webhook-id`,
`webhook-timestamp` and `webhook-signature` headers (case-blind); `secret`
the endpoint's `whsec_…` secret. While a rotated secret's predecessor is
still live, the delivery carries a signature of each: either one verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from vidledger_client.errors import WebhookVerificationError
from vidledger_client.models import WebhookMessage

#: How far a delivery's timestamp may be from now, either way (replay window).
TOLERANCE_SECONDS = 5 * 60
PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_ secret") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing the {name} header")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<signature>` of one delivery: what a sender puts in `webhook-signature`."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookMessage:
    """The delivery's message, if its signature is `secret`'s and its
    timestamp within `tolerance` seconds of `now`; else raises
    `WebhookVerificationError`."""
    raw = body.encode() if isinstance(body, str) else body
    message_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("the webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("the webhook-timestamp is too old or too new")
    expected = sign(secret, message_id, timestamp, raw).encode()
    given = _header(headers, "webhook-signature").split()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in given):
        raise WebhookVerificationError("no signature matches the secret")
    return WebhookMessage.model_validate_json(raw)
