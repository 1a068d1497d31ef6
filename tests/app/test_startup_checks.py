"""What the app factory refuses at start-up: a placeholder or guessable GATEWAY_API_KEY,
turn models that are missing or fail their hash check (never fetched at run time), and a
price table that cannot be right."""

from __future__ import annotations

import uuid
from pathlib import Path

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


def test_a_missing_turn_model_stops_start_up_with_how_to_install(
    mongo_url: str, tmp_path: Path
) -> None:
    settings = _settings(mongo_url, "vg_" + uuid.uuid4().hex)
    with pytest.raises(ConfigError, match=r"cannot be read .*scripts/ensure-models.sh"):
        create_app(settings.model_copy(update={"turn_models_dir": tmp_path}))


def test_a_corrupt_turn_model_stops_start_up(mongo_url: str, tmp_path: Path) -> None:
    settings = _settings(mongo_url, "vg_" + uuid.uuid4().hex)
    for model in settings.turn_models_dir.iterdir():
        (tmp_path / model.name).write_bytes(model.read_bytes())
    silero = tmp_path / "silero_vad.onnx"
    silero.write_bytes(silero.read_bytes()[:-1] + b"\x00")  # one byte changed
    with pytest.raises(ConfigError, match=r"silero_vad.onnx failed its hash check .*reinstall"):
        create_app(settings.model_copy(update={"turn_models_dir": tmp_path}))


def test_a_bad_price_table_stops_start_up_naming_the_key(mongo_url: str) -> None:
    settings = _settings(mongo_url, "vg_" + uuid.uuid4().hex)
    bad = '{"currency": "USD", "stt_per_minute": {"deepgram": -0.0043}}'
    with pytest.raises(
        ConfigError, match=r"PRICES_JSON is not a valid price table: stt_per_minute\.deepgram: "
    ):
        create_app(settings.model_copy(update={"prices_json": bad}))
