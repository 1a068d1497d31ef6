"""The OpenAPI 3.1 document of the management API, generated from the `Operation`s and the
pydantic models the routes validate and serialise with, and the page that shows it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from typing import Any

from pydantic import BaseModel
from starlette.responses import HTMLResponse

from gateway.api.operations import Operation
from gateway.errors import ErrorResponse
from gateway.web_assets import WebAssets

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Bad request",
    401: "Missing, wrong or revoked API key",
    404: "No such resource in the key's organisation",
    409: "Conflicts with an existing resource",
    413: "The request body is over its route's cap",
    415: "A body of a media type the route does not read",
    422: "Invalid input",
    429: "The organisation is at its cap on concurrent calls (Retry-After)",
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
            for media in op.raw_body:
                spec["requestBody"]["content"][media] = {"schema": {"type": "string"}}
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


# /docs loads scripts and styles from this origin only, and runs no inline script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def docs_page(spec_url: str, title: str, assets: WebAssets) -> HTMLResponse:
    """Swagger UI over `spec_url`, every file of it served by the gateway (no CDN, so it
    works with no internet): try any route with an API key."""
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" type="image/png" href="{escape(assets.vendor_url("swagger-favicon-32x32.png"))}">
<link rel="stylesheet" href="{escape(assets.vendor_url("swagger-ui.css"))}"></head>
<body><div id="ui" data-spec-url="{escape(spec_url)}"></div>
<script src="{escape(assets.vendor_url("swagger-ui-bundle.js"))}"></script>
<script src="{escape(assets.static_url("swagger-init.js"))}"></script>
</body></html>"""
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": DOCS_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
