"""A room connection opened before its call exists keeps the room's events and hands them
to the call when it attaches, in order, then passes the rest straight on."""

from __future__ import annotations

from typing import Any

from gateway.livekit.connection import RoomConnection
from gateway.settings import Settings
from telephony.livekit.admin import LiveKitAdmin


class _Seen:
    """Records each event a connection hands over, by name and arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.events.append((name.removeprefix("on_"), args))


async def test_events_before_attach_are_kept_and_handed_over_in_order() -> None:
    admin = LiveKitAdmin(url="http://127.0.0.1:9", api_key="k", api_secret="s" * 32)
    try:
        connection = RoomConnection(admin, Settings(), "call-x", "agent-call-x")
        connection._event("track_subscribed", "track", "publication", "caller")
        connection._event("participant_disconnected", "caller")
        seen = _Seen()
        connection.attach(seen)  # type: ignore[arg-type]
        assert seen.events == [
            ("track_subscribed", ("track", "publication", "caller")),
            ("participant_disconnected", ("caller",)),
        ]
        connection._event("disconnected", "reason")
        assert seen.events[-1] == ("disconnected", ("reason",))
        await connection.close()  # never started: leaving does nothing and raises nothing
    finally:
        await admin.aclose()
