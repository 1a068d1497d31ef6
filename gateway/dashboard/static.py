"""The dashboard's own static files (`gateway/dashboard/static/`), served under
`/dashboard/static/<name>`: only the files that are there, each with a content hash in its
URL so a browser may keep it for a year."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from storage import NotFound

STATIC_PREFIX = "/dashboard/static"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@functools.cache
def _files() -> dict[str, bytes]:
    """Name -> bytes of every servable file (read once; the package does not change)."""
    folder = resources.files("gateway.dashboard").joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in _TYPES)
    }


def static_url(name: str) -> str:
    """The URL of one of our static files, versioned by its content."""
    digest = hashlib.sha256(_files()[name]).hexdigest()[:12]
    return f"{STATIC_PREFIX}/{name}?v={digest}"


async def _serve(request: Request) -> Response:
    name = request.path_params["name"]
    body = _files().get(name)
    if body is None:
        raise NotFound(f"no static file {name!r}")
    media_type = next(t for ext, t in _TYPES.items() if name.endswith(ext))
    headers = {
        "cache-control": "public, max-age=31536000, immutable",
        "x-content-type-options": "nosniff",
    }
    return Response(body, media_type=media_type, headers=headers)


def static_route(prefix: str) -> Route:
    return Route(prefix + "/{name}", _serve, methods=["GET"])
