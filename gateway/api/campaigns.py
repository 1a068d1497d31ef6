"""Outbound campaigns through the API: create one, add its contacts (JSON or CSV, checked
row by row, all or nothing), read it with its counts and its contacts page by page, and
pause, resume or cancel it. The dialer (`gateway.campaigns`) reads what is stored here:
a cancelled campaign places no further call, and its live calls finish normally."""

from __future__ import annotations

import asyncio
import functools
import logging
import re

from pydantic import BaseModel

from gateway.api.campaign_models import (
    CampaignCreate,
    CampaignList,
    CampaignOut,
    ContactOut,
    ContactPage,
    ContactQuery,
    ContactsAdded,
    ContactUpload,
)
from gateway.api.contact_upload import check_rows, read_csv, read_json, required_placeholders
from gateway.api.numbers import require_registered
from gateway.api.operations import ApiRequest, Operation
from gateway.call.records import CallInputLimits
from gateway.errors import (
    ConflictError,
    ContactsRejected,
    NotConfigured,
    RequestInvalid,
    UnsupportedMediaType,
)
from storage import CampaignState, CampaignStateConflict, NotFound

log = logging.getLogger(__name__)

_UPLOAD_PATH = re.compile(r"^/campaigns/[^/]+/contacts/?$")
CSV_TYPES = ("text/csv", "application/csv")


def is_contact_upload(path: str) -> bool:
    """Whether `path` is a contact upload (its body cap is CAMPAIGN_UPLOAD_MAX_BYTES)."""
    return _UPLOAD_PATH.match(path) is not None


async def create_campaign(req: ApiRequest) -> BaseModel:
    """Store a campaign (active: it dials once it has contacts and its window is open). Its
    assistant must be the organisation's, its caller id registered to it, and for LiveKit
    its trunk an outbound trunk of the organisation."""
    body, services = req.body_as(CampaignCreate), req.services
    db, org_id = services.database, req.principal.org_id
    try:
        await db.assistants.get(org_id, body.assistant_id)
    except NotFound as exc:
        raise RequestInvalid(
            f"no assistant {body.assistant_id!r} in this organisation",
            [{"loc": ["body", "assistant_id"], "msg": "no such assistant"}],
        ) from exc
    trunk_id = None
    if body.call_service == "twilio":
        if services.twilio.rest is None:
            raise NotConfigured(
                "Twilio REST is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)"
            )
        from_number = body.from_number
    else:
        if services.rooms is None:
            raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
        if body.trunk_id is not None:
            trunk = await db.sip.trunk(org_id, body.trunk_id, "outbound")
        else:
            trunks = await db.sip.trunks(org_id, "outbound")
            if len(trunks) != 1:
                raise RequestInvalid(
                    f"trunk_id is required: the organisation has {len(trunks)} outbound trunks",
                    [{"loc": ["body", "trunk_id"], "msg": "required"}],
                )
            trunk = trunks[0]
        trunk_id = trunk.id
        from_number = body.from_number or (trunk.numbers[0] if trunk.numbers else None)
    if from_number is None:
        raise RequestInvalid("from_number is required: the trunk has no number")
    await require_registered(db, org_id, from_number, field="from_number")
    campaign = await db.campaigns.create(
        org_id, body.spec(from_number=from_number, trunk_id=trunk_id)
    )
    log.info(
        "campaign created",
        extra={"campaign_id": campaign.id, "org_id": org_id, "call_service": body.call_service},
    )
    return CampaignOut.of(campaign)


async def list_campaigns(req: ApiRequest) -> BaseModel:
    records = await req.services.database.campaigns.list(req.principal.org_id)
    return CampaignList(items=[CampaignOut.of(r) for r in records])


async def get_campaign(req: ApiRequest) -> BaseModel:
    store = req.services.database.campaigns
    campaign = await store.get(req.principal.org_id, req.path["campaign_id"])
    return CampaignOut.of(campaign, await store.counts(campaign.id))


async def list_contacts(req: ApiRequest) -> BaseModel:
    q, store = req.query_as(ContactQuery), req.services.database.campaigns
    campaign = await store.get(req.principal.org_id, req.path["campaign_id"])
    page = await store.contacts(campaign.id, status=q.status, after_n=q.after, limit=q.limit)
    return ContactPage(
        items=[ContactOut.of(c) for c in page],
        next_after=page[-1].n if len(page) == q.limit else None,
    )


