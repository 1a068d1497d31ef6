"""`CampaignEvents`: publishes a campaign's events (`campaign.contact_done`,
`campaign.completed`; bodies in `webhooks/events.py`) as `CallEvents` publishes a call's:
stored once per key in the organisation's event sequence (GET /events streams them), then,
if the campaign's assistant sends that type to its `webhook_url`, queued once as a delivery
of the durable outbox, ordered per campaign (the delivery's `call_id` is the campaign id).
Publishing a fact again (a new dialer leader repeating a step) returns the event stored
before and queues no second delivery."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from storage import AssistantRepository, EventRecord, EventRepository, WebhookRepository
from webhooks.events import (
    CAMPAIGN_COMPLETED,
    CAMPAIGN_CONTACT_DONE,
    EventType,
    campaign_completed_body,
    campaign_contact_done_body,
    campaign_summary,
    delivery_id,
    event_key,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CampaignRef:
    """What a campaign event says of its campaign, and whom it belongs to."""

    id: str
    org_id: str
    name: str
    assistant_id: str
    call_service: str

    def summary(self) -> dict[str, str]:
        return campaign_summary(
            campaign_id=self.id,
            name=self.name,
            assistant_id=self.assistant_id,
            call_service=self.call_service,
        )


@dataclass(frozen=True, slots=True)
class ContactDone:
    n: int
    to_number: str
    metadata: Mapping[str, str]
    outcome: str
    attempts: int
    call_ids: tuple[str, ...]


class CampaignEvents:
    """The publisher of campaign events of a gateway process."""

    def __init__(
        self,
        *,
        events: EventRepository,
        webhooks: WebhookRepository,
        assistants: AssistantRepository,
        on_published: Callable[[EventRecord], None] | None = None,
        on_queued: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._events = events
        self._webhooks = webhooks
        self._assistants = assistants
        self._on_published = on_published
        self._on_queued = on_queued
        self._clock = clock

    async def contact_done(self, campaign: CampaignRef, contact: ContactDone) -> EventRecord:
        """The contact reached its final outcome (once per contact)."""
        return await self._publish(
            campaign,
            CAMPAIGN_CONTACT_DONE,
            part=contact.n,
            body=lambda id, at: campaign_contact_done_body(
                campaign.summary(),
                n=contact.n,
                to_number=contact.to_number,
                metadata=contact.metadata,
                outcome=contact.outcome,
                attempts=contact.attempts,
                call_ids=contact.call_ids,
                event_id=id,
                at=at,
            ),
        )

    async def completed(
        self,
        campaign: CampaignRef,
        *,
        state: str,
        total: int,
        by_status: Mapping[str, int],
        by_outcome: Mapping[str, int],
    ) -> EventRecord:
        """Every contact is settled (once per campaign)."""
        return await self._publish(
            campaign,
            CAMPAIGN_COMPLETED,
            body=lambda id, at: campaign_completed_body(
                campaign.summary(),
                state=state,
                total=total,
                by_status=by_status,
                by_outcome=by_outcome,
                event_id=id,
                at=at,
            ),
        )

    async def _publish(
        self,
        campaign: CampaignRef,
        type: EventType,
        *,
        body: Callable[[str, datetime], str],
        part: int | None = None,
    ) -> EventRecord:
        key = event_key(campaign.id, type, part)
        event_id = delivery_id(key)
        at = self._clock()
        record = await self._events.publish(
            key=key,
            org_id=campaign.org_id,
            call_id=campaign.id,
            type=type,
            body=body(event_id, at),
            at=at,
        )
        if self._on_published is not None:
            try:
                self._on_published(record)
            except Exception:  # a listener's fault is not the event's: it is stored
                log.exception("on_published failed", extra={"campaign_id": campaign.id})
        assistant = await self._assistants.get_any(campaign.assistant_id)
        if assistant is None:
            return record
        config = assistant.config
        if config.webhook_url is None or type not in config.webhook_events:
            return record
        queued = await self._webhooks.enqueue(
            delivery_id=event_id,
            org_id=campaign.org_id,
            call_id=campaign.id,
            event=type,
            url=config.webhook_url,
            body=record.body,
            now=self._clock(),
            seq=record.seq,
        )
        if queued:
            log.info(
                "webhook event queued",
                extra={"campaign_id": campaign.id, "event": type, "seq": record.seq},
            )
            if self._on_queued is not None:
                self._on_queued()
        return record
