"""/docs with no internet: Swagger UI and everything it loads come from the gateway, and a
Chromium whose every request off loopback is refused renders the API's operations. The
vendor routes: allow-list, content types, caching, 404s, and 503 without the packages."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings
from gateway.web_assets import VENDOR_FILES, WebAssets
from tests.browser import LaunchedBrowser, loopback_page
from tests.integration.conftest import GatewayProcess, run_gateway


async def test_docs_render_without_internet(
    gateway: GatewayProcess, chromium: LaunchedBrowser
) -> None:
    async with loopback_page(chromium.browser) as (page, guard):
        violations: list[str] = []
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        response = await page.goto(gateway.base_url + "/docs")
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        # Swagger UI fetched /openapi.json and drew an operation block per route.
        block = page.locator(".opblock-get", has=page.locator('[data-path="/calls"]')).first
        await block.wait_for(state="visible", timeout=30_000)
        await page.locator(".opblock-post").first.wait_for(state="visible")
        assert await page.locator(".opblock").count() > 10
        await block.locator(".opblock-summary").first.click()  # it opens: the UI is live
        await block.locator(".parameters-container, .opblock-body").first.wait_for()
        assert guard.left_loopback == []
        assert any(url.endswith("/openapi.json") for url in guard.requests)
        assert violations == []


async def test_vendor_routes(gateway: GatewayProcess) -> None:
    assets = WebAssets(Settings().web_assets_dir)
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        for name, ctype in [
            ("livekit-client.umd.js", "text/javascript; charset=utf-8"),
            ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
            ("swagger-ui.css", "text/css; charset=utf-8"),
            ("swagger-favicon-32x32.png", "image/png"),
        ]:
            url = assets.vendor_url(name)
            assert "?v=" in url
            answer = await http.get(url)
            assert answer.status_code == 200, (name, answer.text[:200])
            assert answer.headers["content-type"] == ctype
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            package = VENDOR_FILES[name]
            on_disk = (
                Settings().web_assets_dir / "node_modules" / package.package / package.path
            ).read_bytes()
            assert answer.content == on_disk  # httpx undid the gzip
            etag = answer.headers["etag"]
            again = await http.get(url, headers={"if-none-match": etag})
            assert again.status_code == 304
        # Unversioned: cached briefly and revalidated by ETag.
        plain = await http.get("/static/vendor/swagger-ui.css")
        assert plain.headers["cache-control"] == "public, max-age=300"
        raw = await http.get("/static/vendor/swagger-ui.css", headers={"accept-encoding": "gzip"})
        assert raw.headers["content-encoding"] == "gzip"
        # Our own files under /static/.
        init = await http.get(assets.static_url("swagger-init.js"))
        assert init.status_code == 200
        assert init.headers["content-type"] == "text/javascript; charset=utf-8"
        assert b"SwaggerUIBundle" in init.content
        for path in [
            "/static/vendor/nope.js",
            "/static/vendor/index.html",  # in the package, not on the allow-list
            "/static/vendor/..%2f..%2fpackage.json",
            "/static/vendor/../../pyproject.toml",
            "/static/vendor/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2fweb_assets.py",
            "/static/../settings.py",
            "/static/%2e%2e/app.py",
            "/static/vendor/",
        ]:
            answer = await http.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            if answer.headers["content-type"] == "application/json":
                assert answer.json()["error"]["code"] in ("not_found", "http_error")


async def raw_get_status(base_url: str, target: str) -> int:
    """The status of `GET target` sent as written (httpx would remove the dot segments)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_traversal_as_sent(gateway: GatewayProcess) -> None:
    for target in [
        "/static/vendor/../../pyproject.toml",
        "/static/vendor/..%2f..%2fpackage.json",
        "/static/vendor/../node_modules/swagger-ui-dist/package.json",
        "/static/../web_assets.py",
        "/static/..%2fweb_assets.py",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static//etc/passwd",
    ]:
        assert await raw_get_status(gateway.base_url, target) == 404, target


def test_missing_assets_still_start(mongo_url: str, tmp_path: Path) -> None:
    """Without the packages the gateway starts, warns once naming the script, and the vendor
    routes answer 503 saying how to install them; /docs still answers."""
    missing = tmp_path / "no-assets"
    with run_gateway(mongo_url, tmp_path, {"WEB_ASSETS_DIR": str(missing)}) as gw:
        with httpx.Client(base_url=gw.base_url) as http:
            assert http.get("/health").status_code == 200
            answer = http.get("/static/vendor/livekit-client.umd.js")
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert error["code"] == "not_configured"
            assert "scripts/ensure-web-assets.sh" in error["message"]
            assert http.get("/static/vendor/nope.js").status_code == 404
            assert http.get("/docs").status_code == 200
            assert http.get("/static/swagger-init.js").status_code == 200
        warnings = [line for line in gw.log_text().splitlines() if "ensure-web-assets.sh" in line]
        assert len(warnings) == 1, warnings


@pytest.mark.parametrize("name", sorted(VENDOR_FILES))
def test_gzip_is_the_same_file(name: str) -> None:
    assets = WebAssets(Settings().web_assets_dir)
    asset = assets.vendor._assets[name]
    if asset.compressible:
        assert gzip.decompress(asset.gzipped()) == asset.body
