"""The dialer wired to a gateway's services: each attempt's call placed through the path of
POST /call/outbound (`gateway.call.outbound.place_call`), and `campaign_dialer(services)`,
the dialer running for as long as the gateway's background work (`gateway/app.py` enters it
inside `gateway.services.running`, so it stops before the live calls are ended)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.call.outbound import OutboundDial, place_call
from gateway.campaigns.clock import clock_from_file
from gateway.campaigns.dialer import CampaignDialer, DialerConfig
from gateway.services import Services
from storage import CallRecord, CampaignRecord, ContactRecord
from webhooks.campaign_events import CampaignEvents


class ServicesPlacer:
    """Places an attempt's call as POST /call/outbound does (this process's admission,
    drain and the organisation's cap are checked by the dialer each round and again at the
    attempt's slot; a refusal here before the call is stored, e.g. `GatewayFull` when
    admission filled meanwhile, puts the contact back with its attempt not counted)."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        *,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None:
        services, settings = self._services, self._services.settings
        key = "campaign-" + secrets.token_hex(8)
        hold_s = settings.outbound_ring_timeout_s + settings.admission_hold_s
        admission = services.admission
        admission.require(
            key,
            hold_s=hold_s,
            arrival="outbound",
            retry_after_s=settings.admission_retry_after_s,
            weight=admission.room_weight if campaign.call_service == "livekit" else 1,
        )

        async def stored(call: CallRecord) -> None:
            await on_stored(call.id)

        try:
            await place_call(
                services,
                OutboundDial(
                    org_id=campaign.org_id,
                    assistant_id=campaign.assistant_id,
                    to_number=contact.to_number,
                    call_service=campaign.call_service,
                    from_number=campaign.from_number,
                    trunk_id=campaign.trunk_id,
                    metadata=contact.metadata,
                ),
                hold_s=hold_s,
                check_capacity=False,
                on_stored=stored,
            )
        finally:
            services.admission.release(key)


def build_dialer(services: Services) -> CampaignDialer:
    settings, db = services.settings, services.database

    # Whether an attempt of any campaign would be admitted: one of a LiveKit campaign holds
    # a room's places, so with LiveKit configured the dialer waits for that many.
    weight = services.admission.room_weight if services.rooms is not None else 1

    def may_start() -> bool:
        return not services.draining.active and services.admission.refusal(weight) is None

    return CampaignDialer(
        config=DialerConfig(
            gateway_id=services.lease.gateway_id,
            lease_s=settings.call_lease_s,
            tick_s=settings.campaign_tick_s,
            list_s=settings.campaign_list_s,
            attempt_stale_s=settings.campaign_attempt_stale_s,
            unanswered_s=settings.outbound_ring_timeout_s
            + settings.admission_hold_s
            + settings.campaign_attempt_stale_s,
        ),
        campaigns=db.campaigns,
        do_not_call=db.do_not_call,
        calls=db.calls,
        heartbeats=db.leases,
        capacity=services.capacity,
        placer=ServicesPlacer(services),
        events=CampaignEvents(
            events=db.events,
            webhooks=db.webhooks,
            assistants=db.assistants,
            on_published=services.event_feed.published,
            on_queued=services.outbox.wake,
        ),
        clock=clock_from_file(settings.campaign_clock_file),
        may_start=may_start,
        metrics=services.metrics,
    )


@contextlib.asynccontextmanager
async def campaign_dialer(services: Services) -> AsyncIterator[CampaignDialer]:
    """The gateway's dialer, running until the context ends (then its placing tasks stop)."""
    dialer = build_dialer(services)
    task = asyncio.create_task(dialer.run(), name="campaign-dialer")
    try:
        yield dialer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await dialer.aclose()
