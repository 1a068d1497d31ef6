"""Typed JSON routes: each management endpoint is declared once as an `Operation` (method,
path, body, query and response models). `route()` turns it into a Starlette route that
authenticates, validates and serialises; `gateway.api.openapi` describes every operation
from the very same models, so the published schema cannot drift from what is served.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.auth import Principal, principal_of
from gateway.errors import InputTooLarge, RequestInvalid
from gateway.services import Services

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Method = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a handler gets: the gateway's services, the caller's organisation, parsed input."""

    services: Services
    principal: Principal
    path: dict[str, str]
    body: BaseModel | None
    query: BaseModel | None
    # Set for an operation with `raw_body`: the body's bytes and its media type (lower case,
    # without parameters), for the handler to read itself.
    raw: bytes | None = None
    content_type: str = ""

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model)
        return self.body

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model)
        return self.query


Handler = Callable[[ApiRequest], Awaitable[BaseModel | None]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: Method
    path: str
    handler: Handler
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    errors: Sequence[int] = field(default=(401, 404, 422))
    # The handler reads the body itself (`ApiRequest.raw`), in any of these media types
    # besides JSON; `body` then only documents the JSON form.
    raw_body: Sequence[str] = ()


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _parse(model: type[BaseModel], data: Any, what: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(f"invalid {what}", _validation_details(exc)) from exc


def _within_depth(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests at most `limit` arrays/objects deep (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


async def _body(request: Request, model: type[BaseModel], *, max_depth: int) -> BaseModel:
    """The body as `model`; its size is capped upstream (`BodySizeLimit`), its depth here."""
    raw = await request.body()
    too_deep = InputTooLarge(["body"], f"the request body nests deeper than {max_depth} levels")
    try:
        data = json.loads(raw or b"null")
    except RecursionError as exc:  # far past the bound: the parser gave up first
        raise too_deep from exc
    except ValueError as exc:
        raise RequestInvalid("the request body is not JSON") from exc
    if not _within_depth(data, max_depth):
        raise too_deep
    return _parse(model, data, "request body")


def route(op: Operation) -> Route:
    """The Starlette route serving `op`: key check, input validation, JSON out."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        principal = await principal_of(
            request, services.database.accounts, request.app.state.sessions
        )
        query = (
            _parse(op.query, dict(request.query_params), "query parameters") if op.query else None
        )
        max_depth = services.settings.api_max_json_depth
        path = {k: str(v) for k, v in request.path_params.items()}
        if op.raw_body:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            raw = await request.body()
            api_request = ApiRequest(services, principal, path, None, query, raw, media)
        else:
            body = await _body(request, op.body, max_depth=max_depth) if op.body else None
            api_request = ApiRequest(services, principal, path, body, query)
        result = await op.handler(api_request)
        if result is None:
            return Response(status_code=204)
        return JSONResponse(result.model_dump(mode="json"), status_code=op.status)

    return Route(op.path, endpoint, methods=[op.method], name=op.handler.__name__)
