"""The PostgreSQL storage backend."""

from app.db.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
