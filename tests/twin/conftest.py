"""Twin fixtures: the store tests' database URLs (SQLite, and PostgreSQL when one is reachable)."""

from __future__ import annotations

from tests.store.conftest import store_url

__all__ = ["store_url"]
