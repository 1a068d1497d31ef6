"""Shared fixtures: one real FerretDB (MongoDB wire protocol) per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from storage import Database, EmbeddedFerretDB, open_database


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-wire server: $TEST_MONGODB_URL, or an embedded FerretDB started here."""
    external = os.environ.get("TEST_MONGODB_URL")
    if external:
        yield external
        return
    with EmbeddedFerretDB(data_dir=tmp_path_factory.mktemp("ferretdb")) as server:
        yield server.url


@pytest.fixture
async def database(mongo_url: str) -> AsyncIterator[Database]:
    """A database with a fresh name on the session's server."""
    db = await open_database(mongo_url, "test_" + uuid.uuid4().hex[:12])
    try:
        yield db
    finally:
        await db.close()
