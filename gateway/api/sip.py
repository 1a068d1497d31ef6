"""SIP trunks and dispatch rules: made in LiveKit (`livekit-api`), mirrored in MongoDB
with their organisation. Lists come from the mirror; passwords never leave LiveKit. A
trunk's numbers are registered to its organisation first (`gateway/api/numbers.py`)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from gateway.api.models import (
    DispatchRuleCreate,
    DispatchRuleList,
    DispatchRuleOut,
    InboundTrunkCreate,
    OutboundTrunkCreate,
    TrunkList,
    TrunkOut,
)
from gateway.api.numbers import require_registered
from gateway.api.operations import ApiRequest, Operation
from gateway.errors import ConflictError, NotConfigured
from storage import TrunkKind
from telephony.livekit import LiveKitAdmin, SipTrunk

log = logging.getLogger(__name__)


def _livekit(req: ApiRequest) -> LiveKitAdmin:
    if req.services.livekit is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    return req.services.livekit


async def _create_trunk(
    req: ApiRequest, kind: TrunkKind, body: InboundTrunkCreate | OutboundTrunkCreate
) -> BaseModel:
    """Make the trunk in LiveKit (the password goes there only), then mirror it here. Its
    numbers must be the organisation's (422 naming `numbers` otherwise)."""
    org_id = req.principal.org_id
    await require_registered(req.services.database, org_id, body.numbers, field="numbers")
    fields = body.model_dump(exclude={"provider", "auth_password"})
    password = body.auth_password.get_secret_value() if body.auth_password else None
    livekit_id = await _livekit(req).create_trunk(
        kind, SipTrunk(**fields, auth_password=password, metadata=f"org={org_id}")
    )
    record = await req.services.database.sip.add_trunk(
        org_id=org_id,
        livekit_id=livekit_id,
        kind=kind,
        provider=body.provider,
        has_password=password is not None,
        **fields,
    )
    log.info("%s trunk created", kind, extra={"trunk": record.id, "livekit_id": livekit_id})
    return TrunkOut.of(record)


async def create_inbound_trunk(req: ApiRequest) -> BaseModel:
    return await _create_trunk(req, "inbound", req.body_as(InboundTrunkCreate))


async def create_outbound_trunk(req: ApiRequest) -> BaseModel:
    return await _create_trunk(req, "outbound", req.body_as(OutboundTrunkCreate))


async def _list_trunks(req: ApiRequest, kind: TrunkKind) -> BaseModel:
    trunks = await req.services.database.sip.trunks(req.principal.org_id, kind)
    return TrunkList(items=[TrunkOut.of(t) for t in trunks])


async def list_inbound_trunks(req: ApiRequest) -> BaseModel:
    return await _list_trunks(req, "inbound")


async def list_outbound_trunks(req: ApiRequest) -> BaseModel:
    return await _list_trunks(req, "outbound")


async def _delete_trunk(req: ApiRequest, kind: TrunkKind) -> None:
    trunk = await req.services.database.sip.trunk(req.principal.org_id, req.path["trunk_id"], kind)
    users = await req.services.database.sip.rules_using_trunk(trunk.id)
    if users:
        raise ConflictError(
            "the trunk is used by dispatch rules: " + ", ".join(rule.id for rule in users)
        )
    await _livekit(req).delete_trunk(trunk.livekit_id)
    await req.services.database.sip.remove_trunk(trunk.id)
    log.info("trunk deleted", extra={"trunk": trunk.id, "livekit_id": trunk.livekit_id})


async def delete_inbound_trunk(req: ApiRequest) -> None:
    await _delete_trunk(req, "inbound")


async def delete_outbound_trunk(req: ApiRequest) -> None:
    await _delete_trunk(req, "outbound")


