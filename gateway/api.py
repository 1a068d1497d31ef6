"""The management API: health, metrics, calls, assistants and API keys (behind `x-api-key`).

Every operation is scoped to the key's organisation: another organisation's records
answer 404, exactly as records that do not exist.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from gateway.api_models import (
    ApiKeyList,
    ApiKeyOut,
    AssistantList,
    AssistantOut,
    AssistantPatch,
    CallDetail,
    CallList,
    CallOut,
    CallQuery,
)
from gateway.context import GatewayContext
from gateway.errors import ConflictError
from gateway.openapi import ApiRequest, Operation, RequestInvalid, error_response
from storage import AssistantConfig, CallFilter, CallNotFound

__all__ = ["OPERATIONS", "error_response", "health", "metrics"]


def _ctx(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(_ctx(request).metrics.render(), media_type="text/plain; version=0.0.4")


# ------------------------------------------------------------------------ calls


async def list_calls(req: ApiRequest) -> BaseModel:
    q = req.query_as(CallQuery)
    page = await req.ctx.store.list_calls(
        CallFilter(
            org_id=req.principal.org_id,
            assistant_id=q.assistant_id,
            status=q.status,
            direction=q.direction,
            started_after=q.started_after,
            started_before=q.started_before,
        ),
        limit=q.limit,
        cursor=q.cursor or None,  # an empty cursor is the first page
    )
    return CallList(items=[CallOut.of(c) for c in page.items], next_cursor=page.next_cursor)


async def get_call(req: ApiRequest) -> BaseModel:
    call_id = req.path["call_id"]
    call = await req.ctx.store.get_call(call_id)
    if call.org_id != req.principal.org_id:
        raise CallNotFound(f"no call {call_id!r}")
    detail = CallDetail.of(call)
    if call.recording is not None and req.ctx.recordings is not None:
        detail.recording_url = req.ctx.recordings.url(call.recording)
    return detail


# ------------------------------------------------------------------- assistants


def _check_webhook_url(req: ApiRequest, config: AssistantConfig) -> None:
    if config.webhook_url and req.ctx.ssrf_guard is not None:
        req.ctx.ssrf_guard.check_literal(config.webhook_url)


async def create_assistant(req: ApiRequest) -> BaseModel:
    config = req.body_as(AssistantConfig)
    _check_webhook_url(req, config)
    return AssistantOut.of(await req.ctx.assistants.create(req.principal.org_id, config))


async def list_assistants(req: ApiRequest) -> BaseModel:
    records = await req.ctx.assistants.list(req.principal.org_id)
    return AssistantList(items=[AssistantOut.of(r) for r in records])


async def get_assistant(req: ApiRequest) -> BaseModel:
    record = await req.ctx.assistants.get(req.principal.org_id, req.path["assistant_id"])
    return AssistantOut.of(record)


async def update_assistant(req: ApiRequest) -> BaseModel:
    org_id, assistant_id = req.principal.org_id, req.path["assistant_id"]
    current = await req.ctx.assistants.get(org_id, assistant_id)
    changes = req.body_as(AssistantPatch).model_dump(exclude_unset=True)
    try:
        merged = AssistantConfig.model_validate({**current.config.model_dump(), **changes})
    except ValidationError as exc:
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise RequestInvalid("invalid assistant fields", details) from exc
    _check_webhook_url(req, merged)
    return AssistantOut.of(await req.ctx.assistants.replace(org_id, assistant_id, merged))


async def delete_assistant(req: ApiRequest) -> None:
    org_id, assistant_id = req.principal.org_id, req.path["assistant_id"]
    rules = [r.id for r in await req.ctx.sip.rules(org_id) if r.assistant_id == assistant_id]
    if rules:
        raise ConflictError("the assistant is used by dispatch rules: " + ", ".join(rules))
    await req.ctx.assistants.delete(org_id, assistant_id)


# --------------------------------------------------------------------- API keys


async def list_api_keys(req: ApiRequest) -> BaseModel:
    keys = await req.ctx.accounts.list_keys(req.principal.org_id)
    return ApiKeyList(items=[ApiKeyOut.of(k) for k in keys])


async def revoke_api_key(req: ApiRequest) -> BaseModel:
    key = await req.ctx.accounts.revoke_key(req.path["key_id"], org_id=req.principal.org_id)
    return ApiKeyOut.of(key)


OPERATIONS = [
    Operation(
        "GET", "/calls", list_calls, "List calls, newest first", "calls",
        response=CallList, query=CallQuery, errors=(401, 422),
    ),
    Operation(
        "GET", "/calls/{call_id}", get_call, "A call with its transcript and metrics", "calls",
        response=CallDetail, errors=(401, 404),
    ),
    Operation(
        "POST", "/assistants", create_assistant, "Create an assistant", "assistants",
        body=AssistantConfig, response=AssistantOut, status=201, errors=(401, 409, 422),
    ),
    Operation(
        "GET", "/assistants", list_assistants, "List assistants", "assistants",
        response=AssistantList, errors=(401,),
    ),
    Operation(
        "GET", "/assistants/{assistant_id}", get_assistant, "An assistant", "assistants",
        response=AssistantOut, errors=(401, 404),
    ),
    Operation(
        "PATCH", "/assistants/{assistant_id}", update_assistant, "Change an assistant",
        "assistants", body=AssistantPatch, response=AssistantOut, errors=(401, 404, 409, 422),
    ),
    Operation(
        "DELETE", "/assistants/{assistant_id}", delete_assistant, "Delete an assistant",
        "assistants", status=204, errors=(401, 404, 409),
    ),
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