async def add_contacts(req: ApiRequest) -> BaseModel:
    """Check every row of the upload, then store them all as one batch, or none: any
    rejected row answers 422 `contacts_rejected` with the report of rejected rows."""
    services, org_id = req.services, req.principal.org_id
    db = services.database
    campaign = await db.campaigns.get(org_id, req.path["campaign_id"])
    if campaign.state in (CampaignState.CANCELLED, CampaignState.COMPLETED):
        raise CampaignStateConflict(
            f"campaign {campaign.id!r} is {campaign.state.value}: it takes no contacts"
        )
    try:
        assistant = await db.assistants.get(org_id, campaign.assistant_id)
    except NotFound as exc:
        raise ConflictError(
            f"the campaign's assistant {campaign.assistant_id!r} no longer exists"
        ) from exc
    raw = req.raw or b""
    if req.content_type in CSV_TYPES:
        rows = read_csv(raw)
    elif req.content_type in ("application/json", ""):
        rows = read_json(raw)
    else:
        raise UnsupportedMediaType(
            f"contacts are sent as application/json or text/csv, not {req.content_type}"
        )
    existing = await db.campaigns.existing_numbers(campaign.id)
    # 100 000 rows are a second or two of Python: off the event loop, which paces live
    # calls' audio every 20 ms.
    checked = await asyncio.to_thread(
        functools.partial(
            check_rows,
            rows,
            required=required_placeholders(assistant.config),
            existing=existing,
            limits=CallInputLimits.of(services.settings),
            config=assistant.config,
            from_number=campaign.from_number or "",
        )
    )
    if checked.rejected:
        raise ContactsRejected(
            checked.rejected[: ContactsRejected.REPORT_MAX],
            rejected=len(checked.rejected),
            total=checked.total,
        )
    if not checked.accepted:
        raise RequestInvalid("the upload has no contacts")
    added = await db.campaigns.add_contacts(campaign.id, checked.accepted)
    total = (await db.campaigns.get(org_id, campaign.id)).contact_count
    log.info(
        "campaign contacts added",
        extra={"campaign_id": campaign.id, "added": added, "total": total},
    )
    return ContactsAdded(added=added, total=total)


async def _set_state(req: ApiRequest, state: CampaignState) -> BaseModel:
    store = req.services.database.campaigns
    campaign = await store.set_state(req.principal.org_id, req.path["campaign_id"], state)
    log.info("campaign %s", state.value, extra={"campaign_id": campaign.id})
    return CampaignOut.of(campaign)


async def pause_campaign(req: ApiRequest) -> BaseModel:
    return await _set_state(req, CampaignState.PAUSED)


async def resume_campaign(req: ApiRequest) -> BaseModel:
    return await _set_state(req, CampaignState.ACTIVE)


async def cancel_campaign(req: ApiRequest) -> BaseModel:
    return await _set_state(req, CampaignState.CANCELLED)


OPERATIONS = [
    Operation(
        "POST", "/campaigns", create_campaign,
        "Create an outbound campaign (422 if its schedule can never open)", "campaigns",
        body=CampaignCreate, response=CampaignOut, status=201, errors=(401, 422, 503),
    ),
    Operation(
        "GET", "/campaigns", list_campaigns, "The organisation's campaigns, newest first",
        "campaigns", response=CampaignList, errors=(401,),
    ),
    Operation(
        "GET", "/campaigns/{campaign_id}", get_campaign,
        "A campaign with its contacts counted by status and by outcome", "campaigns",
        response=CampaignOut, errors=(401, 404),
    ),
    Operation(
        "GET", "/campaigns/{campaign_id}/contacts", list_contacts,
        "A page of the campaign's contacts in upload order (filter by status)", "campaigns",
        query=ContactQuery, response=ContactPage, errors=(401, 404, 422),
    ),
    Operation(
        "POST", "/campaigns/{campaign_id}/contacts", add_contacts,
        "Add contacts (JSON array or text/csv); any rejected row: 422 with the rows' report, "
        "nothing added", "campaigns",
        body=ContactUpload, raw_body=CSV_TYPES, response=ContactsAdded, status=201,
        errors=(400, 401, 404, 409, 413, 415, 422),
    ),
    Operation(
        "POST", "/campaigns/{campaign_id}/pause", pause_campaign,
        "Pause (idempotent; 409 if cancelled or completed)", "campaigns",
        response=CampaignOut, errors=(401, 404, 409),
    ),
    Operation(
        "POST", "/campaigns/{campaign_id}/resume", resume_campaign,
        "Resume (idempotent; 409 if cancelled or completed)", "campaigns",
        response=CampaignOut, errors=(401, 404, 409),
    ),
    Operation(
        "POST", "/campaigns/{campaign_id}/cancel", cancel_campaign,
        "Cancel for good (idempotent; 409 if completed): live calls finish normally",
        "campaigns", response=CampaignOut, errors=(401, 404, 409),
    ),
]  # fmt: skip
