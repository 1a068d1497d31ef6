"""Webhook deliveries through the API: their state and every attempt, re-sending one, and
the organisation's signing secret and its rotation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.api.operations import ApiRequest, Operation
from storage import DeliveryRecord, WebhookRepository

log = logging.getLogger(__name__)


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="the delivery id, sent as X-Webhook-Id (an idempotency key)")
    call_id: str
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[AttemptOut] = Field(description="every attempt ever made, oldest first")
    attempt_count: int = Field(description="attempts since it was last (re)queued")
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, record: DeliveryRecord) -> DeliveryOut:
        return cls.model_validate(record)


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["pending", "delivered", "failed"] | None = None
    call_id: str | None = None
    limit: int = Field(default=50, ge=1, le=500)


class WebhookSecret(BaseModel):
    secret: str = Field(description="HMAC-SHA256 key of X-Webhook-Signature (see README)")


class RotatedSecret(BaseModel):
    secret: str = Field(description="the new signing secret, current from now (shown once)")
    previous_valid_until: datetime = Field(
        description="until then deliveries carry the previous secret's signature too"
    )


def _repo(req: ApiRequest) -> WebhookRepository:
    return req.services.database.webhooks


async def list_deliveries(req: ApiRequest) -> BaseModel:
    q = req.query_as(DeliveryQuery)
    records = await _repo(req).list(
        req.principal.org_id, status=q.status, call_id=q.call_id, limit=q.limit
    )
    return DeliveryList(items=[DeliveryOut.of(r) for r in records])


async def get_delivery(req: ApiRequest) -> BaseModel:
    return DeliveryOut.of(await _repo(req).get(req.principal.org_id, req.path["delivery_id"]))


async def redeliver(req: ApiRequest) -> BaseModel:
    record = await _repo(req).redeliver(  # DeliveryBusy: 409 while a gateway sends it
        req.principal.org_id, req.path["delivery_id"], now=datetime.now(UTC)
    )
    req.services.outbox.poke()
    return DeliveryOut.of(record)


async def webhook_secret(req: ApiRequest) -> BaseModel:
    return WebhookSecret(secret=await _repo(req).webhook_secret(req.principal.org_id))


async def rotate_webhook_secret(req: ApiRequest) -> BaseModel:
    """Make a new signing secret current; the old one keeps signing for the grace period."""
    now = datetime.now(UTC)
    secret = await _repo(req).rotate_webhook_secret(req.principal.org_id, now=now)
    grace = timedelta(seconds=req.services.settings.webhook_secret_grace_s)
    log.info("webhook secret rotated", extra={"org_id": req.principal.org_id})
    return RotatedSecret(secret=secret, previous_valid_until=now + grace)


OPERATIONS = [
    Operation(
        "GET", "/webhooks/deliveries", list_deliveries, "Webhook deliveries, newest first",
        "webhooks", response=DeliveryList, query=DeliveryQuery, errors=(401, 422),
    ),
    Operation(
        "GET", "/webhooks/deliveries/{delivery_id}", get_delivery,
        "A delivery with every attempt", "webhooks", response=DeliveryOut, errors=(401, 404),
    ),
    Operation(
        "POST", "/webhooks/deliveries/{delivery_id}/redeliver", redeliver,
        "Send a delivery again (same id), now", "webhooks", response=DeliveryOut,
        errors=(401, 404, 409),
    ),
    Operation(
        "GET", "/webhooks/secret", webhook_secret, "The organisation's webhook signing secret",
        "webhooks", response=WebhookSecret, errors=(401,),
    ),
    Operation(
        "POST", "/webhooks/secret/rotate", rotate_webhook_secret,
        "Make a new signing secret current (the old one also signs for WEBHOOK_SECRET_GRACE_S)",
        "webhooks", response=RotatedSecret, errors=(401, 409),
    ),
]  # fmt: skip
