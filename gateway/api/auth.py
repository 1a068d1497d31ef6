"""API keys at the edge: `x-api-key` -> the caller's organisation, and the bootstrap key.

Every request looks its key up (one indexed find on the key's hash), so a revoked key is
refused from the next request on; nothing is cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.errors import AuthError
from storage import AccountRepository, hash_api_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an organisation, through one of its keys."""

    org_id: str
    key_id: str


async def authenticate(accounts: AccountRepository, api_key: str | None) -> Principal:
    """The organisation of an active key; `AuthError` for a missing, unknown or revoked one."""
    if not api_key:
        raise AuthError("missing x-api-key header")
    record = await accounts.find_active_key(api_key)
    if record is None:
        raise AuthError("invalid or revoked API key")
    return Principal(org_id=record.org_id, key_id=record.id)


async def bootstrap_api_key(accounts: AccountRepository, key: str, org_name: str) -> None:
    """Store GATEWAY_API_KEY as the first admin key when the database has no organisation."""
    if await accounts.count_organizations() == 0:
        org = await accounts.ensure_organization(org_name)
        await accounts.create_key(org.id, name="GATEWAY_API_KEY", key=key)
        log.info("GATEWAY_API_KEY stored as the first key", extra={"org": org_name})
    elif await accounts.find_active_key(key) is None:
        log.warning(
            "GATEWAY_API_KEY ignored: the database already has organisations and this key "
            "is not one of their keys (make keys with `voice-gateway create-key --org NAME`)",
            extra={"key_hash_prefix": hash_api_key(key)[:8]},
        )
