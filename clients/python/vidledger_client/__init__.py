"""vidledger-client: a typed client for the vidledger API, sync and async.

    from vidledger_client import VidLedger

    with VidLedger("http://127.0.0.1:8000", api_key="...") as vl:
        vl.videos.request("cat.png", "scene", prompt="slow zoom")
        done = vl.videos.wait("cat.png", timeout=300)

See README.md beside this package for waiting, streaming and webhooks.
"""

from vidledger_client.aio import AsyncVidLedger
from vidledger_client.client import VidLedger
from vidledger_client.errors import (
    ApiError,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    InvalidTransition,
    LeaseLost,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ServerError,
    TransitionRefused,
    Unauthorized,
    Unavailable,
    ValidationError,
    VideoExists,
    VideoFailed,
    VideoInProgress,
    VidLedgerError,
    WaitTimeout,
    WebhookVerificationError,
)
from vidledger_client.models import (
    Delivery,
    Endpoint,
    EndpointCreated,
    Event,
    GeneratorInfo,
    Heartbeat,
    Me,
    Stats,
    Task,
    Transition,
    VideoError,
    VideoStatus,
    WebhookMessage,
)
from vidledger_client.webhooks import verify

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncVidLedger",
    "ConnectionFailed",
    "Delivery",
    "Endpoint",
    "EndpointCreated",
    "Event",
    "Forbidden",
    "GeneratorInfo",
    "Heartbeat",
    "IdempotencyKeyReused",
    "InvalidTransition",
    "LeaseLost",
    "Me",
    "NotFound",
    "PayloadTooLarge",
    "RangeNotSatisfiable",
    "ServerError",
    "Stats",
    "Task",
    "Transition",
    "TransitionRefused",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
    "VidLedger",
    "VidLedgerError",
    "VideoError",
    "VideoExists",
    "VideoFailed",
    "VideoInProgress",
    "VideoStatus",
    "WaitTimeout",
    "WebhookMessage",
    "WebhookVerificationError",
    "verify",
]
