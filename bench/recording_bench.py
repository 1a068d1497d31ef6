"""Recording benchmark: what the gateway's own recorder costs a call, how long the upload
takes at hang-up, and how the recording formats compare in size and fidelity.

1. CPU: the recorder's per-frame path (place both legs, cut, commit, encode) for one call.
2. S3: a 5-minute call streamed to a real S3-compatible server on loopback (moto's server
   mode, S3's real 5 MiB minimum part size): part uploads during the call, and the time
   from hang-up to a complete object with its final header.
3. Formats, on a one-minute two-voice call made with espeak-ng: 16-bit PCM WAV, mu-law
   WAV, and Ogg/Opus (opusenc, Debian's opus-tools) at several bitrates, with the
   waveform SNR of what each gives back against what the call carried.

Prints its figures; run with `scripts/dev.sh bench` (or directly, from the repo root).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio.codec import ulaw_decode
from audio.frames import samples_per_frame
from audio.stereo import WavFormat, read_wav
from gateway.demo.simulated_twilio import espeak_mulaw
from gateway.recording.bucket import CallRecorder, RecordingBucket
from storage import RecordingState
from tests.s3_server import run_s3_server

RATE = 8000
FRAME = samples_per_frame(RATE)


class _NoStore:
    """The recorder's store, for runs that measure S3 alone."""

    async def set_recording(self, call_id: str, state: RecordingState) -> None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def two_voice_call(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Caller and agent legs of a call (8 kHz PCM16, mu-law on the wire) taking turns."""
    caller_lines = ["What are your opening hours?", "I would like to book an appointment."]
    agent_lines = [
        "We are open from nine in the morning until six in the evening.",
        "I can book that for you. Our next free slot is tomorrow at ten.",
    ]
    total = int(seconds * RATE)
    caller = np.zeros(total, dtype=np.int16)
    agent = np.zeros(total, dtype=np.int16)
    at, turn = int(0.3 * RATE), 0
    while at < total:
        legs = ((caller, caller_lines, "en-us+f3"), (agent, agent_lines, "en-us"))
        for lane, lines, voice in legs:
            speech = ulaw_decode(espeak_mulaw(lines[turn % 2], voice=voice))[: total - at]
            lane[at : at + speech.shape[0]] = speech
            at += speech.shape[0] + int(0.5 * RATE)
            if at >= total:
                break
        turn += 1
    return caller, agent


def cpu_per_frame() -> list[float]:
    """Microseconds per 20 ms frame of the recorder's hot path, five runs of 60 s each."""
    caller, agent = two_voice_call(60.0)
    runs = []
    for _ in range(5):
        clock = _Clock()
        recorder = CallRecorder(
            call_id="bench", key="bench.wav", bucket=None,  # type: ignore[arg-type]
            store=_NoStore(), part_bytes=5 * 1024 * 1024, clock=clock,
        )  # fmt: skip
        frames = caller.shape[0] // FRAME
        started = time.perf_counter()
        for k in range(frames):
            clock.now = 100.0 + k * 0.020
            pcm = agent[k * FRAME : (k + 1) * FRAME]
            recorder.agent_audio(clock.now + 0.060, pcm)  # sent 60 ms ahead, as the pacer does
            if k % 250 == 249:
                recorder.agent_cleared(clock.now)  # a barge-in every 5 s
            recorder.caller_audio(k * 20, caller[k * FRAME : (k + 1) * FRAME])
        runs.append((time.perf_counter() - started) / frames * 1e6)
    return runs


async def s3_run(bucket: RecordingBucket, encoding: str, seconds: float) -> dict[str, Any]:
    caller, agent = two_voice_call(30.0)
    clock = _Clock()
    recorder = CallRecorder(
        call_id="bench-" + uuid.uuid4().hex[:6], key=f"bench/{uuid.uuid4().hex}.wav",
        bucket=bucket, store=_NoStore(), part_bytes=5 * 1024 * 1024, clock=clock,
        encoding=encoding,  # type: ignore[arg-type]
    )  # fmt: skip
    recorder.start()
    frames = int(seconds * 50)
    started = time.perf_counter()
    for k in range(frames):
        clock.now = 100.0 + k * 0.020
        i = (k * FRAME) % (caller.shape[0] - FRAME)
        recorder.agent_audio(clock.now + 0.060, agent[i : i + FRAME])
        recorder.caller_audio(k * 20, caller[i : i + FRAME])
        if k % 50 == 0:
            await asyncio.sleep(0)  # the event loop runs the uploads between frames
    fed = time.perf_counter() - started
    hung_up = time.perf_counter()
    state = await recorder.finish()
    return {
        "encoding": encoding,
        "feed_s": fed,
        "finish_ms": (time.perf_counter() - hung_up) * 1000,
        "bytes": state.size_bytes,
        "status": state.status,
    }


def opus_rows(caller: np.ndarray, agent: np.ndarray, work: Path) -> list[tuple[str, int, float]]:
    """(format, bytes per minute, SNR dB) for Ogg/Opus at several bitrates."""
    source = np.stack([caller, agent], axis=1)
    wav = WavFormat("pcm16", RATE)
    src = work / "call.wav"
    src.write_bytes(wav.header(source.size * 2) + wav.encode(source))
    rows = []
    for kbps in (12, 16, 24, 32):
        encoded, decoded = work / f"call-{kbps}.opus", work / f"call-{kbps}.wav"
        subprocess.run(
            ["opusenc", "--quiet", "--bitrate", str(kbps), "--speech", str(src), str(encoded)],
            check=True,
        )
        subprocess.run(
            ["opusdec", "--quiet", "--rate", str(RATE), str(encoded), str(decoded)], check=True
        )
        _, back = read_wav(decoded.read_bytes())
        n = min(back.shape[0], source.shape[0])
        rows.append((f"Ogg/Opus {kbps} kbit/s", encoded.stat().st_size, snr(source[:n], back[:n])))
    return rows


def snr(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = ref - test.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(noise**2), 1e-9)))


