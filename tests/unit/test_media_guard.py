"""`InboundMediaGuard`: media timestamps against the real clock, and the inbound rate."""

from __future__ import annotations

import pytest

from telephony.errors import ProtocolError
from telephony.twilio import InboundMediaGuard

FRAME = 160  # 20 ms at 8 kHz


def test_a_real_time_stream_passes_with_jitter_and_a_late_start() -> None:
    guard = InboundMediaGuard(origin=100.0)
    # Twilio's clock starts a little before ours; frames arrive in real time with jitter,
    # and a two-second stall delivers its backlog at once.
    now = 100.0
    for n in range(3000):
        timestamp = n * 20 + 150
        now = 100.0 + n * 0.02 + (0.015 if n % 7 == 0 else 0.0)
        if 1000 <= n < 1100:
            now = 100.0 + 1100 * 0.02  # the stall's 100 frames come together
        guard.check(timestamp, FRAME, now)


def test_a_timestamp_far_ahead_of_the_clock_is_a_lie() -> None:
    guard = InboundMediaGuard(origin=0.0)
    guard.check(0, FRAME, 0.01)
    with pytest.raises(ProtocolError) as refused:
        guard.check(30 * 60 * 1000, FRAME, 2.0)  # 30 minutes into a 2 s stream
    assert refused.value.code == 1008
    assert "lies about time" in refused.value.reason


def test_a_timestamp_far_back_is_a_lie() -> None:
    guard = InboundMediaGuard(origin=0.0)
    for n in range(500):
        guard.check(n * 20, FRAME, n * 0.02)
    guard.check(9_000, FRAME, 10.0)  # a little back: reordering noise is tolerated
    with pytest.raises(ProtocolError) as refused:
        guard.check(1_000, FRAME, 10.0)
    assert "lies about time" in refused.value.reason


def test_audio_faster_than_real_time_beyond_the_burst_is_refused() -> None:
    guard = InboundMediaGuard(origin=0.0, burst_s=2.0)
    accepted = 0
    with pytest.raises(ProtocolError) as refused:
        for _ in range(10_000):  # 200 s of audio within one instant
            guard.check(0, FRAME, 0.5)
            accepted += 1
    assert refused.value.code == 1008
    assert "faster than real time" in refused.value.reason
    # The bucket holds the burst at most: 2 s of audio, 100 frames.
    assert accepted == 100
