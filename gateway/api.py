"""The JSON API: health and calls (read), behind `x-api-key`."""

from __future__ import annotations

import dataclasses
import enum
import hmac
import logging
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from gateway.context import GatewayContext
from gateway.errors import AuthError
from storage import CallRecord

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The one JSON shape of every API error."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _ctx(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


def require_api_key(request: Request) -> None:
    """Raise `AuthError` unless `x-api-key` matches the configured key."""
    expected = _ctx(request).settings.gateway_api_key
    given = request.headers.get("x-api-key")
    if expected is None or given is None:
        raise AuthError("missing x-api-key header")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise AuthError("invalid API key")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def call_json(call: CallRecord, *, with_turns: bool) -> dict[str, Any]:
    body: dict[str, Any] = _jsonable(dataclasses.asdict(call))
    turns = body.pop("turns", [])
    if with_turns:
        body["transcript"] = turns
    return body


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(_ctx(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def list_calls(request: Request) -> JSONResponse:
    require_api_key(request)
    try:
        limit = int(request.query_params.get("limit", "50"))
    except ValueError:
        return error_response(422, "invalid_parameter", "limit must be an integer")
    if not 1 <= limit <= 500:
        return error_response(422, "invalid_parameter", "limit must be between 1 and 500")
    calls = await _ctx(request).store.list_calls(limit=limit)
    return JSONResponse({"items": [call_json(c, with_turns=False) for c in calls]})


async def get_call(request: Request) -> JSONResponse:
    require_api_key(request)
    call = await _ctx(request).store.get_call(request.path_params["call_id"])
    return JSONResponse(call_json(call, with_turns=True))
