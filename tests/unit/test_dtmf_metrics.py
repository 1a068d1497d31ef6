"""In-band DTMF tones and the Prometheus rendering of provider failures and latency."""

from __future__ import annotations

import numpy as np
import pytest

from audio.codec import ulaw_decode, ulaw_encode
from audio.dtmf import FREQUENCIES, dtmf_tones
from gateway.metrics import GatewayMetrics


def _power(x: np.ndarray, freq: float, rate: int) -> float:
    """Goertzel power of `freq` in `x`."""
    coeff = 2 * np.cos(2 * np.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x.astype(np.float64):
        s1, s2 = v + coeff * s1 - s2, s1
    return float(s1 * s1 + s2 * s2 - coeff * s1 * s2)


@pytest.mark.parametrize("key", ["1", "5", "9", "0", "*", "#", "D"])
def test_each_key_is_its_tone_pair_and_survives_mulaw(key: str) -> None:
    pcm = ulaw_decode(ulaw_encode(dtmf_tones(key, 8000)))
    tone = pcm[:800]  # the 100 ms tone, before the gap
    powers = {f: _power(tone, f, 8000) for pair in FREQUENCIES.values() for f in pair}
    low, high = FREQUENCIES[key]
    strongest = sorted(powers, key=powers.__getitem__, reverse=True)[:2]
    assert sorted(strongest) == [low, high]
    assert len(dtmf_tones("123", 8000)) == 3 * (800 + 640)
    assert np.abs(pcm).max() < 32767 * 0.4  # -9 dBFS per tone, no clipping


def test_a_non_key_is_refused() -> None:
    with pytest.raises(ValueError, match="not a DTMF key"):
        dtmf_tones("12x", 8000)


def test_metrics_render_failures_and_latency_histograms() -> None:
    metrics = GatewayMetrics()
    metrics.provider_failed("cartesia")
    metrics.provider_failed("cartesia")
    metrics.observe_turn({"stt_final": 90.0, "first_frame_out": 640.0})
    text = metrics.render()
    assert 'voice_gateway_provider_failures_total{provider="cartesia"} 2' in text
    assert 'voice_gateway_turn_latency_ms_bucket{stage="stt_final",le="100"} 1' in text
    assert 'voice_gateway_turn_latency_ms_bucket{stage="stt_final",le="50"} 0' in text
    assert 'voice_gateway_turn_latency_ms_bucket{stage="first_frame_out",le="+Inf"} 1' in text
    assert 'voice_gateway_turn_latency_ms_count{stage="first_frame_out"} 1' in text
    assert 'voice_gateway_turn_latency_ms_count{stage="llm_first_token"} 0' in text
