"""The HTTP API, version 1 (OpenAPI at `/docs`). `create_app` is its composition root."""

from app.api.app import create_app, freeze_startup_heap

__all__ = ["create_app", "freeze_startup_heap"]
