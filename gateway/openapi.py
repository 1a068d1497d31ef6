"""Typed JSON routes and the OpenAPI document built from the same pydantic models.

Each management endpoint is declared once as an `Operation` (method, path, body, query
and response models). `route()` turns it into a Starlette route that authenticates,
validates and serialises; `openapi_document()` describes every operation from the very
models the routes use, so the published schema cannot drift from what is served.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.auth import Principal, authenticate
from gateway.context import GatewayContext

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Method = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The one JSON shape of every error the gateway returns."""

    error: ErrorBody


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body = ErrorBody(code=code, message=message, details=details)
    return JSONResponse(
        ErrorResponse(error=body).model_dump(mode="json", exclude_none=True), status_code=status
    )


class RequestInvalid(Exception):
    """A body or query that does not match its model: HTTP 422 with the validation details."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What a handler gets: the gateway, the caller's organisation, and parsed input."""

    ctx: GatewayContext
    principal: Principal
    path: dict[str, str]
    body: BaseModel | None
    query: BaseModel | None

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


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except ValueError as exc:
        raise RequestInvalid("the request body is not JSON") from exc
    return _parse(model, data, "request body")


def route(op: Operation) -> Route:
    """The Starlette route serving `op`: key check, input validation, JSON out."""

    async def endpoint(request: Request) -> Response:
        ctx: GatewayContext = request.app.state.gateway
        principal = await authenticate(ctx, request.headers.get("x-api-key"))
        query = (
            _parse(op.query, dict(request.query_params), "query parameters") if op.query else None
        )
        body = await _body(request, op.body) if op.body else None
        path = {k: str(v) for k, v in request.path_params.items()}
        result = await op.handler(ApiRequest(ctx, principal, path, body, query))
        if result is None:
            return Response(status_code=204)
        return JSONResponse(result.model_dump(mode="json"), status_code=op.status)

    return Route(op.path, endpoint, methods=[op.method], name=op.handler.__name__)


# ---------------------------------------------------------------- OpenAPI document

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Bad request",
    401: "Missing, wrong or revoked API key",
    404: "No such resource in the key's organisation",
    409: "Conflicts with an existing resource",
    422: "Invalid input",
    502: "The carrier or LiveKit refused the request",
    503: "A dependency (database, LiveKit) is unavailable",
}


def _schema_ref(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF, mode="validation")
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k != "description"},
        }
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def openapi_document(
    operations: Sequence[Operation], *, title: str, version: str, public: dict[str, Any]
) -> dict[str, Any]:
    """An OpenAPI 3.1 document of `operations` (plus the unauthenticated `public` paths)."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {path: dict(item) for path, item in public.items()}
    error_ref = _schema_ref(ErrorResponse, components, "serialization")
    for op in operations:
        spec: dict[str, Any] = {
            "operationId": op.handler.__name__,
            "summary": op.summary,
            "tags": [op.tag],
            "security": [{"ApiKey": []}],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", op.path)
            ],
            "responses": {},
        }
        if op.query is not None:
            spec["parameters"] += _query_parameters(op.query)
        if op.body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": _schema_ref(op.body, components, "validation")}
                },
            }
        if op.response is not None:
            spec["responses"][str(op.status)] = {
                "description": op.summary,
                "content": {
                    "application/json": {
                        "schema": _schema_ref(op.response, components, "serialization")
                    }
                },
            }
        else:
            spec["responses"]["204"] = {"description": "Done"}
        for status in op.errors:
            spec["responses"][str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": error_ref}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
    }


def docs_page(spec_url: str, title: str) -> HTMLResponse:
    """Swagger UI (from its CDN) over `spec_url`: try any route with an API key."""
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{spec_url}", dom_id: "#ui", persistAuthorization: true}});</script>
</body></html>"""
    return HTMLResponse(html)
