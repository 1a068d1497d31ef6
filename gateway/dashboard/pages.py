"""The dashboard's pages, `/dashboard/...`: server-rendered HTML (Jinja2, autoescaped) that
reads the same repositories as the API, and a little JavaScript of our own that makes
changes through the JSON API with the session cookie and its CSRF token.

Signing in takes an API key (checked like the API's) and sets the session cookie
(`gateway.dashboard.session`): HttpOnly, SameSite=Strict, Secure when `PUBLIC_URL` is
https. A page asked for without a valid session redirects to the sign-in page. Every
page sends a Content-Security-Policy without inline scripts, so text a caller or an
operator typed can only ever be text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.auth import Principal, authenticate, session_principal
from gateway.api.models import CallQuery
from gateway.dashboard.charts import latency_chart
from gateway.dashboard.session import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_TTL_S,
    SessionSigner,
)
from gateway.errors import AuthError
from gateway.services import Services
from gateway.web_assets import WebAssets
from storage import AssistantRecord, CallFilter, CallRecord, InvalidCursor, NotFound

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"  # served under /static/dashboard/


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in browser on a page: its organisation and the CSRF token its page carries."""

    principal: Principal
    csrf_token: str


def _sessions(request: Request) -> SessionSigner:
    sessions: SessionSigner = request.app.state.sessions
    return sessions


def _secure(request: Request) -> bool:
    services: Services = request.app.state.services
    return services.settings.public_url.startswith("https://")


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _livekit_origins(services: Services) -> list[str]:
    """Where the web-call button's LiveKit client connects (its signalling socket, and the
    http(s) URL it checks when the socket fails)."""
    url = services.settings.livekit_browser_url()
    if url is None or services.rooms is None:
        return []
    ws = _origin(url)
    assert ws is not None
    http = ws.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    ws = http.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    if (urlsplit(url).hostname or "").endswith(".livekit.cloud"):
        # LiveKit Cloud sends the client on to a region's own host after the first connect.
        return [ws, http, "wss://*.livekit.cloud", "https://*.livekit.cloud"]
    return [ws, http]


