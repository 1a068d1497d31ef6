"""All settings, read once from the environment and `.env` (the only place that reads them)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.etree import ElementTree

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from audio.models import models_dir
from gateway.errors import ConfigError
from gateway.pricing import EXAMPLE_PRICES, PriceTable
from storage import TurnTakingConfig

# Twilio's answering-machine verdict, due by TWILIO_AMD_TIMEOUT_S, reaches a call's gate
# within this (the callback's delivery, another gateway's note read at the next poll).
AMD_VERDICT_MARGIN_S = 3.0


class HttpToolSetting(BaseModel):
    """An HTTP tool the agent may call: its arguments are POSTed as JSON to `url`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    headers: dict[str, str] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Gateway settings: build one with `Settings()` in the CLI or app factory, pass it down."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # `serve`: gateway processes on the one port, over one database (`serve --workers` wins);
    # unset, one per core; 1 serves in the `serve` process itself. Each process is told its
    # index (WORKER_INDEX, set by `serve` for its workers, not by operators).
    workers: int | None = Field(default=None, ge=1, le=256)
    worker_index: int | None = Field(default=None, ge=0)
    # `serve --workers N` makes a directory for the run where each worker publishes its
    # metrics (METRICS_DIR, set by `serve` for its workers, not by operators), so that
    # /metrics answers for the whole gateway (gateway/worker_metrics.py). A worker whose
    # snapshot is older than METRICS_STALE_S (stuck) is left out of the gauges.
    metrics_dir: Path | None = None
    metrics_stale_s: float = Field(default=10.0, ge=2, le=3600)
    # The externally visible base URL (what Twilio calls); http maps to ws, https to wss.
    public_url: str = "http://127.0.0.1:8080"

    twilio_auth_token: SecretStr | None = None
    # Secret for per-call stream tokens; derived from the Twilio auth token when unset so
    # that every gateway behind one load balancer agrees.
    stream_token_secret: SecretStr | None = None
    # How long a stream token may wait for its stream's `start` (outbound: plus the ring
    # time). Each is single-use and bound to its call whatever its lifetime.
    stream_token_ttl_s: float = Field(default=30.0, gt=0, le=3600)

    # The dashboard (`/dashboard`): how long a sign-in lasts, and the key its session cookies
    # are signed with. Unset: one random key kept in the database, shared by every gateway
    # on it (a key set here must be the same on every gateway behind one balancer).
    dashboard_session_ttl_s: int = Field(default=12 * 3600, ge=60, le=30 * 24 * 3600)
    dashboard_session_secret: SecretStr | None = None

    # On an empty database this key becomes the first admin key of organisation `gateway_org`.
    gateway_api_key: SecretStr | None = None
    gateway_org: str = "default"

    # Unset: the gateway starts its embedded FerretDB (data under `data_dir`, reachable only
    # through a Unix socket there: it has no TCP port and no password to set).
    mongodb_url: str | None = None
    mongodb_db: str = "voice_gateway"
    data_dir: Path = Path("./data")
    # The embedded server's binary: FERRETDB_BIN, else the per-user cache where
    # scripts/ensure-ferretdb.sh builds it (VOICE_GATEWAY_CACHE, also used by scripts/dev.sh).
    ferretdb_bin: Path | None = None
    voice_gateway_cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "voice-gateway"
    )
    # The turn-taking models (Silero VAD, Smart Turn): TURN_MODELS_DIR, else the directory
    # under the cache where scripts/ensure-models.sh installs them.
    turn_models_dir: Path = Field(
        default_factory=lambda data: models_dir(data["voice_gateway_cache"])
    )
    # The browser packages the pages load (LiveKit's SDK, Swagger UI): WEB_ASSETS_DIR, else
    # the cache's `web-assets` link that scripts/ensure-web-assets.sh installs them behind.
    # Missing: the gateway starts, warns, and /static/vendor/ answers 503.
    web_assets_dir: Path = Field(
        default_factory=lambda data: data["voice_gateway_cache"] / "web-assets"
    )

    log_level: str = "INFO"
    log_json: bool = True

    # Turn-taking of calls without an assistant (an assistant's `turn_taking` has its own).
    turn_vad: Literal["silero", "energy"] = "silero"
    turn_end_of_turn: Literal["smart-turn", "silence"] = "smart-turn"
    vad_silence_ms: int = Field(default=600, ge=100, le=5000)  # end_of_turn=silence
    vad_min_speech_ms: int = Field(default=120, ge=20, le=2000)
    # Agent audio sent ahead of real time; absorbs event-loop jitter without delaying clear.
    playout_lead_ms: int = Field(default=60, ge=0, le=1000)
    max_ws_message_bytes: int = 64 * 1024

    # The agent: an OpenAI-compatible chat model when a key is set, else the local agent.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None  # e.g. http://127.0.0.1:11434/v1 for Ollama
    openai_model: str = "gpt-4o-mini"
    assistant_system_prompt: str = (
        "You are a friendly phone assistant. Answer in one or two short spoken sentences, "
        "without lists or markdown. When the caller says goodbye, say goodbye and call "
        "the end_call tool."
    )

    # Which provider serves each role: "auto" takes the cloud one when its key is set.
    stt_provider: Literal["auto", "deepgram", "local"] = "auto"
    llm_provider: Literal["auto", "openai", "local"] = "auto"
    tts_provider: Literal["auto", "cartesia", "local"] = "auto"

    # Deepgram live STT. The base URL may be ws(s):// or http(s)://, e.g. ws://127.0.0.1:9001.
    deepgram_api_key: SecretStr | None = None
    deepgram_base_url: str | None = None
    deepgram_model: str = "nova-3"
    deepgram_language: str = "en"
    # Caller audio goes to Deepgram in messages of this much audio (fewer, larger WebSocket
    # messages cost less CPU); the end of a turn sends what is buffered with `Finalize`.
    deepgram_chunk_ms: int = Field(default=100, ge=20, le=250)
    # ... and of up to this much while the VAD hears nothing and no utterance is under way
    # (no words are on their way then); the first frame it hears goes at once.
    deepgram_quiet_chunk_ms: int = Field(default=250, ge=20, le=250)

    # Cartesia TTS. The base URL may be ws(s):// or http(s)://.
    cartesia_api_key: SecretStr | None = None
    cartesia_base_url: str | None = None
    cartesia_model: str = "sonic-3"
    cartesia_voice: str = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
    cartesia_language: str = "en"

    # Tools of the default assistant: JSON list of {name, description, parameters, url,
    # timeout_s, headers}; transfer_call is offered only towards these destinations.
    assistant_http_tools: list[HttpToolSetting] = Field(default_factory=list)
    assistant_transfer_targets: list[str] = Field(default_factory=list)

    # Twilio REST (transfers; outbound calls). The base URL is for tests and edges.
    twilio_account_sid: str | None = None
    twilio_api_base_url: str | None = None
    # Each REST request to Twilio gives up after this long (the SDK's default is no limit).
    twilio_rest_timeout_s: float = Field(default=10.0, gt=0, le=120)

    # Outbound calls: how long the callee's phone may ring.
    outbound_ring_timeout_s: int = Field(default=60, ge=5, le=600)
    # Outbound calls of an assistant with a voicemail plan: the agent waits this long at
    # most for a verdict on who answered (then greets), and a machine's greeting this long
    # at most for its end (then the message is left anyway).
    voicemail_decision_timeout_s: float = Field(default=35.0, gt=0, le=120)
    voicemail_message_end_timeout_s: float = Field(default=45.0, gt=0, le=300)
    # LiveKit SIP (no carrier detection): the gateway's machine detector decides within this
    # long of the answer (a greeting's length, its words, a beep); undecided is `unknown`.
    livekit_machine_detection_s: float = Field(default=6.0, ge=1.0, le=60)
    # Twilio's answering-machine detection: its MachineDetectionTimeout (3-59 s).
    # VOICEMAIL_DECISION_TIMEOUT_S must exceed it by AMD_VERDICT_MARGIN_S (and exceed
    # LIVEKIT_MACHINE_DETECTION_S): a gate that gave up first would greet a machine, and
    # ignore the verdict that came after.
    twilio_amd_timeout_s: int = Field(default=30, ge=3, le=59)

    # LiveKit (SIP trunks, dispatch rules, rooms); e.g. http://127.0.0.1:7880.
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: SecretStr | None = None
    # Agent audio queued in the room's audio source ahead of playout (what barge-in drops).
    livekit_lead_ms: int = Field(default=100, ge=20, le=1000)
    # One WebRTC peer connection for the agent's publishing and subscribing, instead of one
    # each: with one, every subscription renegotiates it and the greeting comes later.
    livekit_single_peer_connection: bool = False
    # Forward the LiveKit SDK's native logs (libwebrtc's debug lines included, ~1 000 a
    # second in a busy process) into the gateway's logs, one native-to-Python call each.
    # Unset, they stay native: errors go to stderr, more with RUST_LOG (e.g. warn).
    livekit_native_logs: bool = False
    # The LiveKit URL a browser connects to for a web call (`POST /web-calls` answers it):
    # unset, LIVEKIT_URL with http -> ws and https -> wss. Set it when browsers reach
    # LiveKit at another address than the gateway does (e.g. wss://lk.example.com).
    livekit_public_url: str | None = None
    # How long a web call's caller token is valid: the browser must join within it, else the
    # call ends as no-answer (a few seconds more are allowed for the join to complete).
    web_call_token_ttl_s: int = Field(default=300, ge=5, le=3600)

    # End-call webhooks: retries over hours, bounded; a claimed delivery's lease.
    webhook_retry_base_s: float = Field(default=10.0, gt=0)
    webhook_retry_cap_s: float = Field(default=3600.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_lease_s: float = Field(default=60.0, gt=0)
    webhook_concurrency: int = Field(default=8, ge=1, le=256)  # deliveries in flight per gateway
    # How often each gateway looks for pending deliveries that lost their due row (a
    # gateway died between two writes); it reads every stored delivery, so not often.
    webhook_repair_s: float = Field(default=60.0, ge=1)
    # Hosts or CIDRs webhooks may reach although private / loopback (e.g. ["127.0.0.1"]).
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    # Caller lookup (an assistant's or organisation's `inbound_lookup_url`): the whole
    # exchange is bounded by this (then the call is answered with the defaults), and no
    # more of the answer than this is read.
    inbound_lookup_timeout_s: float = Field(default=1.5, gt=0, le=10)
    inbound_lookup_max_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # After POST /webhooks/secret/rotate the old secret still signs (beside the new one)
    # this long, so receivers can switch without refusing a delivery.
    webhook_secret_grace_s: float = Field(default=24 * 3600.0, ge=0)

    # Post-call analysis (an assistant's `analysis` plan), run on the OpenAI-compatible
    # endpoint above after the call ended. Owed analyses are looked for when a call ends here
    # and every `analysis_poll_s` otherwise (calls finished elsewhere): finding them reads
    # every call on FerretDB, so seldom. A claimed analysis is another gateway's to run once
    # its lease (longer than both attempts' timeouts) has passed.
    analysis_timeout_s: float = Field(default=60.0, gt=0, le=600)
    analysis_poll_s: float = Field(default=15.0, gt=0)
    analysis_lease_s: float = Field(default=300.0, gt=0)
    analysis_concurrency: int = Field(default=4, ge=1, le=64)
    # The newest transcript that fits is sent (the oldest turns are left out).
    analysis_transcript_max_chars: int = Field(default=60_000, ge=1000)

    # Recordings: S3 (or any S3-compatible store; the endpoint URL is for MinIO, moto, ...).
    # Unset bucket: calls are not recorded. LiveKit Egress uploads with the same settings.
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    recording_prefix: str = "recordings/"
    # Twilio recordings: 16-bit PCM WAV plays everywhere (browsers too); mu-law WAV is
    # bit-exact to what the call carried at half the size (see README, Performance).
    recording_encoding: Literal["pcm16", "mulaw"] = "pcm16"
    # Multipart part size of the gateway's recorder: S3 needs >= 5 MiB for all but the last
    # part; a crash loses at most the part being filled (5 MiB = 164 s of stereo 8 kHz WAV).
    recording_part_bytes: int = Field(default=5 * 1024 * 1024, ge=16 * 1024)
    recording_url_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)
    # How long a finished call's report waits for its recording to be completed (the
    # recorder's last part, or LiveKit's egress_ended webhook) before it goes out without.
    recording_grace_s: float = Field(default=120.0, ge=0)
    # Salvaging a recording whose store is unreachable is retried per call with an
    # exponential backoff from base to cap (the next time is stored with the call).
    recording_salvage_base_s: float = Field(default=10.0, gt=0)
    recording_salvage_cap_s: float = Field(default=600.0, gt=0)

    # A live Twilio call's lease, renewed by its gateway every third of it: a call whose
    # gateway died is finished as `gateway-lost` by any gateway once it expires.
    call_lease_s: float = Field(default=30.0, ge=1.0)

    # Outbound campaigns (`gateway/campaigns/`): every gateway runs the dialer; one leads
    # each campaign. It ticks every `campaign_tick_s` (real time), looks for new active
    # campaigns every `campaign_list_s`, and judges an attempt claimed by a gateway that
    # died before its call was stored as not dialled (outcome failed) once it has seen it
    # so for `campaign_attempt_stale_s`.
    campaign_tick_s: float = Field(default=0.5, gt=0, le=60)
    campaign_list_s: float = Field(default=2.0, gt=0, le=600)
    campaign_attempt_stale_s: float = Field(default=60.0, gt=0)
    # FOR TESTS AND DEMOS ONLY: a file whose content moves the dialer's clock (an offset
    # in seconds, or an ISO 8601 instant: `gateway/campaigns/clock.py`). Unset: real time.
    campaign_clock_file: str | None = None

    # A call's turn and state writes go through a queue of its own, beside the conversation:
    # each attempt is bounded by `call_write_timeout_s` and retried; when the database has
    # refused them for `call_write_outage_s`, or more than `call_write_queue_max` wait, the
    # agent says goodbye and the call ends (`storage-unavailable`), the unwritten logged.
    call_write_timeout_s: float = Field(default=3.0, gt=0, le=60)
    call_write_outage_s: float = Field(default=30.0, gt=0)
    call_write_queue_max: int = Field(default=200, ge=8, le=100_000)
    # How long hang-up waits for the recorder to complete its upload before the call's
    # socket closes anyway; an upload left open is salvaged by the outbox after
    # `recording_grace_s` (keep the grace longer than this).
    recording_finish_timeout_s: float = Field(default=10.0, gt=0)
    # /ready pings the database with this bound and keeps the answer this long.
    ready_ping_timeout_s: float = Field(default=1.0, gt=0, le=30)
    ready_cache_s: float = Field(default=1.0, ge=0, le=60)
    # SIGTERM drains the gateway (gateway/drain.py): /ready answers 503 `draining`, requests
    # that would start a call answer 503 + Retry-After, and live calls go on for up to this
    # long; then the agent says goodbye on each call left (`gateway-shutdown`) and the
    # process exits 0. A second SIGTERM cuts the drain short.
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)

    # Live events (`GET /events`): each gateway polls the organisations its clients watch
    # this often for events stored by other gateways (its own reach them at once); a client
    # that falls this many events behind is dropped (it resumes with Last-Event-ID); an idle
    # stream gets a `: keep-alive` comment this often; clients wait `retry` ms to reconnect.
    event_poll_s: float = Field(default=0.25, gt=0, le=60)
    event_client_buffer: int = Field(default=1000, ge=1, le=1_000_000)
    event_heartbeat_s: float = Field(default=15.0, gt=0, le=600)
    event_retry_ms: int = Field(default=3000, ge=0, le=600_000)

    # Offline recognisers loaded at start; more load on demand (~35 ms each).
    stt_prewarm: int = Field(default=4, ge=0, le=256)

    # The price table calls are costed with when they are finished (see gateway/pricing.py
    # for its shape): PRICES_JSON holds the JSON, or PRICES_FILE names a file holding it.
    # Neither set: EXAMPLE figures (`EXAMPLE_PRICES`), placeholders to replace.
    prices_json: str | None = None
    prices_file: Path | None = None

    assistant_greeting: str = (
        "Hello! You are talking to the demo assistant. How can I help you today?"
    )
    tts_voice: str = "en-us"
    tts_words_per_minute: int = Field(default=175, ge=80, le=450)

    # Bounds on what a client may make the gateway hold or do (see README, Hardening).
    # Request bodies, counted as they arrive: Twilio's form webhooks are a few hundred bytes.
    twilio_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # LiveKit's webhook events are a few KB (room, participant and its attributes, egress).
    livekit_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # `POST /campaigns/{id}/contacts` only (a CSV or JSON list of contacts): 100 000 rows
    # of a number and a few short columns are ~10 MB.
    campaign_upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Nesting of JSON bodies (and page cursors): our models are at most a few levels deep.
    api_max_json_depth: int = Field(default=32, ge=4, le=200)
    # A call's metadata (keys and values, UTF-8) and its persona once placeholders are filled.
    call_metadata_max_bytes: int = Field(default=16 * 1024, ge=256)
    call_metadata_max_keys: int = Field(default=64, ge=1)
    call_prompt_max_chars: int = Field(default=40_000, ge=1000)
    # A Media Stream that has not sent `start` this long after the upgrade is closed (1008).
    stream_start_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # A started Media Stream that sends no message this long is closed (1008) and its call
    # ends `stream-idle` (Twilio sends a frame every 20 ms, silence included).
    stream_idle_timeout_s: float = Field(default=15.0, ge=1, le=600)
    # The offline recogniser keeps at most this much of one utterance (the newest audio).
    local_stt_max_utterance_s: float = Field(default=30.0, ge=1, le=300)
    # uvicorn: connections served at once (then 503), idle keep-alive, and the time and
    # size a client has to send a request's head (and body) in: the slowloris bound.
    http_limit_concurrency: int | None = Field(default=1000, ge=10)
    http_keep_alive_s: int = Field(default=5, ge=1, le=300)
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_max_header_bytes: int = Field(default=32 * 1024, ge=1024)

    # Admission control (README, Capacity): a process takes a new call only while it holds
    # fewer than MAX_LIVE_CALLS (calls served, and calls admitted whose leg is on its way)
    # and its event loop's lag (90th percentile over the last 2 s) is at most
    # MAX_LOOP_LAG_MS and no write of its calls has waited MAX_WRITE_WAIT_MS to be stored
    # (0: not judged). Otherwise a Twilio call is answered with OVERFLOW_TWIML (unset:
    # `<Reject reason="busy"/>`) and stored busy/gateway-full, `POST /call/outbound` and
    # `POST /web-calls` get 503 with Retry-After: ADMISSION_RETRY_AFTER_S, and a LiveKit
    # dispatch webhook gets 503 with Retry-After: 1 (LiveKit retries it; behind a
    # balancer, possibly at another gateway).
    max_live_calls: int = Field(default=32, ge=1, le=10_000)
    # The places of MAX_LIVE_CALLS a LiveKit room call (SIP, web, outbound) holds: its WebRTC
    # stack costs a process several Twilio calls' CPU (README, Capacity). 4: 8 rooms a process.
    livekit_call_weight: int = Field(default=4, ge=1, le=1000)
    max_loop_lag_ms: float = Field(default=50.0, gt=0, le=10_000)
    max_write_wait_ms: float = Field(default=2000.0, ge=0, le=600_000)
    overflow_twiml: str | None = None
    admission_retry_after_s: int = Field(default=5, ge=1, le=3600)
    # How long an admitted Twilio call holds its place for its media stream to start here
    # (an outbound call: its ring time and this); then the place is given up.
    admission_hold_s: float = Field(default=10.0, gt=0, le=300)
    # Media Stream sockets upgraded but without `start` yet, per process: an upgrade beyond
    # is refused before it is accepted (each is also closed after STREAM_START_TIMEOUT_S).
    max_pending_streams: int = Field(default=256, ge=1, le=100_000)
    # A LiveKit dispatch refused here (full) is given back to LiveKit's retries; if no
    # gateway took it this long after, the refusing gateway serves it (room again) or
    # stores it busy/gateway-full and closes its room (the caller is hung up).
    livekit_dispatch_grace_s: float = Field(default=10.0, ge=0.5, le=120)

    @model_validator(mode="after")
    def _voicemail_waits_for_the_detectors(self) -> Settings:
        least = self.twilio_amd_timeout_s + AMD_VERDICT_MARGIN_S
        if self.voicemail_decision_timeout_s < least:
            raise ValueError(
                f"VOICEMAIL_DECISION_TIMEOUT_S ({self.voicemail_decision_timeout_s:g}) must be"
                f" at least TWILIO_AMD_TIMEOUT_S ({self.twilio_amd_timeout_s}) + "
                f"{AMD_VERDICT_MARGIN_S:g} s: Twilio's verdict (by then at the latest) has to "
                "reach the call before it gives up and greets"
            )
        if self.voicemail_decision_timeout_s <= self.livekit_machine_detection_s:
            raise ValueError(
                f"VOICEMAIL_DECISION_TIMEOUT_S ({self.voicemail_decision_timeout_s:g}) must "
                f"exceed LIVEKIT_MACHINE_DETECTION_S ({self.livekit_machine_detection_s:g})"
            )
        return self

    @field_validator("public_url")
    @classmethod
    def _public_url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("PUBLIC_URL must be an http(s) base URL, e.g. https://gw.example.com")
        if parts.query or parts.fragment:
            raise ValueError("PUBLIC_URL must not carry a query string or fragment")
        return value.rstrip("/")

    @field_validator("overflow_twiml")
    @classmethod
    def _overflow_twiml_is_twiml(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            root = ElementTree.fromstring(value.strip())
        except ElementTree.ParseError as exc:
            raise ValueError(f"OVERFLOW_TWIML is not XML: {exc}") from exc
        if root.tag != "Response":
            raise ValueError("OVERFLOW_TWIML must be TwiML: one <Response> element")
        return value.strip()

    @field_validator("livekit_public_url")
    @classmethod
    def _livekit_public_url_is_ws(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
            raise ValueError("LIVEKIT_PUBLIC_URL must be a ws(s) URL, e.g. wss://lk.example.com")
        return value.rstrip("/")

    def livekit_browser_url(self) -> str | None:
        """The LiveKit URL browsers join web calls at (None: LiveKit is not configured)."""
        url = self.livekit_public_url or self.livekit_url
        if url is None:
            return None
        return url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)

    def with_runtime_secrets(self) -> Settings:
        """Settings whose unset secrets are random per-process values (for the demo)."""
        updates: dict[str, object] = {}
        if self.twilio_auth_token is None:
            updates["twilio_auth_token"] = SecretStr(secrets.token_hex(16))
        if self.gateway_api_key is None:
            updates["gateway_api_key"] = SecretStr("vg_" + secrets.token_urlsafe(24))
        return self.model_copy(update=updates) if updates else self

    def stream_token_key(self) -> bytes:
        """The key of per-call stream tokens: STREAM_TOKEN_SECRET, or derived from the Twilio
        auth token (so every gateway behind one balancer agrees)."""
        if self.stream_token_secret is not None:
            return self.stream_token_secret.get_secret_value().encode()
        if self.twilio_auth_token is None:
            raise ValueError("stream tokens need STREAM_TOKEN_SECRET or TWILIO_AUTH_TOKEN")
        token = self.twilio_auth_token.get_secret_value().encode()
        return hashlib.sha256(b"voice-gateway stream token|" + token).digest()

    def default_turn_taking(self) -> TurnTakingConfig:
        """The turn-taking of calls without an assistant."""
        return TurnTakingConfig(
            vad=self.turn_vad,
            end_of_turn=self.turn_end_of_turn,
            silence_ms=self.vad_silence_ms,
            min_speech_ms=self.vad_min_speech_ms,
        )

    def price_table(self) -> PriceTable:
        """The price table in force (`ConfigError` naming what is wrong with a bad one)."""
        if self.prices_json is not None and self.prices_file is not None:
            raise ConfigError("set PRICES_JSON or PRICES_FILE, not both")
        if self.prices_file is not None:
            source = f"PRICES_FILE ({self.prices_file})"
            try:
                text = self.prices_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{source} cannot be read: {exc.strerror}") from exc
        elif self.prices_json is not None:
            source, text = "PRICES_JSON", self.prices_json
        else:
            return EXAMPLE_PRICES
        try:
            return PriceTable.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'the table'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise ConfigError(f"{source} is not a valid price table: {problems}") from exc

    def public_url_for(self, path: str) -> str:
        """The externally visible http(s) URL of `path` (what Twilio signs for form POSTs)."""
        return self.public_url + path
