"""The turn models' install script and `audio/models.py` pin the same files and hashes, and
`locate_models` says how to install what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audio import models
from gateway.settings import Settings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-models.sh"


def _script_constant(name: str) -> str:
    found = re.search(rf'^{name}="([^"]*)"$', SCRIPT.read_text(), re.MULTILINE)
    assert found, name
    return found.group(1)


def test_the_script_and_the_module_agree() -> None:
    assert _script_constant("VERSION") == models.MODELS_VERSION
    assert _script_constant("SILERO_SHA256") == models.SILERO_SHA256
    assert _script_constant("SMART_TURN_SHA256") == models.SMART_TURN_SHA256
    assert _script_constant("SILERO_MEMBER").endswith("/" + models.SILERO_FILE)
    assert _script_constant("SMART_TURN_MEMBER").endswith("/" + models.SMART_TURN_FILE)


def test_the_default_directory_is_the_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURN_MODELS_DIR", raising=False)
    monkeypatch.setenv("VOICE_GATEWAY_CACHE", "/srv/cache")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.turn_models_dir == Path("/srv/cache/models-" + models.MODELS_VERSION)


def test_installed_models_are_found() -> None:
    paths = models.locate_models(Settings().turn_models_dir)
    assert paths.silero.name == models.SILERO_FILE
    assert paths.smart_turn.name == models.SMART_TURN_FILE


def test_an_empty_directory_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(models.ModelMissing, match=r"bash scripts/ensure-models\.sh"):
        models.locate_models(tmp_path)
