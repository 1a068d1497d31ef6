"""Calls whose gateway died: each gateway serving a Twilio stream renews a lease on the
call; every gateway finishes calls whose lease expired, so their transcript, recording and
end-call report are settled even when no status callback ever comes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from storage import CallStatus, CallStore, StorageError

log = logging.getLogger(__name__)

LOST_REASON = "gateway-lost"


class CallLease:
    """Keeps one live call's lease fresh while its stream runs (`run` is the task)."""

    def __init__(self, store: CallStore, call_id: str, *, lease_s: float) -> None:
        self._store = store
        self._call_id = call_id
        self._lease = timedelta(seconds=lease_s)

    async def renew(self) -> None:
        await self._store.keep_alive(self._call_id, until=datetime.now(UTC) + self._lease)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                await self.renew()
            except StorageError as exc:  # a blip: the next renewal may make it in time
                log.warning("renewing the call lease failed: %s", exc)


async def finish_lost_calls(store: CallStore) -> int:
    """Finish every open call whose lease expired; returns how many."""
    lost = await store.lost_calls(now=datetime.now(UTC))
    for call in lost:
        await store.finish_call(
            call.id, status=CallStatus.FAILED, end_reason=LOST_REASON, ended_at=datetime.now(UTC)
        )
        log.warning("finished a call whose gateway stopped", extra={"call_id": call.id})
    return len(lost)


async def sweep_lost_calls(store: CallStore, *, every_s: float) -> None:
    """The sweeper task of one gateway: `finish_lost_calls` every `every_s` until cancelled."""
    while True:
        try:
            await finish_lost_calls(store)
        except StorageError as exc:  # a database blip: try again next round
            log.warning("sweeping lost calls failed: %s", exc)
        await asyncio.sleep(every_s)
