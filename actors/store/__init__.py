"""Durable state in Postgres: the pool, migrations, the embedded server."""

from actors.store.database import EmbeddedPostgres, StoreError, migrate, open_pool

__all__ = ["EmbeddedPostgres", "StoreError", "migrate", "open_pool"]
