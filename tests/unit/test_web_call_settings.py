"""The settings of web calls: the LiveKit URL browsers join at (LIVEKIT_PUBLIC_URL, else
LIVEKIT_URL as a WebSocket URL) and the caller token's bounded lifetime."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_browsers_join_at_the_public_url_else_at_livekit_url_as_websocket() -> None:
    assert _settings().livekit_browser_url() is None
    assert _settings(livekit_url="http://127.0.0.1:7880").livekit_browser_url() == (
        "ws://127.0.0.1:7880"
    )
    assert _settings(livekit_url="https://lk.internal").livekit_browser_url() == (
        "wss://lk.internal"
    )
    public = _settings(livekit_url="http://10.0.0.5:7880", livekit_public_url="wss://lk.example/")
    assert public.livekit_browser_url() == "wss://lk.example"
    with pytest.raises(ValidationError, match="LIVEKIT_PUBLIC_URL"):
        _settings(livekit_public_url="lk.example.com")


def test_the_caller_tokens_lifetime_is_bounded() -> None:
    assert _settings().web_call_token_ttl_s == 300
    for bad in (0, 4, 3601):
        with pytest.raises(ValidationError):
            _settings(web_call_token_ttl_s=bad)
