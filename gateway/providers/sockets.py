"""What the cloud providers' WebSockets share: their messages read as plain JSON objects."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)


async def next_json_object(socket: ClientConnection, provider: str) -> dict[str, Any]:
    """The next message of `socket` that is a JSON object; any other is logged and skipped
    (a provider's bad message must not end the call). Raises what `recv` raises."""
    while True:
        data = await socket.recv()
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            message = None
        if type(message) is dict:
            return message
        log.warning("%s sent a message that is not a JSON object: skipped", provider)
