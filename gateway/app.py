"""The ASGI app factory: routes, error mapping, and the lifespan that opens the database."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from gateway import api
from gateway.context import GatewayContext, stream_token_secret
from gateway.errors import AuthError, ConfigError, NotFoundError
from gateway.metrics import GatewayMetrics
from gateway.providers.registry import build_default_providers
from gateway.session import Providers, SessionConfig
from gateway.settings import Settings
from gateway.twilio_rest import twilio_calls
from gateway.twilio_routes import twilio_status, twilio_voice
from gateway.twilio_stream import twilio_stream_endpoint
from storage import CallNotFound, StorageError, open_database
from telephony.errors import SignatureError
from telephony.twilio import TwilioSignatureValidator

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, providers: Providers | None = None) -> Starlette:
    """Build the gateway app; `settings.mongodb_url` must name a reachable MongoDB server."""
    if settings.twilio_auth_token is None:
        log.warning("TWILIO_AUTH_TOKEN is not set: every Twilio request will be refused (403)")
        settings = settings.model_copy(
            update={"twilio_auth_token": SecretStr(secrets.token_hex(16))}
        )
    if settings.gateway_api_key is None:
        log.warning("GATEWAY_API_KEY is not set: the calls API refuses every request (401)")
    if settings.mongodb_url is None:
        raise ConfigError("create_app needs MONGODB_URL (the CLI starts the embedded server)")
    mongodb_url = settings.mongodb_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = await open_database(mongodb_url, settings.mongodb_db)
        assert settings.twilio_auth_token is not None
        metrics = GatewayMetrics()
        app.state.gateway = GatewayContext(
            settings=settings,
            store=database.calls,
            providers=providers
            or build_default_providers(settings, on_stt_reconnect=metrics.stt_reconnected),
            twilio_validator=TwilioSignatureValidator(
                settings.twilio_auth_token.get_secret_value()
            ),
            stream_token_secret=stream_token_secret(settings),
            session_config=SessionConfig(
                silence_ms=settings.vad_silence_ms, min_speech_ms=settings.vad_min_speech_ms
            ),
            metrics=metrics,
            twilio_calls=twilio_calls(settings),
        )
        log.info("gateway ready", extra={"public_url": settings.public_url})
        try:
            yield
        finally:
            used = app.state.gateway.providers
            for provider in (used.stt, used.llm, used.tts, used.fallback_stt, used.fallback_tts):
                close = getattr(provider, "aclose", None)
                if close is not None:
                    await close()
            await database.close()

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/calls", api.list_calls, methods=["GET"]),
        Route("/calls/{call_id}", api.get_call, methods=["GET"]),
        Route("/twilio/voice", twilio_voice, methods=["POST"]),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        WebSocketRoute("/twilio/stream", twilio_stream_endpoint),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_EXCEPTION_HANDLERS)
    app.state.settings = settings
    return app


async def _auth_error(request: Request, exc: Exception) -> Response:
    log.info("request refused: %s", exc, extra={"path": request.url.path})
    return api.error_response(401, "unauthorized", str(exc))


async def _signature_error(request: Request, exc: Exception) -> Response:
    log.warning("twilio signature refused: %s", exc, extra={"path": request.url.path})
    return api.error_response(403, "forbidden", str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return api.error_response(404, "not_found", str(exc) or "not found")


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage failure: %s", exc, extra={"path": request.url.path})
    return api.error_response(503, "storage_unavailable", "the database is unavailable")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": {"code": "http_error", "message": exc.detail}}, status_code=exc.status_code
    )


_EXCEPTION_HANDLERS = {
    AuthError: _auth_error,
    SignatureError: _signature_error,
    CallNotFound: _not_found,
    NotFoundError: _not_found,
    StorageError: _storage_error,
    HTTPException: _http_error,
}
