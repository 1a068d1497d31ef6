"""In-band DTMF (ITU-T Q.23 tone pairs), for pressing keys on any G.711 call leg."""

from __future__ import annotations

import numpy as np

from audio.frames import PCM16

_LOW = (697.0, 770.0, 852.0, 941.0)
_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
_KEYS = ("123A", "456B", "789C", "*0#D")
FREQUENCIES: dict[str, tuple[float, float]] = {
    key: (_LOW[row], _HIGH[col]) for row, keys in enumerate(_KEYS) for col, key in enumerate(keys)
}


def dtmf_tones(digits: str, rate: int, *, tone_ms: int = 100, gap_ms: int = 80) -> PCM16:
    """PCM16 of `digits` as DTMF tone pairs (each -9 dBFS) separated by silence.

    Raises ValueError for a character that is not a DTMF key (0-9, *, #, A-D).
    """
    tone_n = rate * tone_ms // 1000
    gap = np.zeros(rate * gap_ms // 1000)
    t = np.arange(tone_n) / rate
    # 5 ms raised-cosine edges keep the tones free of clicks.
    ramp_n = max(1, rate * 5 // 1000)
    envelope = np.ones(tone_n)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_n) / ramp_n)
    envelope[:ramp_n] = edge
    envelope[-ramp_n:] = edge[::-1]
    parts = []
    for key in digits.upper():
        if key not in FREQUENCIES:
            raise ValueError(f"not a DTMF key: {key!r}")
        low, high = FREQUENCIES[key]
        tone = 0.177 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) * envelope
        parts += [tone, gap]
    if not parts:
        return np.zeros(0, dtype=np.int16)
    return np.round(np.concatenate(parts) * 32767).astype(np.int16)
