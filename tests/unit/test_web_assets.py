"""The static routes over real directories: allow-lists, versions, precedence of prefixes,
Jinja2 globals, and the 503 of missing vendor packages."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jinja2
import pytest
from starlette.applications import Starlette

from gateway.web_assets import VENDOR_FILES, WebAssets


def fake_packages(root: Path) -> Path:
    for file in VENDOR_FILES.values():
        package = root / "node_modules" / file.package
        (package / file.path).parent.mkdir(parents=True, exist_ok=True)
        (package / file.path).write_bytes(f"/* {file.package} {file.path} */".encode())
        (package / "package.json").write_text(json.dumps({"version": "9.8.7"}))
    return root


def client(assets: WebAssets) -> httpx.AsyncClient:
    app = Starlette(routes=assets.routes())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_directories_urls_and_precedence(tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "sub").mkdir(parents=True)
    (own / "a.js").write_text("own")
    (own / "sub" / "b.css").write_text("b {}")
    dash = tmp_path / "dash"
    dash.mkdir()
    (dash / "app.js").write_text("dash")
    assets = WebAssets(fake_packages(tmp_path / "vendor"), own)
    board = assets.add_directory(dash, "/static/dashboard")
    assert assets.vendor_url("livekit-client.umd.js") == (
        "/static/vendor/livekit-client.umd.js?v=9.8.7"
    )
    with pytest.raises(KeyError):
        assets.vendor_url("nope.js")
    with pytest.raises(ValueError, match="prefix"):
        assets.add_directory(dash, "/static/vendor")
    env = jinja2.Environment(autoescape=True)
    env.globals.update(assets.template_globals())
    rendered = env.from_string('{{ vendor_url("swagger-ui.css") }} {{ static_url("a.js") }}')
    assert rendered.render().startswith("/static/vendor/swagger-ui.css?v=9.8.7 /static/a.js?v=")
    async with client(assets) as http:
        assert (await http.get(board.url("app.js"))).text == "dash"
        assert (await http.get("/static/dashboard/app.js")).text == "dash"
        assert (await http.get("/static/a.js")).text == "own"
        sub = await http.get(assets.static_url("sub/b.css"))
        assert sub.headers["content-type"] == "text/css; charset=utf-8"
        assert sub.headers["cache-control"] == "public, max-age=31536000, immutable"
        for path in ["/static/dashboard/a.js", "/static/app.js", "/static/vendor/a.js"]:
            answer = await http.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "not_found"


async def test_missing_vendor_packages_answer_503(tmp_path: Path) -> None:
    assets = WebAssets(tmp_path / "absent", tmp_path)
    assert not assets.vendor.available
    assert assets.vendor_url("swagger-ui.css") == "/static/vendor/swagger-ui.css"
    async with client(assets) as http:
        answer = await http.get("/static/vendor/swagger-ui.css")
        assert answer.status_code == 503
        assert "scripts/ensure-web-assets.sh" in answer.json()["error"]["message"]
        assert (await http.get("/static/vendor/other.css")).status_code == 404
