"""The ASGI app factory: routes, the error mapping, and the lifespan that opens the database
and builds the gateway's services once."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from audio.models import ModelMissing
from gateway.api import (
    api_keys,
    assistants,
    calls,
    campaigns,
    deliveries,
    do_not_call,
    events,
    numbers,
    organization,
    sip,
    web_calls,
)
from gateway.api.auth import bootstrap_api_key, weak_api_key_reason
from gateway.api.numbers import adopt_used_numbers
from gateway.api.openapi import docs_page, openapi_document
from gateway.api.operations import route
from gateway.body_limit import BodySizeLimit
from gateway.call.turn_models import load_turn_models
from gateway.campaigns.placing import campaign_dialer
from gateway.dashboard.pages import dashboard_routes, dashboard_templates
from gateway.dashboard.session import SessionSigner
from gateway.drain import drain_calls
from gateway.errors import HTTP_ERROR_HANDLERS, ConfigError
from gateway.livekit.webhook import livekit_webhook
from gateway.providers.base import Providers
from gateway.services import Services, build_services, running
from gateway.settings import Settings
from gateway.twilio.routes import twilio_amd, twilio_status, twilio_voice
from gateway.twilio.stream import TwilioStreamEndpoint
from gateway.web_assets import WebAssets
from storage import open_database

log = logging.getLogger(__name__)

OPERATIONS = [
    *calls.OPERATIONS,
    *web_calls.OPERATIONS,
    *assistants.OPERATIONS,
    *api_keys.OPERATIONS,
    *sip.OPERATIONS,
    *deliveries.OPERATIONS,
    *numbers.OPERATIONS,
    *organization.OPERATIONS,
    *campaigns.OPERATIONS,
    *do_not_call.OPERATIONS,
]


def create_app(settings: Settings, *, providers: Providers | None = None) -> Starlette:
    """Build the gateway app; `settings.mongodb_url` must name a reachable MongoDB server."""
    if settings.twilio_auth_token is None:
        log.warning("TWILIO_AUTH_TOKEN is not set: every Twilio request will be refused (403)")
        settings = settings.model_copy(
            update={"twilio_auth_token": SecretStr(secrets.token_hex(16))}
        )
    if settings.mongodb_url is None:
        raise ConfigError("create_app needs MONGODB_URL (the CLI starts the embedded server)")
    secret = settings.dashboard_session_secret
    if secret is not None and len(secret.get_secret_value()) < 32:
        raise ConfigError("DASHBOARD_SESSION_SECRET must be at least 32 characters (random)")
    if settings.gateway_api_key is not None:
        weakness = weak_api_key_reason(settings.gateway_api_key.get_secret_value())
        if weakness is not None:
            raise ConfigError(
                f"GATEWAY_API_KEY is refused: {weakness}. It becomes an admin key: set a random "
                "one (python -c 'import secrets; print(\"vg_\" + secrets.token_urlsafe(32))'), "
                "or unset it and make keys with `voice-gateway create-key --org NAME`"
            )
    try:
        turn_models = load_turn_models(settings.turn_models_dir)
    except ModelMissing as exc:  # never fetched at run time: say how to install them
        raise ConfigError(str(exc)) from exc
    prices = settings.price_table()  # a bad table stops the gateway here, naming the key
    if settings.prices_json is None and settings.prices_file is None:
        log.warning(
            "call costs use the EXAMPLE price table: set PRICES_JSON or PRICES_FILE to your "
            "own prices (see gateway/pricing.py)"
        )
    mongodb_url = settings.mongodb_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = await open_database(mongodb_url, settings.mongodb_db)
        try:
            if settings.gateway_api_key is not None:
                await bootstrap_api_key(
                    database.accounts,
                    settings.gateway_api_key.get_secret_value(),
                    settings.gateway_org,
                )
            await adopt_used_numbers(database)
            session_secret = settings.dashboard_session_secret
            app.state.sessions = SessionSigner(
                session_secret.get_secret_value().encode()
                if session_secret is not None
                else await database.accounts.session_secret()
            )
            services = build_services(
                settings, database, providers=providers, turn_models=turn_models, prices=prices
            )
            app.state.services = services
            async with running(services), campaign_dialer(services):
                log.info(
                    "gateway ready",
                    extra={
                        "public_url": settings.public_url,
                        "gateway_id": services.lease.gateway_id,
                    },
                )
                yield
        finally:
            await database.close()

    spec = openapi_document(
        OPERATIONS,
        title="voice-gateway",
        version=_version(),
        public=_PUBLIC_PATHS | events.OPENAPI_PATHS,
    )

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    # Swagger UI, LiveKit's browser SDK and our own scripts: served here, never a CDN.
    web_assets = WebAssets(settings.web_assets_dir)
    templates = dashboard_templates(web_assets)  # adds the dashboard's files to web_assets

    async def docs(request: Request) -> Response:
        return docs_page("/openapi.json", "voice-gateway API", web_assets)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        *(route(op) for op in OPERATIONS),
        Route("/events", events.stream_events, methods=["GET"]),
        Route("/twilio/voice", twilio_voice, methods=["POST"]),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        Route("/twilio/amd", twilio_amd, methods=["POST"]),
        WebSocketRoute("/twilio/stream", TwilioStreamEndpoint()),
        Route("/livekit/webhook", livekit_webhook, methods=["POST"]),
        *dashboard_routes(),
        *web_assets.routes(),
    ]

    def body_limit(path: str) -> int:
        # Twilio's form webhooks and LiveKit's events are small; the rest are JSON routes.
        if path.startswith("/twilio/"):
            return settings.twilio_max_body_bytes
        if path == "/livekit/webhook":
            return settings.livekit_max_body_bytes
        if campaigns.is_contact_upload(path):
            return settings.campaign_upload_max_bytes
        return settings.api_max_body_bytes

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=HTTP_ERROR_HANDLERS,
        middleware=[Middleware(BodySizeLimit, limit_for=body_limit)],
    )
    app.state.settings = settings
    app.state.sessions = None  # set by the lifespan (its key may be kept in the database)
    app.state.web_assets = web_assets
    app.state.dashboard_templates = templates
    return app


def end_event_streams(app: Starlette) -> None:
    """End every `GET /events` stream of `app` (the server calls it as shutdown begins:
    uvicorn waits for open responses before the lifespan's end, and a stream never ends
    by itself)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is not None:
        services.event_feed.close_streams()


