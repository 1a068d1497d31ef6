"""One media stream per Twilio call, ever: when a call may get none (it ended, or has had
its stream), and the claim that makes a stream the call's one, whichever gateway on the
database takes it. Replays of a captured voice webhook, stream token or stream `start`
end here: refused (the route or the stream driver logs it); nothing stored changes."""

from __future__ import annotations

from datetime import UTC, datetime

from storage import CallRecord, Database
from telephony.errors import SignatureError
from telephony.twilio import Start, StreamToken


def no_stream_because(call: CallRecord) -> str | None:
    """Why `call` may get no media stream now (None: it may), from its stored document."""
    if call.ended_at is not None:
        return "the call has ended"
    if call.stream_sid is not None or call.served_by is not None:
        return "the call has a media stream already"
    return None


async def stream_refused(database: Database, call: CallRecord) -> str | None:
    """Why the voice webhook must issue no stream token for `call` (None: it may)."""
    reason = no_stream_because(call)
    if reason is None and await database.claims.stream_claimed(call.id):
        reason = "the call has a media stream already"
    return reason


async def claim_stream(
    database: Database, call: CallRecord, start: Start, token: StreamToken
) -> None:
    """Make this `start` the call's one media stream; `SignatureError` (a replay) if the
    call may get none or another stream took it first."""
    reason = no_stream_because(call)
    if reason is None:
        claimed = await database.claims.claim_stream(
            call.id,
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            token_nonce=token.nonce,
            now=datetime.now(UTC),
        )
        if not claimed:
            reason = "the stream token was used already"
    if reason is not None:  # the stream's driver logs it and closes 1008 with this reason
        raise SignatureError(f"replayed stream start: {reason}")
