"""Whether the database answers, as `/health` reports it and `/ready` (what balancers ask)
answers: a cheap ping with a short timeout, its answer kept briefly so that a storm of
probes costs one ping, and one ping at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from storage import StorageError

log = logging.getLogger(__name__)


class DatabaseProbe:
    """`up()`: True if the database answered a ping within `timeout_s`, at most `cache_s` ago."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        timeout_s: float,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._answer: bool | None = None
        self._asked_at = 0.0

    async def up(self) -> bool:
        async with self._lock:  # concurrent probes share the one ping under way
            if self._answer is not None and self._clock() - self._asked_at < self._cache_s:
                return self._answer
            answer = await self._ask()
            if answer != self._answer and self._answer is not None:
                log.log(
                    logging.INFO if answer else logging.WARNING,
                    "the database is %s",
                    "back" if answer else "not answering",
                )
            self._answer, self._asked_at = answer, self._clock()
            return answer

    async def _ask(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ping()
        except (StorageError, TimeoutError):
            return False
        return True
