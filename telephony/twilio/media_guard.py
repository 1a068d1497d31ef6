"""Inbound Media Streams audio held to the real clock: a stream whose media `timestamp`s run
ahead of the time since `start`, jump far back, or whose audio arrives faster than real
time (past a burst) lies, and is refused with `ProtocolError` 1008.

Sans-I/O like the protocol: the driver passes the monotonic time with every frame. Twilio
stamps each media message with milliseconds since its stream started and sends 20 ms per
message in real time; its start is a network hop before ours, and a congested network
delivers late frames in a bunch, so the bounds allow seconds, not milliseconds.
"""

from __future__ import annotations

from telephony.errors import ProtocolError

POLICY_VIOLATION = 1008

AHEAD_S = 3.0  # a timestamp may run this far ahead of the time since `start`
BACKWARDS_S = 2.0  # ... and fall this far behind the newest timestamp seen
BURST_S = 10.0  # audio beyond real time a stream may deliver at once (a stall's backlog)


class InboundMediaGuard:
    """Checks one stream's inbound media against the real clock.

    Order of calls: construct when `start` arrives (`origin`: the monotonic time of the
    start), then `check(timestamp_ms, samples, now)` for every inbound media frame before
    the frame is used; it raises `ProtocolError(1008)` for a stream that lies.
    """

    def __init__(
        self,
        *,
        origin: float,
        rate: int = 8000,
        ahead_s: float = AHEAD_S,
        backwards_s: float = BACKWARDS_S,
        burst_s: float = BURST_S,
    ) -> None:
        self._origin = origin
        self._rate = rate
        self._ahead_ms = ahead_s * 1000
        self._backwards_ms = backwards_s * 1000
        self._burst_ms = burst_s * 1000
        self._newest_ms = 0
        # A token bucket in milliseconds of audio, refilled one per millisecond of wall time.
        self._tokens_ms = self._burst_ms
        self._refilled_at = origin

    def check(self, timestamp_ms: int, samples: int, now: float) -> None:
        """Accept one frame of `samples` stamped `timestamp_ms`, received at `now`."""
        elapsed_ms = (now - self._origin) * 1000
        if timestamp_ms > elapsed_ms + self._ahead_ms:
            raise ProtocolError(
                POLICY_VIOLATION,
                f"stream lies about time: media stamped {timestamp_ms} ms, "
                f"{elapsed_ms:.0f} ms after start",
            )
        if timestamp_ms < self._newest_ms - self._backwards_ms:
            raise ProtocolError(
                POLICY_VIOLATION,
                f"stream lies about time: media stamped {timestamp_ms} ms after {self._newest_ms}",
            )
        self._newest_ms = max(self._newest_ms, timestamp_ms)
        refill = max(0.0, now - self._refilled_at) * 1000
        self._tokens_ms = min(self._burst_ms, self._tokens_ms + refill)
        self._refilled_at = now
        self._tokens_ms -= samples * 1000 / self._rate
        if self._tokens_ms < 0:
            raise ProtocolError(POLICY_VIOLATION, "media arrives faster than real time")