def _csp(*, media: Sequence[str] = (), connect: Sequence[str] = ()) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "media-src " + " ".join(["'self'", "blob:", *media]),
            "connect-src " + " ".join(["'self'", *connect]),
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _page(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None,
    status: int = 200,
    media: Sequence[str] = (),
    connect: Sequence[str] = (),
    **context: Any,
) -> HTMLResponse:
    templates: Environment = request.app.state.dashboard_templates
    html = templates.get_template(template).render(
        request=request, viewer=viewer, csrf_field=CSRF_FIELD, **context
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["content-security-policy"] = _csp(media=media, connect=connect)
    response.headers["cache-control"] = "no-store"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["x-content-type-options"] = "nosniff"
    return response


def _to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse("/dashboard/login?" + urlencode({"next": target}), 303)
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _viewer(request: Request) -> Viewer | None:
    """The signed-in viewer of a page; None when the cookie is missing, forged, expired or
    its key was revoked (the page then redirects to the sign-in page)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    sessions = _sessions(request)
    services: Services = request.app.state.services
    try:
        principal, session = await session_principal(services.database.accounts, sessions, cookie)
    except AuthError as exc:
        log.info("dashboard session refused: %s", exc)
        return None
    return Viewer(principal, sessions.csrf_token(session))


# --------------------------------------------------------------------- signing in


def _safe_next(raw: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if raw and raw.startswith("/dashboard") and "//" not in raw and "\\" not in raw:
        return raw
    return "/dashboard/calls"


def _sign_in_page(request: Request, *, error: str | None, status: int) -> HTMLResponse:
    cookie, token = _sessions(request).sign_in_cookie(now=time.time())
    response = _page(
        request,
        "login.html",
        viewer=None,
        status=status,
        error=error,
        form_token=token,
        next=_safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        cookie,
        max_age=SIGN_IN_TTL_S,
        path="/dashboard/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


async def sign_in_form(request: Request) -> Response:
    if await _viewer(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
    return _sign_in_page(request, error=None, status=200)


async def sign_in(request: Request) -> Response:
    """Check the key; on success set the session cookie. A wrong or revoked key shows the
    form again with the error and sets no session."""
    services: Services = request.app.state.services
    sessions = _sessions(request)
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if not sessions.sign_in_valid(
        request.cookies.get(SIGN_IN_COOKIE),
        token if isinstance(token, str) else None,
        now=time.time(),
    ):
        log.warning("dashboard sign-in refused: no valid form token")
        return _sign_in_page(
            request, error="The sign-in form expired: please try again.", status=403
        )
    api_key = form.get("api_key")
    try:
        principal = await authenticate(
            services.database.accounts, api_key.strip() if isinstance(api_key, str) else None
        )
    except AuthError:
        log.info("dashboard sign-in refused: wrong or revoked key")
        return _sign_in_page(request, error="That API key is wrong or revoked.", status=401)
    ttl = services.settings.dashboard_session_ttl_s
    cookie, _ = sessions.issue(principal.key_id, now=time.time(), ttl_s=ttl)
    next_raw = form.get("next")
    response = RedirectResponse(_safe_next(next_raw if isinstance(next_raw, str) else None), 303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=ttl,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/dashboard/login")
    log.info("dashboard signed in", extra={"org_id": principal.org_id, "key_id": principal.key_id})
    return response


async def sign_out(request: Request) -> Response:
    """End the session (its CSRF token required, so no other site can sign one out)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    sessions = _sessions(request)
    session = sessions.read(cookie, now=time.time()) if cookie else None
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if session is not None and not sessions.csrf_valid(
        session, token if isinstance(token, str) else None
    ):
        log.warning("dashboard sign-out refused: no valid CSRF token")
        return HTMLResponse("Sign-out refused: the form's token is missing or wrong.", 403)
    response = RedirectResponse("/dashboard/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ------------------------------------------------------------------------ calls


def _call_filter(org_id: str, q: CallQuery) -> CallFilter:
    return CallFilter(
        org_id=org_id,
        assistant_id=q.assistant_id,
        status=q.status,
        direction=q.direction,
        started_after=q.started_after,
        started_before=q.started_before,
    )


async def _assistant_names(services: Services, org_id: str) -> dict[str, str]:
    return {a.id: a.config.name for a in await services.database.assistants.list(org_id)}


async def _calls_context(
    request: Request, viewer: Viewer, *, live_from_here: bool = True
) -> dict[str, Any]:
    """The calls page's data: its filters (as the API reads them), one page, names. A
    filter or cursor the API would refuse shows an error on the page instead of calls."""
    services: Services = request.app.state.services
    raw = {k: v for k, v in request.query_params.items() if v != ""}
    filters = {k: v for k, v in raw.items() if k != "cursor"}
    context: dict[str, Any] = {
        "calls": [],
        "query": raw,
        "first_page": False,
        "next_url": None,
        "first_url": None,
        "names": await _assistant_names(services, viewer.principal.org_id),
        "error": None,
        "events_after": None,
    }
    try:
        query = CallQuery.model_validate(raw)
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        return context | {"error": f"Invalid filter: {fields or 'query'}"}
    # Live updates resume after the last event before the page was read: none is missed.
    # (The rows the live page fetches again need none: its stream is open already.)
    events_after = (
        await services.database.events.head(viewer.principal.org_id) if live_from_here else None
    )
    try:
        page = await services.database.calls.list_calls(
            _call_filter(viewer.principal.org_id, query),
            limit=query.limit,
            cursor=query.cursor or None,
        )
    except InvalidCursor:
        return context | {"error": "Invalid page cursor: start again from the first page."}
    if page.next_cursor:
        context["next_url"] = "/dashboard/calls?" + urlencode(
            {**filters, "cursor": page.next_cursor}
        )
    if query.cursor:
        context["first_url"] = "/dashboard/calls?" + urlencode(filters)
    return context | {
        "calls": page.items,
        "first_page": not query.cursor,
        "events_after": events_after,
    }


async def calls_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_sign_in(request)
    context = await _calls_context(request, viewer)
    status = 422 if context["error"] else 200
    return _page(request, "calls.html", viewer=viewer, status=status, **context)


async def call_rows(request: Request) -> Response:
    """The calls table's rows alone, for the live list to swap in after an event."""
    viewer = await _viewer(request)
    if viewer is None:
        return HTMLResponse("", status_code=401)
    context = await _calls_context(request, viewer, live_from_here=False)
    return _page(request, "call_rows.html", viewer=viewer, **context)


def _json_block(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


async def call_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_sign_in(request)
    services: Services = request.app.state.services
    call_id = request.path_params["call_id"]
    events_after = await services.database.events.head(viewer.principal.org_id)
    try:
        call = await services.database.calls.get_call(call_id)
    except NotFound:
        call = None
    if call is None or call.org_id != viewer.principal.org_id:
        return _page(request, "not_found.html", viewer=viewer, status=404, what="call")
    recording_url = None
    if call.recording is not None and services.recordings is not None:
        recording_url = services.recordings.url(call.recording)
    deliveries = await services.database.webhooks.list(
        viewer.principal.org_id, call_id=call.id, limit=100
    )
    assistant = await _assistant_of(services, viewer, call)
    media = [o for o in [_origin(recording_url)] if o is not None]
    return _page(
        request,
        "call.html",
        viewer=viewer,
        media=media,
        call=call,
        events_after=events_after,
        assistant=assistant,
        recording_url=recording_url,
        deliveries=deliveries,
        chart=latency_chart(call.turns),
        analysis_data=(
            _json_block(call.analysis.data)
            if call.analysis is not None and call.analysis.data is not None
            else None
        ),
        cost=call.cost,
    )


async def _assistant_of(
    services: Services, viewer: Viewer, call: CallRecord
) -> AssistantRecord | None:
    if call.assistant_id is None:
        return None
    try:
        return await services.database.assistants.get(viewer.principal.org_id, call.assistant_id)
    except NotFound:
        return None


# ------------------------------------------------------------------- assistants


async def assistants_page(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return _to_sign_in(request)
    services: Services = request.app.state.services
    assistants = await services.database.assistants.list(viewer.principal.org_id)
    return _page(
        request,
        "assistants.html",
        viewer=viewer,
        connect=_livekit_origins(services),
        assistants=assistants,
        web_calls=services.rooms is not None,
    )


async def assistant_page(request: Request) -> Response:
    """The assistant form: a new one (`/dashboard/assistants/new`) or a stored one."""
    viewer = await _viewer(request)
    if viewer is None:
        return _to_sign_in(request)
    services: Services = request.app.state.services
    assistant_id = request.path_params.get("assistant_id")
    assistant = None
    if assistant_id is not None:
        try:
            assistant = await services.database.assistants.get(
                viewer.principal.org_id, assistant_id
            )
        except NotFound:
            return _page(request, "not_found.html", viewer=viewer, status=404, what="assistant")
    config = assistant.config if assistant is not None else None
    return _page(
        request,
        "assistant.html",
        viewer=viewer,
        connect=_livekit_origins(services),
        assistant=assistant,
        config=config,
        turn_taking=_json_block(config.turn_taking.model_dump()) if config else "",
        analysis=(
            _json_block(config.analysis.model_dump(exclude_none=True))
            if config is not None and config.analysis is not None
            else ""
        ),
        web_calls=services.rooms is not None,
    )


async def home(request: Request) -> Response:
    return RedirectResponse("/dashboard/calls", 303)


# --------------------------------------------------------------------- filters


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _clock(ms: float) -> str:
    seconds = max(ms, 0.0) / 1000.0
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _money(value: Decimal | None, currency: str = "") -> str:
    if value is None:
        return ""
    return f"{value:.4f} {currency}".strip()


def dashboard_templates(assets: WebAssets) -> Environment:
    """The pages' Jinja2 environment (autoescaped), its URL builders bound to `assets`
    (`dashboard_url` for the files in `STATIC_DIR`, which it adds to `assets`)."""
    own = assets.add_directory(STATIC_DIR, "/static/dashboard")
    env = Environment(
        loader=PackageLoader("gateway.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(assets.template_globals())
    env.globals["dashboard_url"] = own.url
    env.filters.update(when=_when, clock=_clock, money=_money)
    return env


def dashboard_routes() -> list[BaseRoute]:
    """Every `/dashboard` route (pages, fragments, sign-in and out); the app keeps
    `dashboard_templates(...)` as `app.state.dashboard_templates`."""
    return [
        Route("/dashboard", home, methods=["GET"]),
        Route("/dashboard/login", sign_in_form, methods=["GET"]),
        Route("/dashboard/login", sign_in, methods=["POST"]),
        Route("/dashboard/logout", sign_out, methods=["POST"]),
        Route("/dashboard/calls", calls_page, methods=["GET"]),
        Route("/dashboard/calls/rows", call_rows, methods=["GET"]),
        Route("/dashboard/calls/{call_id}", call_page, methods=["GET"]),
        Route("/dashboard/assistants", assistants_page, methods=["GET"]),
        Route("/dashboard/assistants/new", assistant_page, methods=["GET"]),
        Route("/dashboard/assistants/{assistant_id}", assistant_page, methods=["GET"]),
    ]