def main() -> None:
    runs = cpu_per_frame()
    median = statistics.median(runs)
    print("## Recorder CPU (one call, 60 s, both legs, a barge-in every 5 s)")
    print(f"per 20 ms frame: median {median:.1f} us over 5 runs ({min(runs):.1f}-{max(runs):.1f})")
    print(f"share of one core per recorded call: {median / 20000 * 100:.3f} %")

    print("\n## Formats (a 60 s two-voice call; SNR against what the call carried)")
    caller, agent = two_voice_call(60.0)
    source = np.stack([caller, agent], axis=1)
    rows: list[tuple[str, int, float]] = []
    for encoding in ("pcm16", "mulaw"):
        wav = WavFormat(encoding, RATE)  # type: ignore[arg-type]
        data = wav.header(None) + wav.encode(source)
        _, back = read_wav(data)
        exact = np.array_equal(back, source)
        rows.append((f"WAV {encoding}", len(data), float("inf") if exact else snr(source, back)))
    if shutil.which("opusenc") and shutil.which("opusdec"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += opus_rows(caller, agent, Path(tmp))
    else:
        print("(opusenc/opusdec not found: install Debian's opus-tools for the Opus rows)")
    print("| format | KiB per minute | vs WAV pcm16 | waveform SNR |")
    print("| --- | --- | --- | --- |")
    for name, size, ratio_db in rows:
        snr_text = "bit-exact" if ratio_db == float("inf") else f"{ratio_db:.1f} dB"
        print(f"| {name} | {size / 1024:.0f} | {rows[0][1] / size:.1f}x smaller | {snr_text} |")

    print("\n## S3 (moto server on loopback, 5 MiB parts): a 5-minute call")
    with tempfile.TemporaryDirectory() as tmp, run_s3_server(Path(tmp), min_part_bytes=None) as s3:
        name = "bench-" + uuid.uuid4().hex[:8]
        s3.client().create_bucket(Bucket=name)
        bucket = RecordingBucket(
            bucket=name, region=s3.region, endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key,
            prefix="bench/", url_ttl_s=600,
        )  # fmt: skip
        for encoding in ("pcm16", "mulaw"):
            results = [asyncio.run(s3_run(bucket, encoding, 300.0)) for _ in range(3)]
            finish = statistics.median(r["finish_ms"] for r in results)
            size = results[0]["bytes"]
            print(
                f"{encoding}: {size / 1e6:.1f} MB, hang-up to complete object "
                f"(last part, complete, final header): median {finish:.0f} ms of 3"
            )


if __name__ == "__main__":
    main()
