"""Assistants: an organisation's agents, and the inbound numbers that reach them (a number
reaches an assistant only while the registry, `storage/numbers.py`, gives it to the
assistant's organisation)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId
from bson.errors import InvalidId

from storage.calls import _driver_errors, _object_id, _stored_time, _utc
from storage.documents import AssistantDocument, PhoneNumberDocument
from storage.errors import NotFound, NumberTaken
from storage.models import AssistantConfig, AssistantRecord, normalize_e164

_SCHEMA_JSON = "structured_data_schema_json"


def _stored_config(config: AssistantConfig) -> dict[str, Any]:
    """The configuration as stored, field by field, except the analysis plan's JSON Schema:
    kept as JSON text, since a schema's keys (`$defs`, `$ref`, a property named "a.b") are
    no field names the store takes (FerretDB refuses `$` and `.`, MongoDB `$ref` without
    `$id`). The same holds for the analysis result's data (`storage.calls._analysis`)."""
    fields = config.model_dump()
    plan = fields.get("analysis")
    if plan is not None:
        schema = plan.pop("structured_data_schema", None)
        if schema is not None:
            plan[_SCHEMA_JSON] = json.dumps(schema, ensure_ascii=False)
    return fields


def _stored_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """An analysis plan as stored, as `AnalysisPlan` reads it: the schema from its JSON text
    (or as a nested document, as assistants stored before it were)."""
    plan = dict(plan)
    schema_json = plan.pop(_SCHEMA_JSON, None)
    if isinstance(schema_json, str):
        plan["structured_data_schema"] = json.loads(schema_json)
    return plan


def _record(doc: AssistantDocument) -> AssistantRecord:
    created, updated = _utc(doc.created_at), _utc(doc.updated_at)
    assert created is not None and updated is not None
    fields = doc.model_dump(include=set(AssistantConfig.model_fields))
    if fields.get("webhook_events") is None:  # stored before it existed: the default
        fields.pop("webhook_events", None)
    if fields.get("analysis") is not None:
        fields["analysis"] = _stored_plan(fields["analysis"])
    return AssistantRecord(
        id=str(doc.id),
        org_id=doc.org_id,
        config=AssistantConfig.model_validate(fields),
        created_at=created,
        updated_at=updated,
    )


class AssistantRepository:
    """Assistants on MongoDB; every read and write is scoped to one organisation."""

    async def _owned(self, org_id: str, assistant_id: str) -> AssistantDocument:
        doc = await AssistantDocument.find_one(
            AssistantDocument.id == _object_id(assistant_id, what="assistant"),
            AssistantDocument.org_id == org_id,
        )
        if doc is None:
            raise NotFound(f"no assistant {assistant_id!r}")
        return doc

    async def _check_numbers(
        self, org_id: str, numbers: list[str], *, except_id: str | None
    ) -> None:
        """A number reaches one assistant of its organisation only (the registry keeps other
        organisations' assistants off it)."""
        if not numbers:
            return
        others = await AssistantDocument.find(
            {"org_id": org_id, "phone_numbers": {"$in": numbers}}
        ).to_list()
        taken = {n for doc in others if str(doc.id) != except_id for n in doc.phone_numbers}
        clash = sorted(taken & set(numbers))
        if clash:
            raise NumberTaken(f"numbers already reach another assistant: {', '.join(clash)}")

    @_driver_errors
    async def create(self, org_id: str, config: AssistantConfig) -> AssistantRecord:
        await self._check_numbers(org_id, config.phone_numbers, except_id=None)
        now = _stored_time(datetime.now(UTC))
        doc = AssistantDocument(
            org_id=org_id, created_at=now, updated_at=now, **_stored_config(config)
        )
        await doc.insert()
        return _record(doc)

    @_driver_errors
    async def get(self, org_id: str, assistant_id: str) -> AssistantRecord:
        return _record(await self._owned(org_id, assistant_id))

    @_driver_errors
    async def using_number(self, org_id: str, number: str) -> list[AssistantRecord]:
        """The organisation's assistants that list `number`."""
        docs = await AssistantDocument.find({"org_id": org_id, "phone_numbers": number}).to_list()
        return [_record(d) for d in docs]

    @_driver_errors
    async def detach_number(self, number: str, *, keep_org: str | None) -> list[AssistantRecord]:
        """Take `number` off every assistant outside `keep_org` (after the operator gave it
        elsewhere); returns the assistants it was taken from, as they were."""
        query: dict[str, object] = {"phone_numbers": number}
        if keep_org is not None:
            query["org_id"] = {"$ne": keep_org}
        docs = await AssistantDocument.find(query).to_list()
        collection = AssistantDocument.get_pymongo_collection()
        for doc in docs:
            await collection.update_one({"_id": doc.id}, {"$pull": {"phone_numbers": number}})
        return [_record(d) for d in docs]

    @_driver_errors
    async def list(self, org_id: str) -> list[AssistantRecord]:
        docs = (
            await AssistantDocument.find(AssistantDocument.org_id == org_id)
            .sort("created_at")
            .to_list()
        )
        return [_record(d) for d in docs]

    @_driver_errors
    async def replace(
        self, org_id: str, assistant_id: str, config: AssistantConfig
    ) -> AssistantRecord:
        """Store `config` as the assistant's whole configuration (PATCH merges before this)."""
        doc = await self._owned(org_id, assistant_id)
        await self._check_numbers(org_id, config.phone_numbers, except_id=assistant_id)
        fields = {**_stored_config(config), "updated_at": _stored_time(datetime.now(UTC))}
        await AssistantDocument.get_pymongo_collection().update_one(
            {"_id": doc.id}, {"$set": fields}
        )
        return _record(await self._owned(org_id, assistant_id))

    @_driver_errors
    async def delete(self, org_id: str, assistant_id: str) -> None:
        doc = await self._owned(org_id, assistant_id)
        await doc.delete()

    @_driver_errors
    async def for_number(self, number: str) -> AssistantRecord | None:
        """The assistant an inbound call to `number` reaches: the one listing it in the
        organisation the registry gives the number to (none when no organisation holds it)."""
        try:
            number = normalize_e164(number)
        except ValueError:
            return None  # a client or SIP address: no number of the registry
        entry = await PhoneNumberDocument.get(number)
        if entry is None or entry.org_id is None:
            return None
        doc = await AssistantDocument.find_one({"org_id": entry.org_id, "phone_numbers": number})
        return _record(doc) if doc else None

    @_driver_errors
    async def get_any(self, assistant_id: str) -> AssistantRecord | None:
        """An assistant by id, whatever its organisation (for the gateway's own use)."""
        try:
            doc = await AssistantDocument.get(PydanticObjectId(assistant_id))
        except (InvalidId, TypeError):
            return None
        return _record(doc) if doc else None
