"""The scripts and styles the gateway's pages load, served by the gateway itself (no CDN):
third-party browser code from the npm packages `scripts/ensure-web-assets.sh` installs
(`/static/vendor/{name}`, an allow-list), and our own files from a package directory
(`/static/{name}`, whatever the directory holds at start).

Every file is read once at start and answered from memory, gzipped when the client takes
it, with an ETag; a URL built by `vendor_url` / `StaticDirectory.url` carries the file's
version (`?v=`) and is cached for a year. A name outside the allow-list is a 404 whatever
it spells (`..`, `%2f`): it is looked up in a dict, never joined onto a path.

Pages use `WebAssets.template_globals()` in Jinja2: `{{ vendor_url("livekit-client.umd.js") }}`
and `{{ static_url("swagger-init.js") }}`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import error_response

log = logging.getLogger(__name__)

INSTALL_HINT = "run scripts/ensure-web-assets.sh (scripts/dev.sh does) or set WEB_ASSETS_DIR"
# Our own files: gateway/static/ (the dashboard adds a StaticDirectory of its own).
OWN_STATIC_DIR = Path(__file__).resolve().parent / "static"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = {".js", ".mjs", ".css", ".svg", ".json", ".html", ".txt"}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "public, max-age=300"  # an unversioned URL: revalidated with the ETag


@dataclass(frozen=True)
class VendorFile:
    """One file of an npm package that pages may load: `/static/vendor/{name}`."""

    package: str
    path: str  # inside node_modules/<package>/


# Keep in step with scripts/web-assets.json (the pins) and the FILES list of
# scripts/ensure-web-assets.sh (what it checks is installed).
VENDOR_FILES: Mapping[str, VendorFile] = {
    # The LiveKit browser SDK as one classic script: `window.LivekitClient`.
    "livekit-client.umd.js": VendorFile("livekit-client", "dist/livekit-client.umd.js"),
    "swagger-ui-bundle.js": VendorFile("swagger-ui-dist", "swagger-ui-bundle.js"),
    "swagger-ui.css": VendorFile("swagger-ui-dist", "swagger-ui.css"),
    "swagger-favicon-32x32.png": VendorFile("swagger-ui-dist", "favicon-32x32.png"),
}


@dataclass
class _Asset:
    body: bytes
    media_type: str
    version: str  # the package's version, or a hash of our own file
    etag: str
    compressible: bool
    _gzipped: bytes | None = field(default=None, repr=False)

    def gzipped(self) -> bytes:
        if self._gzipped is None:  # once per file and process, on first use
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped


def _media_type(name: str) -> str:
    return _TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def _answer(request: Request, asset: _Asset) -> Response:
    versioned = request.query_params.get("v") == asset.version
    headers = {
        "Cache-Control": _IMMUTABLE if versioned else _REVALIDATE,
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
    }
    if asset.compressible:
        headers["Vary"] = "Accept-Encoding"
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.compressible and "gzip" in request.headers.get("accept-encoding", ""):
        body = asset.gzipped()
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


def _not_found(name: str) -> Response:
    return error_response(404, "not_found", f"no static file {name!r}")


class StaticDirectory:
    """The files under `directory` (read at construction, subfolders included), served at
    `{prefix}/{name}`; nothing else under the prefix exists."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self._assets: dict[str, _Asset] = {}
        for path in sorted(directory.rglob("*")) if directory.is_dir() else ():
            if not path.is_file() or path.name.startswith("."):
                continue
            name = path.relative_to(directory).as_posix()
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:12]
            suffix = path.suffix.lower()
            self._assets[name] = _Asset(
                body, _media_type(name), digest, f'"{digest}"', suffix in _COMPRESSIBLE
            )

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._assets)

    def url(self, name: str) -> str:
        """The versioned URL of one of the directory's files (`KeyError` for another)."""
        return f"{self.prefix}/{name}?v={self._assets[name].version}"

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        asset = self._assets.get(name)
        return _not_found(name) if asset is None else _answer(request, asset)

    def route(self) -> Route:
        return Route(self.prefix + "/{name:path}", self.serve, methods=["GET", "HEAD"])


