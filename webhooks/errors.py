"""Errors of the webhook layer; the gateway maps `UnsafeURL` to HTTP 422 when an assistant
is saved, records `UnresolvedHost` as a delivery attempt's outcome, and leaves an analysis
whose `EventNotDue` was raised owed (it is published again later); the caller lookup
counts `AnswerTooLarge` as an invalid answer."""

from __future__ import annotations


class WebhookError(Exception):
    """Root of webhook errors."""


class UnsafeURL(WebhookError):
    """The URL is not http(s), or reaches an address the guard refuses."""


class UnresolvedHost(WebhookError):
    """The host name did not resolve (now: DNS failures may pass, so this is retryable)."""


class AnswerTooLarge(WebhookError):
    """A receiver's answer (a caller lookup's) is longer than the bound it is read to."""


class EventNotDue(WebhookError):
    """An event must wait for another of its call (`call.analyzed` for the call's report,
    `call.ended`), which is not queued yet: it is published later (not waited for)."""


class SignatureMismatch(WebhookError):
    """The signature does not match, or the timestamp is outside the tolerance."""
