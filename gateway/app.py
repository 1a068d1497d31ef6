"""The ASGI app factory: routes, error mapping, and the lifespan that opens the database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from gateway import api, outbound, sip_api, webhook_api
from gateway.auth import bootstrap_api_key
from gateway.context import GatewayContext, stream_token_secret
from gateway.errors import (
    AuthError,
    CarrierError,
    ConfigError,
    ConflictError,
    NotConfigured,
    NotFoundError,
)
from gateway.livekit_calls import LiveKitCalls, close_abandoned_rooms
from gateway.livekit_routes import livekit_webhook
from gateway.livekit_sip import LiveKitError, livekit_sip
from gateway.lost_calls import sweep_lost_calls
from gateway.metrics import GatewayMetrics
from gateway.openapi import RequestInvalid, docs_page, error_response, openapi_document, route
from gateway.persona import MissingPlaceholders
from gateway.providers.catalog import ProviderCatalog
from gateway.providers.registry import build_default_providers
from gateway.recording import recording_bucket
from gateway.session import Providers, SessionConfig
from gateway.settings import Settings
from gateway.twilio_rest import twilio_calls
from gateway.twilio_routes import twilio_status, twilio_voice
from gateway.twilio_stream import twilio_stream_endpoint
from storage import InvalidCursor, NotFound, NumberTaken, StorageError, open_database
from telephony.errors import SignatureError
from telephony.twilio import TwilioSignatureValidator
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard, UnsafeURL

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, providers: Providers | None = None) -> Starlette:
    """Build the gateway app; `settings.mongodb_url` must name a reachable MongoDB server."""
    if settings.twilio_auth_token is None:
        log.warning("TWILIO_AUTH_TOKEN is not set: every Twilio request will be refused (403)")
        settings = settings.model_copy(
            update={"twilio_auth_token": SecretStr(secrets.token_hex(16))}
        )
    if settings.mongodb_url is None:
        raise ConfigError("create_app needs MONGODB_URL (the CLI starts the embedded server)")
    mongodb_url = settings.mongodb_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = await open_database(mongodb_url, settings.mongodb_db)
        if settings.gateway_api_key is not None:
            await bootstrap_api_key(
                database.accounts, settings.gateway_api_key.get_secret_value(), settings.gateway_org
            )
        assert settings.twilio_auth_token is not None
        metrics = GatewayMetrics()
        default = providers or build_default_providers(
            settings, on_stt_reconnect=metrics.stt_reconnected
        )
        catalog = ProviderCatalog(settings, default, on_stt_reconnect=metrics.stt_reconnected)
        livekit = livekit_sip(settings)
        app.state.gateway = GatewayContext(
            settings=settings,
            store=database.calls,
            providers=default,
            twilio_validator=TwilioSignatureValidator(
                settings.twilio_auth_token.get_secret_value()
            ),
            stream_token_secret=stream_token_secret(settings),
            session_config=SessionConfig(
                silence_ms=settings.vad_silence_ms, min_speech_ms=settings.vad_min_speech_ms
            ),
            metrics=metrics,
            accounts=database.accounts,
            assistants=database.assistants,
            sip=database.sip,
            catalog=catalog,
            twilio_calls=twilio_calls(settings),
            livekit=livekit,
        )
        recordings = recording_bucket(settings)
        guard = SsrfGuard(settings.webhook_allow_hosts)
        outbox = WebhookOutbox(
            webhooks=database.webhooks,
            calls=database.calls,
            assistants=database.assistants,
            guard=guard,
            policy=RetryPolicy(
                base_s=settings.webhook_retry_base_s,
                cap_s=settings.webhook_retry_cap_s,
                max_attempts=settings.webhook_max_attempts,
            ),
            timeout_s=settings.webhook_timeout_s,
            lease_s=settings.webhook_lease_s,
            concurrency=settings.webhook_concurrency,
            recordings=recordings,
            recording_grace_s=settings.recording_grace_s,
        )
        app.state.gateway = dataclasses.replace(
            app.state.gateway,
            webhooks=database.webhooks,
            outbox=outbox,
            ssrf_guard=guard,
            recordings=recordings,
        )
        outbox_task = asyncio.create_task(outbox.run(), name="webhook-outbox")
        sweeper = asyncio.create_task(
            sweep_lost_calls(database.calls, every_s=min(10.0, settings.call_lease_s / 3)),
            name="lost-calls",
        )
        if livekit is not None:
            ctx = app.state.gateway
            app.state.gateway = dataclasses.replace(
                ctx, livekit_calls=LiveKitCalls(ctx, livekit)
            )
            await close_abandoned_rooms(database.calls, livekit)
        log.info("gateway ready", extra={"public_url": settings.public_url})
        try:
            yield
        finally:
            if app.state.gateway.livekit_calls is not None:
                await app.state.gateway.livekit_calls.aclose()
            for task in (outbox_task, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await outbox.aclose()
            await catalog.aclose()
            if livekit is not None:
                await livekit.aclose()
            await database.close()

    operations = [
        *api.OPERATIONS,
        *outbound.OPERATIONS,
        *sip_api.OPERATIONS,
        *webhook_api.OPERATIONS,
    ]
    spec = openapi_document(
        operations, title="voice-gateway", version=_version(), public=_PUBLIC_PATHS
    )

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    async def docs(request: Request) -> Response:
        return docs_page("/openapi.json", "voice-gateway API")

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        *(route(op) for op in operations),
        Route("/twilio/voice", twilio_voice, methods=["POST"]),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        WebSocketRoute("/twilio/stream", twilio_stream_endpoint),
        Route("/livekit/webhook", livekit_webhook, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_EXCEPTION_HANDLERS)
    app.state.settings = settings
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("voice-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "0"


_PUBLIC_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Liveness",
            "tags": ["ops"],
            "responses": {"200": {"description": "The gateway is up"}},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "tags": ["ops"],
            "responses": {"200": {"description": "Prometheus text format"}},
        }
    },
}


async def _auth_error(request: Request, exc: Exception) -> Response:
    log.info("request refused: %s", exc, extra={"path": request.url.path})
    return error_response(401, "unauthorized", str(exc))


async def _signature_error(request: Request, exc: Exception) -> Response:
    log.warning("twilio signature refused: %s", exc, extra={"path": request.url.path})
    return error_response(403, "forbidden", str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "not_found", str(exc) or "not found")


async def _invalid(request: Request, exc: Exception) -> Response:
    details = exc.details if isinstance(exc, RequestInvalid) else None
    if isinstance(exc, MissingPlaceholders):
        details = [{"loc": ["body", "metadata", name], "msg": "missing"} for name in exc.names]
    log.info("request invalid: %s", exc, extra={"path": request.url.path})
    return error_response(422, "invalid_request", str(exc), details)


async def _unsafe_url(request: Request, exc: Exception) -> Response:
    log.info("webhook URL refused: %s", exc, extra={"path": request.url.path})
    return error_response(
        422,
        "invalid_request",
        f"webhook_url refused: {exc}",
        [{"loc": ["body", "webhook_url"], "msg": str(exc)}],
    )


async def _conflict(request: Request, exc: Exception) -> Response:
    log.info("request conflicts: %s", exc, extra={"path": request.url.path})
    return error_response(409, "conflict", str(exc))


async def _not_configured(request: Request, exc: Exception) -> Response:
    log.warning("feature not configured: %s", exc, extra={"path": request.url.path})
    return error_response(503, "not_configured", str(exc))


async def _carrier_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CarrierError)
    if exc.caller_fault:
        return error_response(422, "carrier_refused", str(exc))
    log.error("carrier failure: %s", exc, extra={"carrier": exc.carrier})
    return error_response(502, "carrier_error", str(exc))


async def _livekit_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LiveKitError)
    if exc.status is not None and 400 <= exc.status < 500 and exc.status != 401:
        return error_response(422, "livekit_refused", str(exc))
    return error_response(502, "livekit_error", str(exc))


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage failure: %s", exc, extra={"path": request.url.path})
    return error_response(503, "storage_unavailable", "the database is unavailable")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, "http_error", str(exc.detail))


_EXCEPTION_HANDLERS = {
    AuthError: _auth_error,
    SignatureError: _signature_error,
    NotFound: _not_found,
    NotFoundError: _not_found,
    RequestInvalid: _invalid,
    MissingPlaceholders: _invalid,
    InvalidCursor: _invalid,
    ConflictError: _conflict,
    UnsafeURL: _unsafe_url,
    NumberTaken: _conflict,
    NotConfigured: _not_configured,
    CarrierError: _carrier_error,
    LiveKitError: _livekit_error,
    StorageError: _storage_error,
    HTTPException: _http_error,
}