async def drain(app: Starlette) -> None:
    """Drain `app`'s gateway (the server calls it on SIGTERM, before it stops): no new
    calls, live calls go on up to `DRAIN_TIMEOUT_S`, then end politely."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:  # not started: nothing to drain
        return
    await drain_calls(
        services.calls.live,
        services.draining,
        timeout_s=services.settings.drain_timeout_s,
        goodbye_timeout_s=services.calls.session_config.goodbye_timeout_s,
    )


async def health(request: Request) -> JSONResponse:
    """Liveness: 200 while the process serves (`status` ok, or draining after SIGTERM: its
    calls still talk, do not kill it); `database` says whether MongoDB answers; `worker`,
    under `serve --workers N`, which process answered."""
    services: Services | None = getattr(request.app.state, "services", None)
    up = services is not None and await services.database_probe.up()
    draining = services is not None and services.draining.active
    body: dict[str, object] = {
        "status": "draining" if draining else "ok",
        "database": "ok" if up else "unavailable",
    }
    worker = request.app.state.settings.worker_index
    if worker is not None:
        body["worker"] = worker
    return JSONResponse(body)


async def ready(request: Request) -> JSONResponse:
    """Readiness, for balancers: 503 while the database does not answer, or while the
    gateway drains (`status`: draining; it takes no new call)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is not None and services.draining.active:
        return JSONResponse(
            {"status": "draining", "live_calls": services.calls.live.count()},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    if services is None or not await services.database_probe.up():
        return JSONResponse(
            {"status": "not-ready", "database": "unavailable"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "database": "ok"})


async def metrics(request: Request) -> PlainTextResponse:
    """This process's metrics; a worker of `serve --workers N`: the whole gateway's."""
    services: Services = request.app.state.services
    shared = services.shared_metrics
    text = await shared.scrape() if shared is not None else services.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _version() -> str:
    try:
        return importlib.metadata.version("voice-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0"


_PUBLIC_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "operationId": "health",
            "summary": (
                "Liveness (`status`: ok, or draining after SIGTERM), whether the database "
                "answers (`database`: ok/unavailable); `worker`: which process of "
                "`serve --workers N` answered"
            ),
            "tags": ["ops"],
            "responses": {"200": {"description": "The gateway is up"}},
        }
    },
    "/ready": {
        "get": {
            "operationId": "ready",
            "summary": (
                "Readiness for balancers: not ready while the database does not answer or "
                "the gateway drains"
            ),
            "tags": ["ops"],
            "responses": {
                "200": {"description": "Ready to take calls"},
                "503": {
                    "description": (
                        "The database does not answer, or the gateway drains (`status`: "
                        "draining; Retry-After is set)"
                    )
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": (
                "The whole gateway's, whichever worker of `serve --workers N` answers: "
                "counters summed over the workers (a restarted worker's included), gauges "
                "over the live ones, `voice_gateway_workers` the live workers."
            ),
            "tags": ["ops"],
            "responses": {"200": {"description": "Prometheus text format"}},
        }
    },
}
