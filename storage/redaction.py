"""Credentials out of URLs before they are shown: `mongodb://user:pw@host` becomes
`mongodb://user:***@host` in error messages, log lines and API answers.

It lives in `storage/` because the database URL is the one that carries a password, and
every package may import from here (the gateway's log formatter and error answers use it).
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme://user:password@ — the password ends at the last "@" before the host (an "@" in a
# password must be percent-encoded, but people do not always, so take the longest run).
# A backslash ends a value too: inside JSON text (a log line) it starts the escape of the
# quote that ends the string, which must stay whole.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/:@\"'\\]*):([^\s\"'\\]*)@")
# Query parameters that are secrets by name (password=, secret=, token=, ...).
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|secret|token|api_?key|access_?key|signature|sig)=)"
    r"[^&;\s\"'#\\]*"
)


def redact_credentials(text: str) -> str:
    """`text` with the password of every URL in it, and secret query parameters, masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", text)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)


def redact_url(url: str) -> str:
    """A URL fit to show: its password (and secret query parameters) masked."""
    return redact_credentials(url)
