"""Settings the app factory refuses at start-up: a placeholder or guessable GATEWAY_API_KEY."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ConfigError
from gateway.settings import Settings


def _settings(mongo_url: str, key: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url="https://gw.example.com",
        twilio_auth_token="test-auth-token",  # type: ignore[arg-type]
        gateway_api_key=key,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="startup_" + uuid.uuid4().hex[:8],
    )


@pytest.mark.parametrize(
    "key", ["change-me", "changeme", "password", "x" * 32, "change-me-please-change-me"]
)
def test_a_weak_gateway_api_key_is_refused_at_start(mongo_url: str, key: str) -> None:
    with pytest.raises(ConfigError, match=r"GATEWAY_API_KEY is refused: it .*create-key") as err:
        create_app(_settings(mongo_url, key))
    assert key not in str(err.value)


def test_a_random_gateway_api_key_serves(mongo_url: str) -> None:
    key = "vg_" + uuid.uuid4().hex
    with TestClient(create_app(_settings(mongo_url, key))) as client:
        assert client.get("/api-keys", headers={"x-api-key": key}).status_code == 200
