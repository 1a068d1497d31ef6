"""API keys through the API: the organisation's keys (never their secrets) and revoking
one. Keys are made with `voice-gateway create-key`; no route makes them."""

from __future__ import annotations

from pydantic import BaseModel

from gateway.api.models import ApiKeyList, ApiKeyOut
from gateway.api.operations import ApiRequest, Operation


async def list_api_keys(req: ApiRequest) -> BaseModel:
    keys = await req.services.database.accounts.list_keys(req.principal.org_id)
    return ApiKeyList(items=[ApiKeyOut.of(k) for k in keys])


async def revoke_api_key(req: ApiRequest) -> BaseModel:
    accounts = req.services.database.accounts
    key = await accounts.revoke_key(req.path["key_id"], org_id=req.principal.org_id)
    return ApiKeyOut.of(key)


OPERATIONS = [
    Operation(
        "GET", "/api-keys", list_api_keys, "The organisation's API keys (never the secrets)",
        "api-keys", response=ApiKeyList, errors=(401,),
    ),
    Operation(
        "POST", "/api-keys/{key_id}/revoke", revoke_api_key,
        "Revoke an API key (refused from the next request on)", "api-keys",
        response=ApiKeyOut, errors=(401, 404),
    ),
]  # fmt: skip
