"""The SQLite storage backend (the embedded default)."""

from app.db.sqlite.backend import SqliteBackend

__all__ = ["SqliteBackend"]
