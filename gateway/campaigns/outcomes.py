"""Pure decisions of the dialer: a finished call's campaign outcome, and what a contact
becomes after an attempt (tried again after the backoff, or done)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from storage import CallRecord, CallStatus, ContactRecord, ContactStatus, Outcome, RetryPolicy

# How a call ended on the way to voicemail (`gateway/call/voicemail.py` ends it so).
VOICEMAIL_REASON = "voicemail"

_BY_STATUS = {
    CallStatus.BUSY: Outcome.BUSY,
    CallStatus.NO_ANSWER: Outcome.NO_ANSWER,
    CallStatus.FAILED: Outcome.FAILED,
    CallStatus.CANCELED: Outcome.CANCELED,
}


def call_outcome(call: CallRecord) -> Outcome | None:
    """The campaign outcome of `call` (None while it is not finished): busy, no-answer,
    failed, canceled as its status; completed by voicemail (its end reason, or an answer by
    a machine or a fax) is `voicemail`; else `completed`."""
    if call.ended_at is None:
        return None
    by_status = _BY_STATUS.get(call.status)
    if by_status is not None:
        return by_status
    answered_by = (call.answered_by or "").lower()
    if call.end_reason == VOICEMAIL_REASON or answered_by.startswith(("machine", "fax")):
        return Outcome.VOICEMAIL
    return Outcome.COMPLETED


def after_attempt(
    contact: ContactRecord, outcome: Outcome, policy: RetryPolicy, *, now: datetime
) -> ContactRecord:
    """The contact once its attempt `contact.attempts` ended with `outcome`: pending again
    `backoff_s` from `now` if the policy retries that outcome and attempts are left, else
    done."""
    retry = outcome in policy.on and contact.attempts < policy.max_attempts
    return dataclasses.replace(
        contact,
        status=ContactStatus.PENDING if retry else ContactStatus.DONE,
        next_at=now + timedelta(seconds=policy.backoff_s) if retry else None,
        outcome=outcome,
        updated_at=now,
    )
