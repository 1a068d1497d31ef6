"""Caller lookup: before an inbound call is answered, the gateway asks the operator's system
(the assistant's `inbound_lookup_url`, else its organisation's) who is calling, and takes
`{{placeholder}}` values and optionally another assistant of the same organisation from
the answer. The caller hears the greeting whatever the answer: a slow, failing or invalid
one leaves the call to the assistant's defaults, logged and counted.

The request (signed like webhooks: `X-Webhook-Signature` / `-Timestamp` / `-Id` with the
organisation's signing secrets; SSRF-guarded like deliveries: the checked address is
connected to, never resolved again; no redirects, no proxies from the environment):

    POST <inbound_lookup_url>
    {"event": "call.inbound", "id": "lkp_...", "created_at": "<ISO 8601>",
     "call": {"from_number": "+1555...", "to_number": "+1555...", "transport": "twilio",
              "call_sid": "CA...", "assistant_id": "<id or null>"}}

The answer (2xx, JSON, at most INBOUND_LOOKUP_MAX_BYTES, within INBOUND_LOOKUP_TIMEOUT_S;
a 204 or `{}` changes nothing; other keys are ignored):

    {"metadata": {"name": "Dana", "order": "A-17"},   # strings only; optional; keys are
                                                      # names [A-Za-z_][A-Za-z0-9_-]*
     "assistant_id": "<another assistant of the organisation>"}   # optional
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.call.records import CallInputLimits, open_call
from gateway.errors import InputTooLarge, LookupFailed, MissingPlaceholders
from gateway.metrics import GatewayMetrics, LookupOutcome
from storage import (
    AssistantRecord,
    CallRecord,
    Database,
    Direction,
    NotFound,
    StorageError,
    redact_credentials,
)
from webhooks.errors import AnswerTooLarge, UnsafeURL
from webhooks.sender import SignedPoster
from webhooks.ssrf import SsrfGuard

log = logging.getLogger(__name__)

LOOKUP_EVENT = "call.inbound"
# Values the gateway fills itself: an answer cannot replace them.
_RESERVED = frozenset({"from_number", "to_number"})
# The names a `{{placeholder}}` may have (gateway/call/persona.py) less `.`: the call is
# stored with its metadata as a document, and a document key may hold no `.` (nor begin
# with `$`, which no name can).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _text(value: str) -> bool:
    """Whether `value` can be stored: JSON's `\\ud800` escapes decode to lone surrogates,
    which UTF-8 (and so BSON) cannot encode."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """What the lookup is told about the call."""

    from_number: str
    to_number: str
    transport: str
    call_sid: str
    assistant_id: str | None
    id: str = field(default_factory=lambda: "lkp_" + secrets.token_hex(12))

    def serialize(self, *, now: datetime) -> bytes:
        body = {
            "event": LOOKUP_EVENT,
            "id": self.id,
            "created_at": now.isoformat(),
            "call": {
                "from_number": self.from_number,
                "to_number": self.to_number,
                "transport": self.transport,
                "call_sid": self.call_sid,
                "assistant_id": self.assistant_id,
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    """What an answer may set: values for the persona's placeholders, another assistant."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    assistant_id: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> LookupAnswer:
        """The answer in `raw` (an empty body changes nothing); `LookupFailed("invalid")`
        when it is not JSON or not of the documented shape."""
        if not raw.strip():
            return cls()
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise LookupFailed("invalid", "the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise LookupFailed("invalid", "the answer is not a JSON object")
        metadata = data.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise LookupFailed("invalid", "metadata is not an object of strings")
        bad = [k for k in metadata if not _KEY.fullmatch(k)]
        if bad:
            shown = ", ".join(repr(k[:40]) for k in sorted(bad)[:3])
            raise LookupFailed("invalid", f"metadata keys that are no placeholder names: {shown}")
        if not all(_text(v) for v in metadata.values()):
            raise LookupFailed("invalid", "a metadata value is not text (a lone surrogate)")
        assistant_id = data.get("assistant_id")
        if assistant_id is not None and (not isinstance(assistant_id, str) or not assistant_id):
            raise LookupFailed("invalid", "assistant_id is not a non-empty string")
        return cls(metadata=dict(metadata), assistant_id=assistant_id)


@dataclass(frozen=True, slots=True)
class InboundChoice:
    """Who answers an inbound call and with which values, after the lookup (if any)."""

    assistant: AssistantRecord | None
    metadata: Mapping[str, str]
    changed: bool  # the lookup's answer changed the assistant or the values


class CallerLookup:
    """The lookup client of one gateway process, and the opening of inbound calls through it.

    Call `open_inbound()` where an inbound call is first stored; `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        database: Database,
        guard: SsrfGuard,
        metrics: GatewayMetrics,
        timeout_s: float = 1.5,
        max_answer_bytes: int = 64 * 1024,
        secret_grace_s: float = 24 * 3600.0,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._max_answer_bytes = max_answer_bytes
        self._poster = SignedPoster(
            guard=guard,
            secrets=database.webhooks,
            user_agent="voice-gateway-lookup/1",
            timeout_s=timeout_s,
            secret_grace_s=secret_grace_s,
        )

    async def aclose(self) -> None:
        await self._poster.aclose()

    async def ask(self, url: str, request: LookupRequest, *, org_id: str) -> LookupAnswer:
        """POST `request` to `url`, signed with `org_id`'s secrets, and parse the answer, all
        within the bound; `LookupFailed` with the outcome otherwise: whatever goes wrong on
        the way (the store, DNS, the network, the client library), the call goes on."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._exchange(url, request, org_id=org_id)
        except LookupFailed:
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise LookupFailed("timeout", f"no answer within {self._timeout_s:g} s") from exc
        except UnsafeURL as exc:
            raise LookupFailed("refused", str(exc)) from exc
        except AnswerTooLarge as exc:
            raise LookupFailed("invalid", str(exc)) from exc
        except Exception as exc:  # the caller hears the defaults' greeting instead
            raise LookupFailed("error", f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(self, url: str, request: LookupRequest, *, org_id: str) -> LookupAnswer:
        signed = await self._poster.prepare(
            url,
            request.serialize(now=datetime.now(UTC)),
            message_id=request.id,
            org_id=org_id,
            accept="application/json",
        )
        answer = await self._poster.send(signed, max_body=self._max_answer_bytes)
        if not 200 <= answer.status_code < 300:
            raise LookupFailed("error", f"answered HTTP {answer.status_code}")
        return LookupAnswer.parse(answer.body)

    async def _lookup_url(self, assistant: AssistantRecord | None) -> tuple[str | None, str | None]:
        """The URL to ask and the organisation it is asked for: the assistant's, else its
        organisation's (the default organisation's for calls reaching no assistant)."""
        accounts = self._database.accounts
        if assistant is not None:
            if assistant.config.inbound_lookup_url:
                return assistant.config.inbound_lookup_url, assistant.org_id
            try:
                org = await accounts.get_organization(assistant.org_id)
            except NotFound:
                return None, assistant.org_id
            return org.inbound_lookup_url, org.id
        default = await accounts.default_organization()
        return (default.inbound_lookup_url, default.id) if default else (None, None)

    async def _choose(
        self,
        answer: LookupAnswer,
        *,
        org_id: str,
        assistant: AssistantRecord | None,
        metadata: Mapping[str, str],
        limits: CallInputLimits,
    ) -> InboundChoice:
        """The assistant and values `answer` gives; `LookupFailed("invalid")` when it names
        no assistant of `org_id` or its values are over the limits."""
        chosen = assistant
        if answer.assistant_id is not None and answer.assistant_id != (
            assistant.id if assistant else None
        ):
            try:
                chosen = await self._database.assistants.get(org_id, answer.assistant_id)
            except NotFound as exc:
                raise LookupFailed(
                    "invalid", "assistant_id names no assistant of this organisation"
                ) from exc
        values = {k: v for k, v in answer.metadata.items() if k not in _RESERVED}
        merged = {**values, **metadata}  # the gateway's own values win
        try:
            limits.check_metadata(merged)
        except InputTooLarge as exc:
            raise LookupFailed("invalid", f"metadata ignored: {exc}") from exc
        return InboundChoice(
            assistant=chosen, metadata=merged, changed=chosen is not assistant or bool(values)
        )

    async def open_inbound(
        self,
        *,
        assistant: AssistantRecord | None,
        transport: str,
        from_number: str,
        to_number: str,
        call_sid: str,
        metadata: Mapping[str, str] | None = None,
        limits: CallInputLimits,
    ) -> CallRecord:
        """Store a new inbound call (as `open_call` does) after asking the caller lookup, if
        one is set. Whatever the lookup does, the call is opened: with the answer's assistant
        and values when they work, else with `assistant`'s defaults. `MissingPlaceholders`
        (or `InputTooLarge`, `StorageError`) only when the defaults themselves cannot answer,
        as without a lookup."""
        own = dict(metadata or {})
        choice = InboundChoice(assistant=assistant, metadata=own, changed=False)
        url, org_id = await self._lookup_url(assistant)
        outcome: LookupOutcome | None = None
        context = {"call_sid": call_sid, "from": from_number, "to": to_number}
        if url is not None and org_id is not None:
            request = LookupRequest(
                from_number=from_number,
                to_number=to_number,
                transport=transport,
                call_sid=call_sid,
                assistant_id=assistant.id if assistant else None,
            )
            started = time.perf_counter()
            try:
                answer = await self.ask(url, request, org_id=org_id)
                choice = await self._choose(
                    answer, org_id=org_id, assistant=assistant, metadata=own, limits=limits
                )
                outcome = "ok"
            except LookupFailed as exc:
                outcome = exc.outcome
                log.warning(
                    "caller lookup failed (%s): %s; answering with the assistant's defaults",
                    exc.outcome,
                    exc,
                    extra={**context, "lookup_url": redact_credentials(url)},
                )
            else:
                log.info(
                    "caller lookup answered",
                    extra={
                        **context,
                        "lookup_ms": round((time.perf_counter() - started) * 1000, 1),
                        "assistant_id": choice.assistant.id if choice.assistant else None,
                        "metadata_keys": sorted(choice.metadata),
                    },
                )
        try:
            return await self._open(choice, transport, from_number, to_number, call_sid, limits)
        except (MissingPlaceholders, InputTooLarge, StorageError) as exc:
            if not choice.changed:
                raise
            # The answer's assistant or values cannot fill the persona, or the store refuses
            # the call with them: the defaults answer (a store that is down refuses them too).
            outcome = "invalid"
            log.warning(
                "caller lookup answer unusable: %s; answering with the assistant's defaults",
                exc,
                extra=context,
            )
            fallback = InboundChoice(assistant=assistant, metadata=own, changed=False)
            return await self._open(fallback, transport, from_number, to_number, call_sid, limits)
        finally:
            if outcome is not None:
                self._metrics.inbound_lookup(outcome)

    async def _open(
        self,
        choice: InboundChoice,
        transport: str,
        from_number: str,
        to_number: str,
        call_sid: str,
        limits: CallInputLimits,
    ) -> CallRecord:
        return await open_call(
            self._database.calls,
            self._database.accounts,
            assistant=choice.assistant,
            transport=transport,
            direction=Direction.INBOUND,
            from_number=from_number,
            to_number=to_number,
            call_sid=call_sid,
            metadata=choice.metadata,
            limits=limits,
        )
