"""Deleting records past their `expires_at` (stream and LiveKit event claims, carrier notes
beside calls), from one background task. FerretDB 1.24 has no TTL index and answers these
deletes by reading each collection, so they never run on a call's or a request's path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from storage import Database, StorageError

log = logging.getLogger(__name__)


class ExpiredRecordPruner:
    """`prune()` is one round; `run()` (the task) prunes every `every_s` until cancelled."""

    def __init__(
        self,
        database: Database,
        *,
        every_s: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._database = database
        self._every_s = every_s
        self._clock = clock

    async def prune(self) -> None:
        await self._database.claims.prune_expired(self._clock())

    async def run(self) -> None:
        while True:
            try:
                await self.prune()
            except StorageError as exc:  # a database blip: the next round prunes
                log.warning("pruning expired records failed: %s", exc)
            await asyncio.sleep(self._every_s)
