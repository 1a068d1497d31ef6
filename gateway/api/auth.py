"""API keys at the edge: `x-api-key` -> the caller's organisation, and the bootstrap key
(refused at start-up when it is a placeholder or guessable).

Every request looks its key up (one indexed find on the key's hash), so a revoked key is
refused from the next request on; nothing is cached.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass

from starlette.requests import Request

from gateway.dashboard.session import CSRF_HEADER, SESSION_COOKIE, Session, SessionSigner
from gateway.errors import AuthError, CsrfRefused
from storage import AccountRepository, hash_api_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an organisation, through one of its keys."""

    org_id: str
    key_id: str


async def authenticate(accounts: AccountRepository, api_key: str | None) -> Principal:
    """The organisation of an active key; `AuthError` for a missing, unknown or revoked one."""
    if not api_key:
        raise AuthError("missing x-api-key header")
    record = await accounts.find_active_key(api_key)
    if record is None:
        raise AuthError("invalid or revoked API key")
    return Principal(org_id=record.org_id, key_id=record.id)


async def principal_of(
    request: Request, accounts: AccountRepository, sessions: SessionSigner | None
) -> Principal:
    """Who sent `request`: its `x-api-key`, else its dashboard session cookie (whose key is
    looked up again: a revoked key ends the session). A change made with the cookie must
    carry the session's CSRF token (`CsrfRefused`); a key in the header needs none, since
    no browser sends one by itself."""
    api_key = request.headers.get("x-api-key")
    cookie = request.cookies.get(SESSION_COOKIE)
    if api_key is not None or not cookie or sessions is None:
        return await authenticate(accounts, api_key)
    principal, session = await session_principal(accounts, sessions, cookie)
    if request.method not in ("GET", "HEAD") and not sessions.csrf_valid(
        session, request.headers.get(CSRF_HEADER)
    ):
        raise CsrfRefused(f"a change made from the dashboard needs its CSRF token ({CSRF_HEADER})")
    return principal


async def session_principal(
    accounts: AccountRepository, sessions: SessionSigner, cookie: str
) -> tuple[Principal, Session]:
    """The organisation and session a dashboard session cookie names; `AuthError` when it
    is forged, altered or expired, or its key was revoked (looked up on every request)."""
    session = sessions.read(cookie, now=time.time())
    if session is None:
        raise AuthError("the dashboard session is invalid or has expired: sign in again")
    record = await accounts.active_key_by_id(session.key_id)
    if record is None:
        raise AuthError("the key this dashboard session signed in with was revoked")
    return Principal(org_id=record.org_id, key_id=record.id), session


async def bootstrap_api_key(accounts: AccountRepository, key: str, org_name: str) -> None:
    """Store GATEWAY_API_KEY as the first admin key when the database has no organisation."""
    if await accounts.count_organizations() == 0:
        org = await accounts.ensure_organization(org_name)
        await accounts.create_key(org.id, name="GATEWAY_API_KEY", key=key)
        log.info("GATEWAY_API_KEY stored as the first key", extra={"org": org_name})
    elif await accounts.find_active_key(key) is None:
        log.warning(
            "GATEWAY_API_KEY ignored: the database already has organisations and this key "
            "is not one of their keys (make keys with `voice-gateway create-key --org NAME`)",
            extra={"key_hash_prefix": hash_api_key(key)[:8]},
        )


MIN_API_KEY_LENGTH = 24
# Words of the placeholders people leave in .env files (compared without case or punctuation).
_PLACEHOLDER_WORDS = (
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "password",
    "secret",
    "yourkey",
    "yourapikey",
    "apikeyhere",
    "default",
    "dummy",
    "qwerty",
    "123456",
)
_MIN_ESTIMATED_BITS = 64.0


_SEGMENT = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


def _words_of(key: str) -> set[str]:
    """The words a person may have written `key` with: its segments (split at separators,
    case changes and digits) and runs of up to three segments of two characters or more
    (every part of a placeholder of several words is: "your", "api", "key", "me"),
    lower-cased. A placeholder counts only as such a word, never as letters that happen to
    spell it inside a random key ("...VODUMmY..." and "...jDUmmyC..." do not say "dummy")."""
    segments = [s.lower() for s in _SEGMENT.findall(key)]
    words = set(segments)
    for n in (2, 3):
        for i in range(len(segments) - n + 1):
            run = segments[i : i + n]
            if all(len(segment) >= 2 for segment in run):
                words.add("".join(run))
    return words


def weak_api_key_reason(key: str) -> str | None:
    """Why `key` is too weak for GATEWAY_API_KEY (an admin key of the whole API), or None.

    Refused: shorter than 24 characters, a placeholder word, or predictable (few distinct
    characters, a repeated or sequential pattern, under ~64 bits by its character entropy).
    A key from `voice-gateway create-key` or `secrets.token_urlsafe(32)` always passes.
    """
    if len(key) < MIN_API_KEY_LENGTH:
        return f"it is shorter than {MIN_API_KEY_LENGTH} characters"
    for word in _PLACEHOLDER_WORDS:
        if word in _words_of(key):
            return f"it contains the placeholder word {word!r}"
    counts = Counter(key)
    bits = -sum(n * math.log2(n / len(key)) for n in counts.values())
    periodic = any(key[p:] == key[:-p] for p in range(1, len(key) // 2 + 1))
    steps = sum(abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(key))
    if len(counts) < 8 or periodic or steps > len(key) // 2 or bits < _MIN_ESTIMATED_BITS:
        return "it is predictable (repeated or sequential characters, or too few distinct ones)"
    return None
