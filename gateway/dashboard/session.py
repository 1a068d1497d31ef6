"""Dashboard sessions: a signed cookie that names the API key signed in with, and the CSRF
tokens that go with it. Pure values and HMAC; the routes set and read the cookies.

The cookie carries the key's id, never the key: `v1.<payload>.<signature>`, the payload
base64url JSON `{"k": key id, "n": session nonce, "e": expiry (epoch seconds)}` and the
signature HMAC-SHA256 over `v1.<payload>`. Every request looks the key up again, so a
revoked key ends its sessions at their next request. A session's CSRF token is an HMAC of
its nonce: pages carry it, and a change made with the cookie must send it back
(`x-csrf-token`, or a `csrf_token` form field). The sign-in form has a token of its own,
bound to a short-lived pre-session cookie (so a sign-in cannot be forged either).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "vg_session"
SIGN_IN_COOKIE = "vg_signin"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SIGN_IN_TTL_S = 1800
_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the key it signed in with, and its nonce (its CSRF token's seed)."""

    key_id: str
    nonce: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _same(expected: str, given: str) -> bool:
    """Constant-time equality of a MAC we made and one a client sent (any characters: a
    forged value may hold non-ASCII, which `compare_digest` refuses as `str`)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


class SessionSigner:
    """Issues and reads session and sign-in cookies, and derives their CSRF tokens."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a session secret needs at least 16 bytes")
        self._secret = secret

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._secret, f"{purpose}|{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    def _seal(self, purpose: str, payload: dict[str, object]) -> str:
        body = f"{_VERSION}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{self._mac(purpose, body)}"

    def _open(self, purpose: str, value: str, *, now: float) -> dict[str, object] | None:
        """The payload of a cookie this signer sealed for `purpose`, unexpired; else None."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or len(value) > 1024:
            return None
        body = f"{parts[0]}.{parts[1]}"
        if not _same(self._mac(purpose, body), parts[2]):
            return None
        try:
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(payload, dict):
            return None
        expires = payload.get("e")
        if not isinstance(expires, int | float) or expires <= now:
            return None
        return payload

    # ------------------------------------------------------------------- sessions

    def issue(self, key_id: str, *, now: float, ttl_s: float) -> tuple[str, Session]:
        """A new session for `key_id`: the cookie value and the session it names."""
        session = Session(key_id=key_id, nonce=secrets.token_urlsafe(16), expires_at=now + ttl_s)
        payload = {"k": key_id, "n": session.nonce, "e": int(session.expires_at)}
        return self._seal("session", payload), session

    def read(self, value: str, *, now: float) -> Session | None:
        """The session a cookie value names; None if forged, altered or expired."""
        payload = self._open("session", value, now=now)
        if payload is None:
            return None
        key_id, nonce, expires = payload.get("k"), payload.get("n"), payload.get("e")
        if not isinstance(key_id, str) or not isinstance(nonce, str):
            return None
        assert isinstance(expires, int | float)
        return Session(key_id=key_id, nonce=nonce, expires_at=float(expires))

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        return token is not None and _same(self.csrf_token(session), token)

    # -------------------------------------------------------------- the sign-in form

    def sign_in_cookie(self, *, now: float) -> tuple[str, str]:
        """A pre-session cookie value and the token its sign-in form must send back."""
        nonce = secrets.token_urlsafe(16)
        cookie = self._seal("sign-in", {"n": nonce, "e": int(now + SIGN_IN_TTL_S)})
        return cookie, self._mac("sign-in-form", nonce)

    def sign_in_valid(self, cookie: str | None, token: str | None, *, now: float) -> bool:
        """Whether a sign-in form's `token` goes with its (valid) pre-session cookie."""
        if not cookie or token is None:
            return False
        payload = self._open("sign-in", cookie, now=now)
        nonce = payload.get("n") if payload is not None else None
        return isinstance(nonce, str) and _same(self._mac("sign-in-form", nonce), token)
