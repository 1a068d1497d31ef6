"""`WebhookOutbox`: turns the reports finished calls owe into events and deliveries, and
delivers every queued delivery (each event type: `storage/deliveries.py`).

Every gateway runs one. A report round (`queue_owed_reports`) takes each finished call
whose report is owed, once its recording settled, and publishes through the gateway's one
`CallEvents`, in this order: any earlier event whose delivery is missing and the final
`call.status` (`CallEvents.before_report`), `recording.ready`, `call.ended`; then marks
the report queued and publishes the call's analysis if it was stored already
(`call.analyzed` waits for the report). The delivery loop claims due deliveries, several
at once (one read of what is due; deliveries of one call go out one at a time, in the
order of their events), each under a lease (so two gateways never send the same attempt),
POSTs each signed, and records the attempt: 2xx is delivered; a 4xx other
than 408 / 429 is failed for good; anything else (5xx, timeouts, refused connections) is
tried again after an exponential backoff with jitter, up to `max_attempts`. An attempt
records a short error category ("connection refused", "timeout", "tls error", ...) that API
clients see; what the exception said goes to the gateway's log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx

from storage import (
    AssistantRepository,
    Attempt,
    CallRecord,
    CallStore,
    DeliveryRecord,
    DeliveryStatus,
    EventRepository,
    RecordingState,
    StorageError,
    WebhookRepository,
)
from webhooks.call_events import CallEvents
from webhooks.errors import UnresolvedHost, UnsafeURL, WebhookError
from webhooks.sender import SignedPoster
from webhooks.ssrf import SsrfGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 10.0
    cap_s: float = 3600.0
    max_attempts: int = 12

    def delay(self, attempt: int) -> float:
        """Seconds before attempt `attempt + 1`: base·2^(attempt-1), capped, with "equal
        jitter" (a random point in its upper half) so that retries of many calls spread."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 64))
        return random.uniform(ceiling / 2, ceiling)


def outcome(status_code: int | None) -> DeliveryStatus | None:
    """delivered / failed for good, or None: try again."""
    if status_code is None:
        return None
    if 200 <= status_code < 300:
        return "delivered"
    if 400 <= status_code < 500 and status_code not in (408, 429):
        return "failed"
    return None


