"""The MongoDB mirror of LiveKit SIP trunks and dispatch rules, with their organisation.

LiveKit is the source of truth for routing; this mirror says who owns what, and which
assistant a dispatch rule's calls reach. Trunk passwords live only in LiveKit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from storage.calls import _driver_errors, _object_id, _stored_time, _utc
from storage.documents import DispatchRuleDocument, SipTrunkDocument
from storage.errors import NotFound
from storage.models import (
    DispatchKind,
    DispatchRuleRecord,
    SipProvider,
    SipTrunkRecord,
    TrunkKind,
)


def _trunk(doc: SipTrunkDocument) -> SipTrunkRecord:
    created = _utc(doc.created_at)
    assert created is not None
    return SipTrunkRecord(
        id=str(doc.id),
        org_id=doc.org_id,
        livekit_id=doc.livekit_id,
        kind=cast(TrunkKind, doc.kind),
        provider=cast(SipProvider, doc.provider),
        name=doc.name,
        numbers=tuple(doc.numbers),
        address=doc.address,
        transport=doc.transport,
        allowed_addresses=tuple(doc.allowed_addresses),
        allowed_numbers=tuple(doc.allowed_numbers),
        auth_username=doc.auth_username,
        has_password=doc.has_password,
        created_at=created,
    )


def _rule(doc: DispatchRuleDocument) -> DispatchRuleRecord:
    created = _utc(doc.created_at)
    assert created is not None
    return DispatchRuleRecord(
        id=str(doc.id),
        org_id=doc.org_id,
        livekit_id=doc.livekit_id,
        name=doc.name,
        assistant_id=doc.assistant_id,
        trunk_ids=tuple(doc.trunk_ids),
        kind=cast(DispatchKind, doc.kind),
        room_prefix=doc.room_prefix,
        room_name=doc.room_name,
        has_pin=doc.has_pin,
        created_at=created,
    )


class SipRepository:
    """Trunks and dispatch rules of each organisation."""

    @_driver_errors
    async def add_trunk(
        self,
        *,
        org_id: str,
        livekit_id: str,
        kind: TrunkKind,
        provider: SipProvider,
        name: str,
        numbers: list[str],
        address: str | None = None,
        transport: str | None = None,
        allowed_addresses: list[str] | None = None,
        allowed_numbers: list[str] | None = None,
        auth_username: str | None = None,
        has_password: bool = False,
    ) -> SipTrunkRecord:
        doc = SipTrunkDocument(
            org_id=org_id,
            livekit_id=livekit_id,
            kind=kind,
            provider=provider,
            name=name,
            numbers=numbers,
            address=address,
            transport=transport,
            allowed_addresses=allowed_addresses or [],
            allowed_numbers=allowed_numbers or [],
            auth_username=auth_username,
            has_password=has_password,
            created_at=_stored_time(datetime.now(UTC)),
        )
        await doc.insert()
        return _trunk(doc)

    @_driver_errors
    async def trunks(self, org_id: str, kind: TrunkKind) -> list[SipTrunkRecord]:
        docs = (
            await SipTrunkDocument.find(
                SipTrunkDocument.org_id == org_id, SipTrunkDocument.kind == kind
            )
            .sort("created_at")
            .to_list()
        )
        return [_trunk(d) for d in docs]

    @_driver_errors
    async def trunk(self, org_id: str, trunk_id: str, kind: TrunkKind) -> SipTrunkRecord:
        doc = await SipTrunkDocument.find_one(
            SipTrunkDocument.id == _object_id(trunk_id, what="trunk"),
            SipTrunkDocument.org_id == org_id,
            SipTrunkDocument.kind == kind,
        )
        if doc is None:
            raise NotFound(f"no {kind} trunk {trunk_id!r}")
        return _trunk(doc)

    @_driver_errors
    async def trunks_with_number(
        self, number: str, *, org_id: str | None = None
    ) -> list[SipTrunkRecord]:
        """Trunks (of `org_id`, or of any organisation) that list `number`."""
        query: dict[str, object] = {"numbers": number}
        if org_id is not None:
            query["org_id"] = org_id
        return [_trunk(d) for d in await SipTrunkDocument.find(query).to_list()]

    @_driver_errors
    async def remove_trunk(self, trunk_id: str) -> None:
        await SipTrunkDocument.get_pymongo_collection().delete_one(
            {"_id": _object_id(trunk_id, what="trunk")}
        )

    @_driver_errors
    async def add_rule(
        self,
        *,
        org_id: str,
        livekit_id: str,
        name: str,
        assistant_id: str,
        trunk_ids: list[str],
        kind: DispatchKind,
        room_prefix: str | None,
        room_name: str | None,
        has_pin: bool,
    ) -> DispatchRuleRecord:
        doc = DispatchRuleDocument(
            org_id=org_id,
            livekit_id=livekit_id,
            name=name,
            assistant_id=assistant_id,
            trunk_ids=trunk_ids,
            kind=kind,
            room_prefix=room_prefix,
            room_name=room_name,
            has_pin=has_pin,
            created_at=_stored_time(datetime.now(UTC)),
        )
        await doc.insert()
        return _rule(doc)

    @_driver_errors
    async def rules(self, org_id: str) -> list[DispatchRuleRecord]:
        docs = (
            await DispatchRuleDocument.find(DispatchRuleDocument.org_id == org_id)
            .sort("created_at")
            .to_list()
        )
        return [_rule(d) for d in docs]

    @_driver_errors
    async def rule(self, org_id: str, rule_id: str) -> DispatchRuleRecord:
        doc = await DispatchRuleDocument.find_one(
            DispatchRuleDocument.id == _object_id(rule_id, what="dispatch rule"),
            DispatchRuleDocument.org_id == org_id,
        )
        if doc is None:
            raise NotFound(f"no dispatch rule {rule_id!r}")
        return _rule(doc)

    @_driver_errors
    async def remove_rule(self, rule_id: str) -> None:
        await DispatchRuleDocument.get_pymongo_collection().delete_one(
            {"_id": _object_id(rule_id, what="dispatch rule")}
        )

    @_driver_errors
    async def rules_using_trunk(self, trunk_id: str) -> list[DispatchRuleRecord]:
        docs = await DispatchRuleDocument.find({"trunk_ids": trunk_id}).to_list()
        return [_rule(d) for d in docs]
