"""/ui: the operator dashboard. Page shells only; their scripts read the JSON API."""

from app.ui.pages import mount

__all__ = ["mount"]