def attempt_error(exc: httpx.HTTPError) -> str:
    """The short category of a failed exchange, as API clients see it ("connection refused",
    "timeout", "tls error", ...): the exception's text names addresses, library internals
    and file names that are the gateway's business, so it goes to the log only."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(causes) < 10:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(c, ssl.SSLError) for c in causes) or "[SSL" in str(exc):
        return "tls error"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol error"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "connection reset"
    return "request failed"


class Recordings(Protocol):
    """What reports need of recordings (the gateway's S3 side)."""

    async def salvage(self, call: CallRecord) -> RecordingState | None:
        """Complete the recording a stopped gateway left open; None: try again later."""
        ...

    def url(self, state: RecordingState) -> str | None:
        """A link to a complete recording (presigned), or None."""
        ...


class _Pending(enum.Enum):
    NOT_SETTLED = "not-settled"


# A report waits this long past the grace for a store that keeps failing, then goes without.
_RECORDING_GIVE_UP_S = 3600.0


class WebhookOutbox:
    """The delivery worker of one gateway process. `events` is the gateway's one publisher
    (the app always passes it, so that its event stream hears of what the outbox
    publishes); without it (tests, benches) the outbox builds a publisher of its own,
    which tells no stream."""

    def __init__(
        self,
        *,
        webhooks: WebhookRepository,
        calls: CallStore,
        assistants: AssistantRepository,
        guard: SsrfGuard,
        policy: RetryPolicy,
        timeout_s: float = 10.0,
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        concurrency: int = 8,
        recordings: Recordings | None = None,
        recording_grace_s: float = 120.0,
        salvage_policy: RetryPolicy | None = None,
        secret_grace_s: float = 24 * 3600.0,
        repair_s: float = 60.0,
        events: CallEvents | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._webhooks = webhooks
        self._calls = calls
        self._assistants = assistants
        self._policy = policy
        self._timeout_s = timeout_s
        self._lease_s = max(lease_s, timeout_s + 5)  # a lease outlives the request it covers
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._reports_owed = True
        self._recordings = recordings
        self._recording_grace = timedelta(seconds=recording_grace_s)
        self._salvage_policy = salvage_policy or RetryPolicy(base_s=10.0, cap_s=600.0)
        # How often pending deliveries that lost their due row are looked for (a scan of
        # every delivery on FerretDB: `WebhookRepository.repair_due`).
        self._repair_s = repair_s
        self._clock = clock
        self.owner = "gw-" + secrets.token_hex(6)
        self._poster = SignedPoster(
            guard=guard,
            secrets=webhooks,
            user_agent="voice-gateway-webhooks/1",
            timeout_s=timeout_s,
            secret_grace_s=secret_grace_s,
            clock=clock,
        )
        self._wakeup = asyncio.Event()
        self._waiting = False  # between rounds, waiting for a wake-up or the next poll
        self._events = events or CallEvents(
            events=EventRepository(),
            webhooks=webhooks,
            assistants=assistants,
            recordings=recordings,
            on_queued=self.wake,
            clock=clock,
        )

    def poke(self) -> None:
        """A call just finished: look for its report now rather than at the next poll."""
        self._reports_owed = True
        self._wakeup.set()

    def wake(self) -> None:
        """A delivery was queued: look for due deliveries now (reports are not looked for)."""
        self._wakeup.set()

    def waiting(self) -> bool:
        """Whether the outbox is between rounds (it has nothing to do until woken)."""
        return self._waiting

    async def aclose(self) -> None:
        await self._poster.aclose()

    async def run(self) -> None:
        """Queue owed reports and deliver due webhooks, up to `concurrency` at once (a slow
        receiver does not hold up the others), until cancelled; then the deliveries under
        way are let finish, within their timeout."""
        in_flight: set[asyncio.Task[None]] = set()
        last_scan = -float("inf")
        repairs = asyncio.create_task(self._repair_forever(), name="webhook-due-repair")
        try:
            while True:
                self._wakeup.clear()  # before the round: a poke during it is not lost
                busy = False
                try:
                    # Owed reports are looked for when a call ended here, or once a poll
                    # (calls other gateways or status callbacks finished): not after every
                    # delivery, as finding them reads every call on FerretDB.
                    now = time.monotonic()
                    if self._reports_owed or now - last_scan >= self._poll_s:
                        self._reports_owed, last_scan = False, now
                        busy = await self.queue_owed_reports() > 0
                    if len(in_flight) < self._concurrency:
                        # One read of what is due fills every free slot.
                        claimed = await self._webhooks.claim_many(
                            owner=self.owner,
                            now=self._clock(),
                            lease_s=self._lease_s,
                            limit=self._concurrency - len(in_flight),
                        )
                        busy = busy or bool(claimed)
                        for delivery in claimed:
                            task = asyncio.create_task(
                                self._deliver_in_task(delivery), name=f"webhook-{delivery.id}"
                            )
                            in_flight.add(task)
                            task.add_done_callback(in_flight.discard)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the loop must outlive a failed round (database blip, ...)
                    log.exception("webhook outbox round failed")
                    busy = False
                if not busy or len(in_flight) >= self._concurrency:
                    # A finished delivery or a finished call wakes it up. Not `wait_for`:
                    # on 3.11 it can swallow a cancellation that meets its timeout, and
                    # the outbox would outlive its gateway's shutdown.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll_s):
                            self._waiting = True
                            try:
                                await self._wakeup.wait()
                            finally:
                                self._waiting = False
        finally:
            repairs.cancel()
            # Deliveries under way are finished and recorded (bounded), not cut off: cut
            # after the receiver took one, it would be sent again once its lease expired.
            if in_flight:
                await asyncio.wait(set(in_flight), timeout=self._timeout_s + 5)
            for task in in_flight:
                task.cancel()  # their leases expire and another round sends them again
            await asyncio.gather(repairs, *in_flight, return_exceptions=True)

    async def _repair_forever(self) -> None:
        """On start and every `repair_s`: give pending deliveries the due rows they lack
        (off the delivery loop: on FerretDB it reads every delivery stored)."""
        while True:
            try:
                repaired = await self._webhooks.repair_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database blip: the next repair tries again
                log.exception("webhook due-row repair failed")
            else:
                if repaired:
                    log.warning("webhook due rows repaired", extra={"rows": repaired})
                    self._wakeup.set()
            await asyncio.sleep(self._repair_s)

    async def _deliver_in_task(self, delivery: DeliveryRecord) -> None:
        try:
            await self._deliver(delivery)
        except Exception:  # the delivery's task ends here; its lease expires, it is retried
            log.exception("webhook delivery failed", extra={"call_id": delivery.call_id})
        finally:
            self._wakeup.set()  # room for another

    async def step(self) -> bool:
        """One round: queue owed reports, then deliver one due webhook. True if it did work."""
        queued = await self.queue_owed_reports()
        delivery = await self._webhooks.claim(
            owner=self.owner, now=self._clock(), lease_s=self._lease_s
        )
        if delivery is not None:
            await self._deliver(delivery)
        return queued > 0 or delivery is not None

    async def queue_owed_reports(self) -> int:
        """Publish the `call.ended` reports finished calls owe (idempotent per call), each
        queued for delivery if its assistant sends `call.ended` to a webhook; before it,
        the call's final `call.status` and any earlier event whose delivery is missing;
        after it (the report marked queued), the call's analysis if it was stored before.

        A report waits for the call's recording while it is being completed (the recorder's
        last part, LiveKit's egress_ended webhook), for `recording_grace_s` at most; after
        that an open upload is salvaged from its uploaded parts (retried per call with an
        exponential backoff while the store is unreachable; an upload completed already
        counts as done) and an egress that never reported counts as failed, so the report
        always goes out. A complete recording's `recording.ready` is published (once per
        call, whoever saw it complete first) before the report.
        """
        made = 0
        for summary in await self._webhooks.owed_reports():
            recording = await self._settled_recording(summary)
            if recording is _Pending.NOT_SETTLED:
                continue
            call = await self._calls.get_call(summary.id)
            link = (
                self._recordings.url(recording)
                if self._recordings is not None and recording is not None
                else None
            )
            await self._events.before_report(call)
            if recording is not None:
                await self._events.recording_ready(call, recording)
            if await self._events.ended(call, recording=recording, recording_url=link):
                made += 1
                log.info("end-call webhook queued", extra={"call_id": call.id})
            await self._webhooks.report_queued(call.id)
            await self._analysis_after_report(call.id)
        return made

    async def _analysis_after_report(self, call_id: str) -> None:
        """Publish the call's analysis if it was stored before its report was queued (its
        `call.analyzed` waited for the report). One still running is published by its
        analyst once stored (the report is queued now); a failure here leaves it owed, for
        any gateway's analyst to publish."""
        try:
            call = await self._calls.get_call(call_id, with_turns=False)
            if call.analysis is not None and call.analysis.status != "pending":
                await self._events.analyzed(call)
        except (StorageError, WebhookError) as exc:
            log.warning(
                "the analysis was not published after the report: %s", exc,
                extra={"call_id": call_id},
            )  # fmt: skip

    async def _settled_recording(self, call: CallRecord) -> RecordingState | _Pending | None:
        """The call's final recording state (None: it has none), or NOT_SETTLED yet."""
        state = call.recording
        if state is None or state.status != "recording":
            return state
        ended = call.ended_at or self._clock()
        now = self._clock()
        if now < ended + self._recording_grace:
            return _Pending.NOT_SETTLED  # its recorder (or LiveKit's egress) is still finishing it
        settled: RecordingState | None
        if state.kind == "gateway" and state.upload_id and self._recordings is not None:
            if state.salvage_next_at is not None and now < state.salvage_next_at:
                return _Pending.NOT_SETTLED  # backing off: the store was unreachable lately
            settled = await self._recordings.salvage(call)
            if settled is None:
                if now < ended + self._recording_grace + timedelta(seconds=_RECORDING_GIVE_UP_S):
                    await self._salvage_later(call.id, state, now)
                    return _Pending.NOT_SETTLED
                settled = state.model_copy(
                    update={"status": "failed", "error": "the store stayed unreachable"}
                )
        else:
            settled = state.model_copy(
                update={"status": "failed", "error": "the recording never reported its end"}
            )
        await self._calls.set_recording(call.id, settled)
        log.warning(
            "recording settled after the call ended",
            extra={"call_id": call.id, "status": settled.status, "salvaged": settled.salvaged},
        )
        return settled

    async def _salvage_later(self, call_id: str, state: RecordingState, now: datetime) -> None:
        """Store when the failed salvage of `call_id` may be tried again: exponential backoff
        per call, kept with the call so that every gateway's outbox waits for it."""
        attempts = state.salvage_attempts + 1
        next_at = now + timedelta(seconds=self._salvage_policy.delay(attempts))
        # Another gateway's outbox may have settled it meanwhile: never overwrite that.
        current = (await self._calls.get_call(call_id, with_turns=False)).recording
        if current is None or current.status != "recording" or current.upload_id != state.upload_id:
            return
        await self._calls.set_recording(
            call_id,
            state.model_copy(update={"salvage_attempts": attempts, "salvage_next_at": next_at}),
        )
        log.info(
            "recording salvage failed; retrying later",
            extra={"call_id": call_id, "attempt": attempts, "next_at": next_at.isoformat()},
        )

    async def _deliver(self, delivery: DeliveryRecord) -> None:
        status_code: int | None = None
        error: str | None = None  # a short category, shown to API clients
        detail: str | None = None  # what went wrong, for the gateway's log only
        latency_ms = 0.0
        final = False  # a failure no retry can mend
        try:
            request = await self._poster.prepare(
                delivery.url, delivery.body.encode(), message_id=delivery.id, org_id=delivery.org_id
            )
            started = time.perf_counter()
            try:
                status_code = (await self._poster.send(request)).status_code  # body never read
            finally:
                latency_ms = (time.perf_counter() - started) * 1000
        except UnsafeURL as exc:  # an unsafe URL does not become safe by waiting
            error, final, detail = "refused: not a public address", True, str(exc)
        except httpx.InvalidURL as exc:
            error, final, detail = "invalid url", True, str(exc)
        except UnresolvedHost as exc:
            error, detail = "dns error", str(exc)
        except TimeoutError:
            error, detail = "timeout", f"no answer within {self._timeout_s:g} s"
        except httpx.HTTPError as exc:
            error, detail = attempt_error(exc), f"{type(exc).__name__}: {exc}"
        now = self._clock()
        attempt = Attempt(at=now, status_code=status_code, latency_ms=latency_ms, error=error)
        result = "failed" if final else outcome(status_code)
        attempts = delivery.attempt_count + 1
        next_at = None
        if result is None:
            if attempts >= self._policy.max_attempts:
                result = "failed"
            else:
                next_at = now + timedelta(seconds=self._policy.delay(attempts))
        status: DeliveryStatus = result or "pending"
        kept = await self._webhooks.record_attempt(
            delivery.id,
            owner=self.owner,
            lease_gen=delivery.lease_gen,
            attempt=attempt,
            status=status,
            next_attempt_at=next_at,
        )
        log.log(
            logging.INFO if kept else logging.WARNING,
            "webhook attempt" if kept else "webhook attempt not recorded: lease lost",
            extra={
                "call_id": delivery.call_id,
                "delivery": delivery.id,
                "status_code": status_code,
                "error": error,
                "error_detail": detail,
                "outcome": status,
                "attempt": attempts,
                "latency_ms": round(latency_ms, 1),
                "lease_kept": kept,
            },
        )