class VendorAssets:
    """The allow-listed files of the installed npm packages (`VENDOR_FILES`) under
    `/static/vendor/`. With `directory` missing or incomplete the gateway still starts:
    one warning is logged and the routes answer 503 saying how to install them."""

    prefix = "/static/vendor"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.missing: str | None = None
        self._assets: dict[str, _Asset] = {}
        versions: dict[str, str] = {}
        try:
            for name, file in VENDOR_FILES.items():
                root = directory / "node_modules" / file.package
                if file.package not in versions:
                    meta = json.loads((root / "package.json").read_text(encoding="utf-8"))
                    versions[file.package] = str(meta["version"])
                version = versions[file.package]
                body = (root / file.path).read_bytes()
                self._assets[name] = _Asset(
                    body,
                    _media_type(name),
                    version,
                    f'"{file.package}@{version}"',
                    Path(name).suffix.lower() in _COMPRESSIBLE,
                )
        except (OSError, ValueError, KeyError) as exc:
            self._assets.clear()
            self.missing = f"the browser packages are not installed in {directory} ({exc})"
            log.warning("%s: %s; pages that need them will not work", self.missing, INSTALL_HINT)
        self.versions: Mapping[str, str] = versions

    @property
    def available(self) -> bool:
        return self.missing is None

    def url(self, name: str) -> str:
        """`/static/vendor/{name}?v=<package version>` (`KeyError` for a name outside
        `VENDOR_FILES`). Without the packages the URL has no version (and answers 503)."""
        file = VENDOR_FILES[name]
        version = self.versions.get(file.package)
        return f"{self.prefix}/{name}" + (f"?v={version}" if version else "")

    async def serve(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in VENDOR_FILES:
            return _not_found(name)
        asset = self._assets.get(name)
        if asset is None:
            return error_response(503, "not_configured", f"{self.missing}: {INSTALL_HINT}")
        return _answer(request, asset)

    def route(self) -> Route:
        return Route(self.prefix + "/{name:path}", self.serve, methods=["GET", "HEAD"])


class WebAssets:
    """Vendor files and our own `gateway/static/` files: their routes and URL builders."""

    def __init__(self, vendor_dir: Path, own_dir: Path = OWN_STATIC_DIR) -> None:
        self.vendor = VendorAssets(vendor_dir)
        self.own = StaticDirectory(own_dir, "/static")
        self.directories: list[StaticDirectory] = []

    def add_directory(self, directory: Path, prefix: str) -> StaticDirectory:
        """Serve another package directory (e.g. the dashboard's files) under `prefix`, say
        `/static/dashboard`; its `url(name)` builds versioned URLs. Call before `routes()`."""
        if not prefix.startswith("/static/") or prefix.rstrip("/") == self.vendor.prefix:
            raise ValueError(f"a static prefix below /static/ other than vendor: {prefix!r}")
        added = StaticDirectory(directory, prefix)
        self.directories.append(added)
        return added

    def vendor_url(self, name: str) -> str:
        """E.g. `vendor_url("livekit-client.umd.js")` ->
        `/static/vendor/livekit-client.umd.js?v=2.23.0`."""
        return self.vendor.url(name)

    def static_url(self, name: str) -> str:
        """E.g. `static_url("swagger-init.js")` -> `/static/swagger-init.js?v=<hash>`."""
        return self.own.url(name)

    def routes(self) -> list[Route]:
        # The longer prefixes first: `/static/{name:path}` would also match theirs.
        extra = sorted(self.directories, key=lambda d: len(d.prefix), reverse=True)
        return [self.vendor.route(), *(d.route() for d in extra), self.own.route()]

    def template_globals(self) -> dict[str, Callable[[str], str]]:
        """For `templates.env.globals.update(...)`: `vendor_url` and `static_url`."""
        return {"vendor_url": self.vendor_url, "static_url": self.static_url}
