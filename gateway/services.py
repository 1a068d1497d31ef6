"""The gateway's services, built once at start-up from settings and an open database, and
passed in: each part gets the parts it uses in its constructor; only the routes read them
from here. `running()` starts and stops what runs in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.analysis import CallAnalyst, analysis_llm, analysis_model
from gateway.call.admission import Admission, LoopLagMonitor, StreamSlots
from gateway.call.capacity import OrganizationCapacity
from gateway.call.config import SessionConfig, TurnModels
from gateway.call.lease import GatewayLease, LostCallSweeper
from gateway.call.lifecycle import ROOM_TRANSPORTS, CallEnding, CallRuntime, LiveCalls
from gateway.call.lookup import CallerLookup
from gateway.call.voicemail import VoicemailBounds
from gateway.call.writes import WriteBacklog, WritePolicy
from gateway.drain import Draining
from gateway.event_feed import EventFeed
from gateway.livekit.room import LiveKitRooms
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceTable
from gateway.providers.base import Providers
from gateway.providers.catalog import ProviderCatalog
from gateway.providers.registry import build_default_providers
from gateway.readiness import DatabaseProbe
from gateway.recording.bucket import RecordingBucket
from gateway.settings import Settings
from gateway.worker_metrics import SharedMetrics
from storage import (
    CallRecord,
    CallStatus,
    Database,
    EventRecord,
    HeartbeatWriter,
    StorageError,
)
from telephony.livekit import LiveKitAdmin
from telephony.twilio import TwilioCalls, TwilioSignatureValidator
from webhooks.call_events import CallEvents
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TwilioServices:
    validator: TwilioSignatureValidator  # X-Twilio-Signature of webhooks and the upgrade
    stream_token_key: bytes  # per-call stream tokens
    rest: TwilioCalls | None  # None: TWILIO_ACCOUNT_SID unset (no outbound calls, no transfers)


@dataclass(frozen=True, slots=True)
class OwedWork:
    """What a finished call owes (its report, its analysis): each worker is poked (the
    analyst claims the call's analysis by its id)."""

    outbox: WebhookOutbox
    analyst: CallAnalyst

    def poke(self, call_id: str) -> None:
        self.outbox.poke()
        self.analyst.poke(call_id)


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    database: Database
    metrics: GatewayMetrics
    calls: CallRuntime
    lease: GatewayLease
    sweeper: LostCallSweeper
    twilio: TwilioServices
    livekit: LiveKitAdmin | None  # None: LIVEKIT_* unset (the SIP routes answer 503)
    rooms: LiveKitRooms | None
    outbox: WebhookOutbox
    analyst: CallAnalyst  # post-call analyses
    events: CallEvents  # the one publisher of call events (stored, then webhooks)
    ssrf_guard: SsrfGuard
    lookup: CallerLookup  # inbound calls are opened through it (caller lookup first)
    recordings: RecordingBucket | None  # None: S3_BUCKET unset, nothing is recorded
    database_probe: DatabaseProbe  # /health and /ready
    event_feed: EventFeed  # GET /events; the call publisher calls `event_feed.published`
    admission: Admission  # whether a new call is taken (live calls, event-loop lag)
    stream_slots: StreamSlots  # Media Stream sockets not started yet (MAX_PENDING_STREAMS)
    capacity: OrganizationCapacity  # the organisations' caps on live calls (outbound starts)
    # Set on SIGTERM (gateway/drain.py): /ready says 503, new calls are refused.
    draining: Draining = field(default_factory=Draining)
    # A worker of `serve --workers N`: its metrics shared with the others (METRICS_DIR), so
    # /metrics answers for the whole gateway. None: this process alone.
    shared_metrics: SharedMetrics | None = None


def build_services(
    settings: Settings,
    database: Database,
    *,
    turn_models: TurnModels,
    providers: Providers | None = None,
    on_published: Callable[[EventRecord], None] | None = None,
    prices: PriceTable | None = None,
) -> Services:
    """Every service of one gateway process, each built once (inside the running loop).
    `on_published` is told of every event this process stores (the event stream's wake-up)."""
    assert settings.mongodb_url is not None and settings.twilio_auth_token is not None
    metrics = GatewayMetrics()
    prices = prices if prices is not None else settings.price_table()
    default = providers or build_default_providers(
        settings, on_stt_reconnect=metrics.stt_reconnected
    )
    catalog = ProviderCatalog(settings, default, on_stt_reconnect=metrics.stt_reconnected)
    recordings = recording_bucket(settings)
    guard = SsrfGuard(settings.webhook_allow_hosts)

    def wake_outbox() -> None:  # a delivery was queued: send it now, not at the next poll
        outbox.wake()

    event_feed = EventFeed(
        database.events,
        poll_s=settings.event_poll_s,
        buffer=settings.event_client_buffer,
        on_drop=metrics.event_stream_dropped,
    )

    def published(event: EventRecord) -> None:  # this process's clients get it at once
        event_feed.published(event)
        if on_published is not None:
            on_published(event)

    events = CallEvents(
        events=database.events,
        webhooks=database.webhooks,
        assistants=database.assistants,
        recordings=recordings,
        on_published=published,
        on_queued=wake_outbox,
    )
    outbox = WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=guard,
        policy=RetryPolicy(
            base_s=settings.webhook_retry_base_s,
            cap_s=settings.webhook_retry_cap_s,
            max_attempts=settings.webhook_max_attempts,
        ),
        timeout_s=settings.webhook_timeout_s,
        lease_s=settings.webhook_lease_s,
        concurrency=settings.webhook_concurrency,
        repair_s=settings.webhook_repair_s,
        recordings=recordings,
        recording_grace_s=settings.recording_grace_s,
        salvage_policy=RetryPolicy(
            base_s=settings.recording_salvage_base_s, cap_s=settings.recording_salvage_cap_s
        ),
        secret_grace_s=settings.webhook_secret_grace_s,
        events=events,
    )
    analyst = CallAnalyst(
        analyses=database.analyses,
        calls=database.calls,
        assistants=database.assistants,
        llm=analysis_llm(settings),
        model_for=lambda config: analysis_model(settings, config),
        events=events,  # `call.analyzed`, after the call's report
        lease_s=max(settings.analysis_lease_s, 2 * settings.analysis_timeout_s + 30),
        poll_s=settings.analysis_poll_s,
        concurrency=settings.analysis_concurrency,
        transcript_max_chars=settings.analysis_transcript_max_chars,
        retry_window_s=settings.analysis_timeout_s,
    )
    gateway_id = "gw-" + secrets.token_hex(6)
    live = LiveCalls(gateway_id, room_weight=settings.livekit_call_weight)
    backlog = WriteBacklog()
    runtime = CallRuntime(
        store=database.calls,
        assistants=database.assistants,
        catalog=catalog,
        session_config=SessionConfig(turn=settings.default_turn_taking(), models=turn_models),
        metrics=metrics,
        reports=OwedWork(outbox, analyst),
        live=live,
        recordings_enabled=recordings is not None,
        writes=WritePolicy(
            attempt_timeout_s=settings.call_write_timeout_s,
            outage_s=settings.call_write_outage_s,
            max_pending=settings.call_write_queue_max,
        ),
        backlog=backlog,
        recording_finish_timeout_s=settings.recording_finish_timeout_s,
        events=events,
        prices=prices,
        voicemail=VoicemailBounds(
            decision_timeout_s=settings.voicemail_decision_timeout_s,
            message_end_timeout_s=settings.voicemail_message_end_timeout_s,
        ),
    )
    lookup = CallerLookup(
        database=database,
        guard=guard,
        metrics=metrics,
        timeout_s=settings.inbound_lookup_timeout_s,
        max_answer_bytes=settings.inbound_lookup_max_bytes,
        secret_grace_s=settings.webhook_secret_grace_s,
    )

    def sampled(lag_ms: float) -> None:  # 20 times a second: what admission judges, exported
        metrics.loop_lag(lag_ms)
        metrics.write_backlog_ms = backlog.oldest_ms()

    admission = Admission(
        live=live,
        max_live_calls=settings.max_live_calls,
        lag=LoopLagMonitor(on_lag=sampled),
        max_loop_lag_ms=settings.max_loop_lag_ms,
        metrics=metrics,
        backlog=backlog,
        max_write_wait_ms=settings.max_write_wait_ms or None,
    )
    livekit = livekit_admin(settings)
    rooms = (
        LiveKitRooms(runtime, livekit, database, settings, lookup, admission=admission)
        if livekit is not None
        else None
    )
    lease = GatewayLease(
        HeartbeatWriter(settings.mongodb_url, settings.mongodb_db, gateway_id),
        lease_s=settings.call_lease_s,
    )

    async def lost(call: CallRecord) -> None:
        if rooms is not None and call.transport in ROOM_TRANSPORTS:  # both hold a room
            await rooms.close_lost(call)

    sweeper = LostCallSweeper(
        store=database.calls,
        leases=database.leases,
        gateway_id=gateway_id,
        serving=live.serving,
        lease_s=settings.call_lease_s,
        metrics=metrics,
        on_lost=lost,
        unfinished=live,
        prices=prices,
    )
    twilio = TwilioServices(
        validator=TwilioSignatureValidator(settings.twilio_auth_token.get_secret_value()),
        stream_token_key=settings.stream_token_key(),
        rest=twilio_rest(settings),
    )
    return Services(
        settings=settings,
        database=database,
        metrics=metrics,
        calls=runtime,
        lease=lease,
        sweeper=sweeper,
        twilio=twilio,
        livekit=livekit,
        rooms=rooms,
        outbox=outbox,
        analyst=analyst,
        events=events,
        ssrf_guard=guard,
        lookup=lookup,
        recordings=recordings,
        database_probe=DatabaseProbe(
            database.ping, timeout_s=settings.ready_ping_timeout_s, cache_s=settings.ready_cache_s
        ),
        event_feed=event_feed,
        admission=admission,
        stream_slots=StreamSlots(settings.max_pending_streams),
        capacity=OrganizationCapacity(
            accounts=database.accounts,
            calls=database.calls,
            retry_after_s=settings.admission_retry_after_s,
        ),
        shared_metrics=(
            SharedMetrics(
                settings.metrics_dir,
                worker=settings.worker_index or 0,
                metrics=metrics,
                stale_s=settings.metrics_stale_s,
            )
            if settings.metrics_dir is not None
            else None
        ),
    )


