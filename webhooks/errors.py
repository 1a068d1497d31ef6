"""Errors of the webhook layer; the gateway maps `UnsafeURL` to HTTP 422 when an assistant
is saved, and records the others as a delivery attempt's outcome."""

from __future__ import annotations


class WebhookError(Exception):
    """Root of webhook errors."""


class UnsafeURL(WebhookError):
    """The URL is not http(s), or reaches an address the guard refuses."""


class UnresolvedHost(WebhookError):
    """The host name did not resolve (now: DNS failures may pass, so this is retryable)."""


class SignatureMismatch(WebhookError):
    """The signature does not match, or the timestamp is outside the tolerance."""
