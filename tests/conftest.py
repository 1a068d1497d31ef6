"""Shared fixtures: one real FerretDB (MongoDB wire protocol) per test session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from storage import Database, open_database
from tests.ferretdb_server import embedded_ferretdb
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.s3_server import S3Server, run_s3_server


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-wire server: $TEST_MONGODB_URL, or an embedded FerretDB started here."""
    external = os.environ.get("TEST_MONGODB_URL")
    if external:
        yield external
        return
    with embedded_ferretdb(tmp_path_factory.mktemp("ferretdb")) as server:
        yield server.url


@pytest.fixture
async def database(mongo_url: str) -> AsyncIterator[Database]:
    """A database with a fresh name on the session's server."""
    db = await open_database(mongo_url, "test_" + uuid.uuid4().hex[:12])
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running behind it."""
    yield
    current = asyncio.current_task()
    for _ in range(50):
        leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0.01)
    names = ", ".join(sorted(t.get_name() for t in leaked))
    pytest.fail(f"asyncio tasks leaked by the test: {names}")


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A real livekit-server (with Redis) shared by the session's tests."""
    with run_livekit_server(tmp_path_factory.mktemp("livekit")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto's server mode) shared by the session's tests."""
    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    name = "rec-" + uuid.uuid4().hex[:12]
    s3_server.client().create_bucket(Bucket=name)
    return name