async def create_dispatch_rule(req: ApiRequest) -> BaseModel:
    body = req.body_as(DispatchRuleCreate)
    org_id = req.principal.org_id
    assistant = await req.services.database.assistants.get(org_id, body.assistant_id)
    trunks = [
        await req.services.database.sip.trunk(org_id, tid, "inbound") for tid in body.trunk_ids
    ]
    livekit_id = await _livekit(req).create_dispatch_rule(
        name=body.name,
        trunk_ids=[t.livekit_id for t in trunks],
        room_prefix=body.room_prefix if body.kind == "individual" else None,
        room_name=body.room_name if body.kind == "direct" else None,
        pin=body.pin,
        # The SIP participant carries these, so the gateway knows whose call a room holds.
        attributes={"voice_gateway.org_id": org_id, "voice_gateway.assistant_id": assistant.id},
    )
    record = await req.services.database.sip.add_rule(
        org_id=org_id,
        livekit_id=livekit_id,
        name=body.name,
        assistant_id=assistant.id,
        trunk_ids=[t.id for t in trunks],
        kind=body.kind,
        room_prefix=body.room_prefix if body.kind == "individual" else None,
        room_name=body.room_name if body.kind == "direct" else None,
        has_pin=body.pin is not None,
    )
    log.info("dispatch rule created", extra={"rule": record.id, "livekit_id": livekit_id})
    return DispatchRuleOut.of(record)


async def list_dispatch_rules(req: ApiRequest) -> BaseModel:
    rules = await req.services.database.sip.rules(req.principal.org_id)
    return DispatchRuleList(items=[DispatchRuleOut.of(r) for r in rules])


async def delete_dispatch_rule(req: ApiRequest) -> None:
    rule = await req.services.database.sip.rule(req.principal.org_id, req.path["rule_id"])
    await _livekit(req).delete_dispatch_rule(rule.livekit_id)
    await req.services.database.sip.remove_rule(rule.id)
    log.info("dispatch rule deleted", extra={"rule": rule.id, "livekit_id": rule.livekit_id})


_WRITE_ERRORS = (401, 404, 422, 502, 503)

OPERATIONS = [
    Operation(
        "POST", "/sip/trunks/inbound", create_inbound_trunk, "Create an inbound SIP trunk",
        "sip", body=InboundTrunkCreate, response=TrunkOut, status=201, errors=_WRITE_ERRORS,
    ),
    Operation(
        "GET", "/sip/trunks/inbound", list_inbound_trunks, "List inbound SIP trunks", "sip",
        response=TrunkList, errors=(401,),
    ),
    Operation(
        "DELETE", "/sip/trunks/inbound/{trunk_id}", delete_inbound_trunk,
        "Delete an inbound SIP trunk", "sip", status=204, errors=(401, 404, 409, 502, 503),
    ),
    Operation(
        "POST", "/sip/trunks/outbound", create_outbound_trunk, "Create an outbound SIP trunk",
        "sip", body=OutboundTrunkCreate, response=TrunkOut, status=201, errors=_WRITE_ERRORS,
    ),
    Operation(
        "GET", "/sip/trunks/outbound", list_outbound_trunks, "List outbound SIP trunks", "sip",
        response=TrunkList, errors=(401,),
    ),
    Operation(
        "DELETE", "/sip/trunks/outbound/{trunk_id}", delete_outbound_trunk,
        "Delete an outbound SIP trunk", "sip", status=204, errors=(401, 404, 409, 502, 503),
    ),
    Operation(
        "POST", "/sip/dispatch-rules", create_dispatch_rule,
        "Create a dispatch rule: inbound calls on its trunks reach an assistant", "sip",
        body=DispatchRuleCreate, response=DispatchRuleOut, status=201, errors=_WRITE_ERRORS,
    ),
    Operation(
        "GET", "/sip/dispatch-rules", list_dispatch_rules, "List dispatch rules", "sip",
        response=DispatchRuleList, errors=(401,),
    ),
    Operation(
        "DELETE", "/sip/dispatch-rules/{rule_id}", delete_dispatch_rule,
        "Delete a dispatch rule", "sip", status=204, errors=(401, 404, 502, 503),
    ),
]  # fmt: skip
