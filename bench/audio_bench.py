"""Per-frame cost of the audio paths and the audio each resampler holds back.

    python bench/audio_bench.py

Inbound: 20 ms of mu-law -> decode -> 8k->16k (what the STT gets).
Outbound: a 20 ms TTS chunk -> resample to 8 kHz -> the Media Streams protocol, as the
pacer drives it: queue the PCM, release the frame (encode -> base64 -> media JSON) and
take the text to send; the frame's PCM is what the recorder gets.
Usage counting: what counting a frame sent to the STT adds (`UsageMeter.stt_audio`, the
session's one call per frame), timed over batches of 1000 frames (a per-call timer would
cost more than the call).
Hold-back: after each 20 ms chunk, how far the emitted output lags the input (mean/max),
for our resampler and for soxr.ResampleStream at HQ and VHQ on the same paths.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import soxr

from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import FRAME_MS, AudioFrame, samples_per_frame
from audio.resample import StreamResampler
from gateway.call.usage import UsageMeter
from telephony.twilio import MediaStreamProtocol

FRAMES = 5000
SECONDS = FRAMES * FRAME_MS / 1000 + 5  # speech enough for every timed frame
PATHS = [(8000, 16000), (16000, 8000), (24000, 8000), (22050, 8000), (48000, 16000), (16000, 48000)]


def _percentiles(samples_us: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_us)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99)]


def _time_per_frame(step: Callable[[int], object]) -> tuple[float, float]:
    for i in range(200):  # warm-up
        step(i)
    costs = []
    for i in range(FRAMES):
        t0 = time.perf_counter_ns()
        step(i)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    return _percentiles(costs)


def _speechlike(rate: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(rate * seconds)) / rate
    voiced = sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 20))
    return (voiced * 3000 + rng.standard_normal(t.size) * 300).astype(np.int16)


def _streaming_protocol() -> MediaStreamProtocol:
    protocol = MediaStreamProtocol()
    start = {
        "streamSid": "MZ" + "0" * 32,
        "callSid": "CA" + "0" * 32,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    protocol.receive_text(json.dumps({"event": "start", "start": start}))
    protocol.events()
    return protocol


def inbound_path() -> tuple[float, float]:
    frame = samples_per_frame(8000)  # one mu-law byte per sample
    mulaw = ulaw_encode(_speechlike(8000, SECONDS))
    resampler = StreamResampler(8000, 16000)

    def step(i: int) -> object:
        offset = i * frame % (len(mulaw) - frame)
        return resampler.process(ulaw_decode(mulaw[offset : offset + frame]))

    return _time_per_frame(step)


def outbound_path(tts_rate: int) -> tuple[float, float]:
    chunk = samples_per_frame(tts_rate)
    pcm = _speechlike(tts_rate, SECONDS)
    resampler = StreamResampler(tts_rate, 8000)
    protocol = _streaming_protocol()

    def step(i: int) -> object:
        start = i * chunk % (len(pcm) - chunk)
        protocol.send_audio(resampler.process(pcm[start : start + chunk]))
        released = []
        while protocol.queued_frames:
            released.append(protocol.release_frame())  # the recorder's copy
        return released, protocol.data_to_send()

    return _time_per_frame(step)


def _held_ms(
    process: Callable[[np.ndarray], np.ndarray], in_rate: int, out_rate: int
) -> list[float]:
    x = _speechlike(in_rate, 3.0)
    chunk = samples_per_frame(in_rate)
    emitted = 0
    held = []
    for i in range(0, len(x) - chunk + 1, chunk):
        emitted += len(process(x[i : i + chunk]))
        ideal = (i + chunk) * out_rate / in_rate
        held.append(1000 * (ideal - emitted) / out_rate)
    return held[5:]  # after the start-up transient


def hold_back_table() -> list[str]:
    rows = [
        f"{'path':>13} | {'ours mean/max ms':>16} | {'group delay':>11} | "
        f"{'soxr HQ mean/max':>16} | {'soxr VHQ mean/max':>17}"
    ]
    for in_rate, out_rate in PATHS:
        ours = StreamResampler(in_rate, out_rate)
        held = _held_ms(ours.process, in_rate, out_rate)
        cells = [f"{statistics.mean(held):.2f} / {max(held):.2f}"]
        for quality in ("HQ", "VHQ"):
            stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
            soxr_held = _held_ms(lambda x, s=stream: s.resample_chunk(x), in_rate, out_rate)
            cells.append(f"{statistics.mean(soxr_held):.1f} / {max(soxr_held):.1f}")
        rows.append(
            f"{in_rate:>5}->{out_rate:<6} | {cells[0]:>16} | {ours.delay_ms:>8.2f} ms | "
            f"{cells[1]:>16} | {cells[2]:>17}"
        )
    return rows


def usage_counting() -> tuple[float, float]:
    """Microseconds per frame (p50 / p99 over batches) of counting a frame's STT audio."""
    meter = UsageMeter()
    frame = AudioFrame(np.zeros(samples_per_frame(8000), dtype=np.int16), 8000)
    batch = 1000
    per_frame = []
    for round_ in range(300):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            meter.stt_audio("deepgram", frame.samples, frame.rate)
        if round_ >= 20:  # warm-up
            per_frame.append((time.perf_counter_ns() - t0) / 1000 / batch)
    return _percentiles(per_frame)


def main() -> int:
    out = sys.stdout.write
    out("per-frame cost (20 ms frames, microseconds, p50 / p99)\n")
    p50, p99 = inbound_path()
    out(f"  {'inbound  mu-law decode + 8k->16k':<54} {p50:7.1f} / {p99:7.1f}\n")
    for rate in (24000, 22050, 16000):
        p50, p99 = outbound_path(rate)
        label = f"outbound {rate // 1000:>2}k->8k + frame + encode + base64 + JSON"
        out(f"  {label:<54} {p50:7.1f} / {p99:7.1f}\n")
    p50, p99 = usage_counting()
    out(f"  {'usage: count a frame sent to the STT (per frame)':<54} {p50:7.3f} / {p99:7.3f}\n")
    out("\naudio held back inside the resampler (after each 20 ms chunk)\n")
    for row in hold_back_table():
        out("  " + row + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