@contextlib.asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The background work of a gateway, from before its first call to after its last:
    the lease, the lost-call sweeper, the webhook outbox, the call analyst, the pruning
    of expired claims and carrier notes, and admission's event-loop lag monitor (the event
    feed's pollers run while clients watch). The campaign dialer places calls through the
    outbound path, which needs these services: `gateway/app.py` runs it inside this
    (`gateway.campaigns.placing.campaign_dialer`), so it stops before the calls end.
    At the end, every call this process still serves is ended (`gateway-shutdown`) before
    anything stops, then the event streams and their pollers. A worker of `serve --workers
    N` publishes its metrics from the start to the end (its last snapshot after all that)."""
    shared = services.shared_metrics
    if shared is not None:
        shared.start()
    await services.lease.start()
    sweep_s = min(10.0, services.settings.call_lease_s / 3)  # a third of a lease, at most 10 s
    prune = services.database.claims.prune_expired  # a scan on FerretDB: once a minute
    tasks = [
        asyncio.create_task(services.admission.lag.run(), name="loop-lag"),
        asyncio.create_task(services.outbox.run(), name="webhook-outbox"),
        asyncio.create_task(services.analyst.run(), name="call-analyst"),
        asyncio.create_task(
            _every(sweep_s, services.sweeper.sweep, "sweeping lost calls"), name="lost-calls"
        ),
        asyncio.create_task(
            _every(60.0, lambda: prune(datetime.now(UTC)), "pruning expired records"),
            name="pruning",
        ),
    ]
    if shared is not None:
        tasks.append(asyncio.create_task(shared.run(), name="metrics-publish"))
    try:
        yield
    finally:
        if services.rooms is not None:  # no refused dispatch is taken up any more
            await services.rooms.aclose()
        await services.calls.live.end_all(CallEnding("gateway-shutdown", CallStatus.FAILED))
        await services.event_feed.aclose()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await services.lease.stop()
        await services.outbox.aclose()
        await services.analyst.aclose()
        await services.lookup.aclose()
        await services.calls.catalog.aclose()
        if services.recordings is not None:
            services.recordings.close()
        if services.livekit is not None:
            await services.livekit.aclose()
        if shared is not None:
            shared.stop()


async def _every(seconds: float, one_round: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `one_round` every `seconds` until cancelled; a round the database failed is
    logged, and the next one tries again."""
    while True:
        try:
            await one_round()
        except StorageError as exc:
            log.warning("%s failed: %s", what, exc)
        await asyncio.sleep(seconds)


def recording_bucket(settings: Settings) -> RecordingBucket | None:
    """The recordings bucket, or None when S3_BUCKET is unset."""
    if settings.s3_bucket is None:
        return None
    secret = settings.s3_secret_access_key
    return RecordingBucket(
        bucket=settings.s3_bucket,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        prefix=settings.recording_prefix,
        url_ttl_s=settings.recording_url_ttl_s,
    )


def livekit_admin(settings: Settings) -> LiveKitAdmin | None:
    """LiveKit's APIs when LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are all set."""
    if not (settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret):
        return None
    return LiveKitAdmin(
        url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
    )


def twilio_rest(settings: Settings) -> TwilioCalls | None:
    """Twilio's REST API when TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are both set."""
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        return None
    return TwilioCalls(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        api_base_url=settings.twilio_api_base_url,
        timeout_s=settings.twilio_rest_timeout_s,
    )
