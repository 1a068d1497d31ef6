"""The inbox a `FastFrameProtocol` connection keeps its received messages in: order, wake-ups,
and a reader cancelled right after its wake-up (the message goes to the next reader)."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn._types import ASGIReceiveEvent

from gateway.ws_protocol import _Inbox


def _text(n: int) -> ASGIReceiveEvent:
    return {"type": "websocket.receive", "text": str(n)}


async def test_messages_come_out_in_order_and_a_waiting_reader_is_woken() -> None:
    inbox = _Inbox()
    inbox.put_nowait(_text(1))
    inbox.put_nowait(_text(2))
    assert (inbox.qsize(), inbox.empty()) == (2, False)
    assert [await inbox.get(), inbox.get_nowait()] == [_text(1), _text(2)]
    assert inbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()  # nothing to read: it waits
    inbox.put_nowait(_text(3))
    assert await asyncio.wait_for(reader, 10) == _text(3)


async def test_a_reader_cancelled_after_its_wake_up_hands_the_message_on() -> None:
    inbox = _Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(_text(1))  # wakes `first`...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 10) == _text(1)
    assert first.cancelled()
    assert inbox.empty()


async def test_a_reader_cancelled_while_waiting_is_not_woken() -> None:
    inbox = _Inbox()
    gone = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    inbox.put_nowait(_text(1))
    assert await asyncio.wait_for(inbox.get(), 10) == _text(1)
