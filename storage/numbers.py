"""The phone-number registry: which organisation may use a number (assistant numbers, SIP
trunk numbers, outbound caller ids) and which one an inbound call to it reaches.

Each number is one document keyed by its E.164 spelling, so claiming a free number is one
insert that the unique `_id` settles between racing organisations (FerretDB 1.24 has no
atomic conditional update), and every lookup on a call's path is by `_id`. A conflict
says only that the number is not available: never whose it is.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import cast

from pymongo.errors import DuplicateKeyError

from storage.calls import _driver_errors, _stored_time, _utc
from storage.documents import (
    AssistantDocument,
    MigrationDocument,
    PhoneNumberDocument,
    SipTrunkDocument,
)
from storage.errors import NotFound, NumberUnavailable
from storage.models import NumberAdoption, NumberAssigner, PhoneNumberRecord

# The migration that registered the numbers assistants and trunks used before the registry.
ADOPT_USED_NUMBERS = "phone-numbers-from-assistants-and-trunks"


def _record(doc: PhoneNumberDocument) -> PhoneNumberRecord:
    created = _utc(doc.created_at)
    assert created is not None
    return PhoneNumberRecord(
        number=doc.id,
        org_id=doc.org_id,
        assigned_by=cast(NumberAssigner, doc.assigned_by),
        created_at=created,
    )


def unavailable(number: str) -> NumberUnavailable:
    """The one answer to a number an organisation may not have, whoever holds it."""
    return NumberUnavailable(f"{number} is not available to this organisation")


class PhoneNumberRepository:
    """The registry on MongoDB. Numbers given here are E.164 already (callers normalise)."""

    @_driver_errors
    async def owner(self, number: str) -> PhoneNumberRecord | None:
        """The registry entry of `number`, if any (one `_id` lookup)."""
        doc = await PhoneNumberDocument.get(number)
        return _record(doc) if doc else None

    @_driver_errors
    async def claim(
        self, org_id: str, number: str, *, by: NumberAssigner = "api"
    ) -> PhoneNumberRecord:
        """Register a free `number` to `org_id` (again: the same record). `NumberUnavailable`
        when another organisation holds it or the operator reserved it."""
        doc = PhoneNumberDocument(
            id=number, org_id=org_id, assigned_by=by, created_at=_stored_time(datetime.now(UTC))
        )
        try:
            await doc.insert()
        except DuplicateKeyError:
            existing = await PhoneNumberDocument.get(number)
            if existing is None or existing.org_id != org_id:
                raise unavailable(number) from None
            return _record(existing)
        return _record(doc)

    @_driver_errors
    async def assign(self, number: str, org_id: str | None) -> PhoneNumberRecord | None:
        """The operator's word: `number` is `org_id`'s from now on (`None`: reserved, no
        organisation may claim it), whoever held it. Returns the entry it replaced."""
        previous = await PhoneNumberDocument.get(number)
        entry = {
            "_id": number,
            "org_id": org_id,
            "assigned_by": "operator",
            "created_at": _stored_time(datetime.now(UTC)),
        }
        await PhoneNumberDocument.get_pymongo_collection().replace_one(
            {"_id": number}, entry, upsert=True
        )
        return _record(previous) if previous else None

    @_driver_errors
    async def release(self, number: str, *, org_id: str | None) -> PhoneNumberRecord:
        """Free `number`: only if `org_id` holds it when one is given (the API's case; the
        operator gives none). `NotFound` otherwise, the same whoever holds it."""
        doc = await PhoneNumberDocument.get(number)
        if doc is None or (org_id is not None and doc.org_id != org_id):
            raise NotFound(f"no number {number} in this organisation")
        query: dict[str, object] = {"_id": number, "org_id": doc.org_id}
        await PhoneNumberDocument.get_pymongo_collection().delete_one(query)
        return _record(doc)

    @_driver_errors
    async def entries(self, org_id: str | None = None) -> list[PhoneNumberRecord]:
        """The numbers of `org_id`, or (None) the whole registry, in number order."""
        query = {} if org_id is None else {"org_id": org_id}
        docs = await PhoneNumberDocument.find(query).sort("_id").to_list()
        return [_record(d) for d in docs]

    @_driver_errors
    async def not_registered(self, org_id: str, numbers: list[str]) -> list[str]:
        """Those of `numbers` that are not `org_id`'s (free, another's or reserved alike)."""
        missing = []
        for number in dict.fromkeys(numbers):  # by `_id`, one at a time: no scan on FerretDB
            doc = await PhoneNumberDocument.get(number)
            if doc is None or doc.org_id != org_id:
                missing.append(number)
        return missing

    @_driver_errors
    async def used_numbers(self) -> dict[str, frozenset[str]]:
        """Every number on an assistant or a trunk, with the organisations that list it."""
        users: defaultdict[str, set[str]] = defaultdict(set)
        projection = {"org_id": 1, "phone_numbers": 1, "numbers": 1}
        for collection, key in (
            (AssistantDocument.get_pymongo_collection(), "phone_numbers"),
            (SipTrunkDocument.get_pymongo_collection(), "numbers"),
        ):
            async for doc in collection.find({}, projection):
                for number in doc.get(key) or []:
                    users[str(number)].add(str(doc["org_id"]))
        return {number: frozenset(orgs) for number, orgs in users.items()}

    @_driver_errors
    async def adopt_used_numbers(self) -> NumberAdoption:
        """Once per database: register each number that assistants or trunks of exactly one
        organisation used before the registry existed to that organisation; numbers several
        organisations used stay unregistered (they reach no assistant until the operator
        assigns them). Safe to run from several gateways at once: each registration is a
        unique insert, and the migration is marked done only after all of them."""
        if await MigrationDocument.get(ADOPT_USED_NUMBERS) is not None:
            return NumberAdoption()
        adoption = NumberAdoption()
        for number, orgs in sorted((await self.used_numbers()).items()):
            if len(orgs) > 1:
                adoption.disputed[number] = orgs
                continue
            [org_id] = orgs
            doc = PhoneNumberDocument(
                id=number,
                org_id=org_id,
                assigned_by="migration",
                created_at=_stored_time(datetime.now(UTC)),
            )
            try:
                await doc.insert()
            except DuplicateKeyError:
                continue  # registered already (by another gateway, or claimed meanwhile)
            adoption.adopted[number] = org_id
        marker = MigrationDocument(id=ADOPT_USED_NUMBERS, done_at=datetime.now(UTC))
        try:
            await marker.insert()
        except DuplicateKeyError:
            pass  # another gateway finished it at the same time
        return adoption
