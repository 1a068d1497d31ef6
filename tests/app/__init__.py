"""Routes in-process: `app_client` runs the app on a fresh database of the test's server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"


@contextmanager
def app_client(mongo_url: str, *, api_key: str, **settings: Any) -> Iterator[TestClient]:
    """A client of the app at `PUBLIC` (Twilio token `TOKEN`, admin key `api_key`) on a new
    database, with `settings` over the defaults; lifespan run, so background work too."""
    app_settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key=api_key,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="app_" + uuid.uuid4().hex[:8],
        **settings,
    )
    with TestClient(create_app(app_settings), base_url=PUBLIC) as client:
        yield client
