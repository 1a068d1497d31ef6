"""Organisations and their API keys. A key is shown once, when made; only its hash is kept.

Keys are 32 random bytes, so a plain SHA-256 is the right hash: there is nothing to
brute-force that a slow password hash would protect, and a lookup is one indexed find.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from datetime import UTC, datetime

from pymongo.errors import DuplicateKeyError

from storage.calls import _driver_errors, _object_id, _stored_time, _utc
from storage.documents import ApiKeyDocument, OrganizationDocument
from storage.errors import NotFound, StorageError
from storage.models import ApiKeyRecord, Organization

KEY_PREFIX = "vg_"
_GATEWAY_SECRETS = "gateway_secrets"
_SESSION_SECRET_ID = "dashboard-session"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random key in the gateway's format (`vg_` + 43 url-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _org(doc: OrganizationDocument) -> Organization:
    created = _utc(doc.created_at)
    assert created is not None
    return Organization(
        id=str(doc.id),
        name=doc.name,
        is_default=doc.is_default,
        created_at=created,
        inbound_lookup_url=doc.inbound_lookup_url,
        max_concurrent_calls=doc.max_concurrent_calls,
        inbound_reserved_calls=doc.inbound_reserved_calls,
    )


def _key(doc: ApiKeyDocument) -> ApiKeyRecord:
    created = _utc(doc.created_at)
    assert created is not None
    return ApiKeyRecord(
        id=str(doc.id),
        org_id=doc.org_id,
        name=doc.name,
        prefix=doc.prefix,
        created_at=created,
        revoked_at=_utc(doc.revoked_at),
    )


class AccountRepository:
    """Organisations and API keys on MongoDB."""

    @_driver_errors
    async def count_organizations(self) -> int:
        return await OrganizationDocument.get_pymongo_collection().count_documents({})

    @_driver_errors
    async def organization_named(self, name: str) -> Organization | None:
        doc = await OrganizationDocument.find_one(OrganizationDocument.name == name)
        return _org(doc) if doc else None

    @_driver_errors
    async def organizations(self) -> list[Organization]:
        docs = await OrganizationDocument.find({}).sort("created_at").to_list()
        return [_org(d) for d in docs]

    @_driver_errors
    async def get_organization(self, org_id: str) -> Organization:
        """The organisation `org_id`; `NotFound` if there is none."""
        doc = await OrganizationDocument.get(_object_id(org_id, what="organisation"))
        if doc is None:
            raise NotFound(f"no organisation {org_id!r}")
        return _org(doc)

    @_driver_errors
    async def set_inbound_lookup_url(self, org_id: str, url: str | None) -> Organization:
        """Store the organisation's caller lookup URL (None: no lookup); `NotFound` if none."""
        oid = _object_id(org_id, what="organisation")
        await OrganizationDocument.get_pymongo_collection().update_one(
            {"_id": oid}, {"$set": {"inbound_lookup_url": url}}
        )
        return await self.get_organization(org_id)

    @_driver_errors
    async def set_call_caps(
        self, org_id: str, *, max_concurrent_calls: int | None, inbound_reserved_calls: int
    ) -> Organization:
        """Store the organisation's cap on live calls (None: none) and the share of it kept
        for inbound calls (the API checks 0 <= reserved < max); `NotFound` if none."""
        oid = _object_id(org_id, what="organisation")
        await OrganizationDocument.get_pymongo_collection().update_one(
            {"_id": oid},
            {
                "$set": {
                    "max_concurrent_calls": max_concurrent_calls,
                    "inbound_reserved_calls": inbound_reserved_calls,
                }
            },
        )
        return await self.get_organization(org_id)

    @_driver_errors
    async def default_organization(self) -> Organization | None:
        """The organisation that owns calls reaching no assistant (the first one made)."""
        doc = await OrganizationDocument.find_one(OrganizationDocument.is_default == True)  # noqa: E712
        return _org(doc) if doc else None

    @_driver_errors
    async def ensure_organization(self, name: str) -> Organization:
        """The organisation called `name`, made now if missing (the first one is the default)."""
        existing = await self.organization_named(name)
        if existing is not None:
            return existing
        first = await self.count_organizations() == 0
        doc = OrganizationDocument(
            name=name, is_default=first, created_at=_stored_time(datetime.now(UTC))
        )
        try:
            await doc.insert()
        except DuplicateKeyError:
            found = await self.organization_named(name)
            if found is None:
                raise StorageError(f"organisation {name!r} vanished while being made") from None
            return found
        return _org(doc)

    async def ensure_default_organization(self, name: str) -> Organization:
        """The default organisation, made now (called `name`) if there is none yet."""
        existing = await self.default_organization()
        return existing if existing is not None else await self.ensure_organization(name)

    @_driver_errors
    async def create_key(
        self, org_id: str, *, name: str = "admin", key: str | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """Store a new key for the organisation; returns it with the only copy of the secret."""
        secret = key or new_api_key()
        doc = ApiKeyDocument(
            org_id=org_id,
            name=name,
            prefix=secret[:8],
            key_hash=hash_api_key(secret),
            created_at=_stored_time(datetime.now(UTC)),
        )
        await doc.insert()
        return _key(doc), secret

    @_driver_errors
    async def find_active_key(self, key: str) -> ApiKeyRecord | None:
        """The unrevoked key whose hash matches, if any."""
        doc = await ApiKeyDocument.find_one(ApiKeyDocument.key_hash == hash_api_key(key))
        if doc is None or doc.revoked_at is not None:
            return None
        return _key(doc)

    @_driver_errors
    async def active_key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        """The unrevoked key with this id (a dashboard session names its key so), if any."""
        try:
            oid = _object_id(key_id, what="API key")
        except NotFound:
            return None
        doc = await ApiKeyDocument.find_one({"_id": oid})
        if doc is None or doc.revoked_at is not None:
            return None
        return _key(doc)

    @_driver_errors
    async def session_secret(self) -> bytes:
        """The key every gateway on this database signs dashboard sessions with: made by the
        first gateway that asks (an insert of a fixed `_id`; the others read the winner's)."""
        collection = ApiKeyDocument.get_pymongo_collection().database[_GATEWAY_SECRETS]
        doc = await collection.find_one({"_id": _SESSION_SECRET_ID})
        if doc is None:
            with contextlib.suppress(DuplicateKeyError):
                await collection.insert_one(
                    {"_id": _SESSION_SECRET_ID, "secret": secrets.token_hex(32)}
                )
            doc = await collection.find_one({"_id": _SESSION_SECRET_ID})
        if doc is None or not isinstance(doc.get("secret"), str):
            raise StorageError("the dashboard session secret could not be stored")
        return bytes.fromhex(doc["secret"])

    @_driver_errors
    async def list_keys(self, org_id: str) -> list[ApiKeyRecord]:
        docs = await ApiKeyDocument.find(ApiKeyDocument.org_id == org_id).to_list()
        return [_key(d) for d in docs]

    @_driver_errors
    async def revoke_key(self, key_id: str, *, org_id: str | None = None) -> ApiKeyRecord:
        """Revoke a key (of `org_id`, when given); the next request with it is refused."""
        query: dict[str, object] = {"_id": _object_id(key_id, what="API key")}
        if org_id is not None:
            query["org_id"] = org_id
        collection = ApiKeyDocument.get_pymongo_collection()
        await collection.update_one(
            {**query, "revoked_at": None},
            {"$set": {"revoked_at": _stored_time(datetime.now(UTC))}},
        )
        doc = await ApiKeyDocument.find_one(query)
        if doc is None:
            raise NotFound(f"no API key {key_id!r}")
        return _key(doc)
