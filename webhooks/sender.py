"""Signed POSTs to an operator's URL, for webhook deliveries and caller lookups alike: the
SSRF guard's check, the organisation's signing secrets, the signed headers, and the POST to
the address the guard checked (never resolved again; TLS still verified against the URL's
host, sent as SNI), with the whole exchange and the answer read bounded.

`prepare()` does everything before the network (it may raise `UnsafeURL`, `UnresolvedHost`
or a storage error); `send()` is the exchange (it may raise `TimeoutError`, any
`httpx.HTTPError`, `httpx.InvalidURL`, `httpx.StreamError`, or `AnswerTooLarge`). Callers
map these to their own outcomes: the outbox to an attempt's error category, the lookup to
its fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from webhooks.errors import AnswerTooLarge
from webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_header
from webhooks.ssrf import SsrfGuard, pinned_url


class SigningSecrets(Protocol):
    """Where an organisation's signing secrets are kept (`WebhookRepository`)."""

    async def signing_secrets(
        self, org_id: str, *, now: datetime, grace_s: float
    ) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A POST ready to send: signed, and aimed at the checked address."""

    url: str  # as the operator gave it
    target: str  # what is connected to: the checked address in place of the host
    headers: Mapping[str, str]
    body: bytes
    sni_hostname: str | None = None  # the URL's host, when `target` names its address


@dataclass(frozen=True, slots=True)
class Answer:
    """The receiver's answer: its status, and its body when it was asked for (2xx only)."""

    status_code: int
    body: bytes = field(default=b"", repr=False)


class SignedPoster:
    """The HTTP client of signed POSTs of one gateway component; `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        guard: SsrfGuard,
        secrets: SigningSecrets,
        user_agent: str,
        timeout_s: float,
        secret_grace_s: float = 24 * 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._guard = guard
        self._secrets = secrets
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        # A rotated-out signing secret still signs (beside the new one) this long.
        self._secret_grace_s = secret_grace_s
        self._clock = clock
        # No proxies from the environment: a proxy would resolve the name itself, around the
        # guard. No redirects: a redirect could point anywhere.
        self._http = httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def prepare(
        self,
        url: str,
        body: bytes,
        *,
        message_id: str,
        org_id: str | None,
        accept: str | None = None,
    ) -> SignedRequest:
        """`body` signed with `org_id`'s secrets (None: the gateway's unsigned legacy
        deliveries, signed with an empty secret) for `url`, which the guard checks now;
        `UnsafeURL` / `UnresolvedHost` when it refuses."""
        address = await self._guard.check(url)
        signing = (
            await self._secrets.signing_secrets(
                org_id, now=self._clock(), grace_s=self._secret_grace_s
            )
            if org_id
            else ("",)
        )
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            ID_HEADER: message_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(signing, timestamp, body),
            "user-agent": self._user_agent,
        }
        if accept is not None:
            headers["accept"] = accept
        if address is None:
            return SignedRequest(url=url, target=url, headers=headers, body=body)
        target, headers["host"] = pinned_url(url, address)
        return SignedRequest(
            url=url,
            target=target,
            headers=headers,
            body=body,
            sni_hostname=urlsplit(url).hostname or "",
        )

    async def send(self, request: SignedRequest, *, max_body: int = 0) -> Answer:
        """POST `request` within the client's timeout for the whole exchange (httpx's bounds
        each read, and a receiver that trickles bytes would outlast it): `TimeoutError`
        past it. A 2xx answer's body is read when `max_body` > 0, `AnswerTooLarge` past
        `max_body` bytes; no other body is read."""
        extensions = {"sni_hostname": request.sni_hostname} if request.sni_hostname else {}
        async with (
            asyncio.timeout(self._timeout_s),
            self._http.stream(
                "POST",
                request.target,
                content=request.body,
                headers=dict(request.headers),
                extensions=extensions,
            ) as resp,
        ):
            if max_body <= 0 or not 200 <= resp.status_code < 300:
                return Answer(resp.status_code)
            raw = bytearray()
            async for chunk in resp.aiter_bytes():
                raw += chunk
                if len(raw) > max_body:
                    raise AnswerTooLarge(f"the answer is over {max_body} bytes")
            return Answer(resp.status_code, bytes(raw))
