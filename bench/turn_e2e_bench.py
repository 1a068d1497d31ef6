"""Turn-taking end to end: simulated Twilio callers talking to `voice-gateway serve`.

Starts the Deepgram, OpenAI and Cartesia fakes of tests/fakes (answering at once) and the
gateway once per configuration (the set-up of bench/provider_latency_bench.py), then
places simulated Twilio calls and measures what the caller observes:

  a. complete questions (espeak-ng voices en-us, en-us+f3, en-gb, en+m3, and festival's
     voice when text2wave is installed): end of the caller's speech -> first agent audio
     frame received by the caller, p50/p95;
  b. backchannels ("uh-huh", "yeah", "okay", "right") and noises (cough-like bursts,
     clicks, white noise 100-400 ms) sent 1 s into an agent reply: replies cut (the stored
     agent turn interrupted, or a `clear` / no audio after the sound), and replies paused
     (a gap of 100 ms or more in the caller's playout) with the pause's length;
  c. real interruptions 1 s into an agent reply: caller speech start -> the agent's audio
     stopping at the caller (the end of its playout, so the gateway's PLAYOUT_LEAD_MS
     queued at Twilio counts) and -> the reply cancelled (the `clear` reaching the caller,
     and the gateway's own "interruption" / "barge-in" log line), p50/p95.

Caller-side times: the simulated phone sends a 20 ms frame on a fixed schedule; as Twilio
sends a frame once its 20 ms are captured, a frame's send time is the end of its audio. The
synthesised clips are trimmed to their first and last audible frame, so speech starts
20 ms before its first frame is sent and ends when its last frame is sent.

The Deepgram fake's recognition is scripted: before each caller sound the bench sets the
fake's `utterances` to the words said (noises: no words), so the gateway receives the
transcript (interim results, then the final) the caller's audio would give. The fake
answers interim words 350 ms into a speech segment, which sets how soon words can
interrupt; a real Deepgram's interim timing differs.

Configurations: `baseline` (TURN_VAD=energy, TURN_END_OF_TURN=silence, VAD_SILENCE_MS=600),
`smart-turn` (silero + smart-turn, the default), `silero-silence` (silero + 600 ms
silence); `--old-root DIR` adds `old`, the baseline settings served from another source
tree (e.g. a worktree of the code before turn-taking: any caller sound interrupts there).

    PYTHONPATH=$PWD python bench/turn_e2e_bench.py [--configs baseline,smart-turn]
        [--old-root /work/wt-old] [--sections abc]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from audio.codec import ULAW_SILENCE, ulaw_decode, ulaw_encode
from audio.resample import StreamResampler
from bench.provider_latency_bench import (
    API_KEY,
    _fake,
    _free_port,
    _pct,
    _process,
    fake_provider_env,
)
from gateway.demo.simulated_twilio import FRAME_BYTES, RATE, SimulatedTwilioCall, espeak_mulaw

ROOT = Path(__file__).resolve().parent.parent
FRAME_S = 0.02
AUDIBLE = 300  # a frame whose peak reaches this (of 32767) is sound, not the clip's silence
GAP_S = 0.1  # a playout gap this long is a pause of the agent
REPLY_INTO_S = 1.0  # the caller's sound starts this long into the agent's reply
SETTLE_S = 2.0  # longer than any end-of-turn wait (1.5 s at most)

CONFIGS: dict[str, dict[str, str]] = {
    "baseline": {"TURN_VAD": "energy", "TURN_END_OF_TURN": "silence", "VAD_SILENCE_MS": "600"},
    "smart-turn": {"TURN_VAD": "silero", "TURN_END_OF_TURN": "smart-turn"},
    "silero-silence": {
        "TURN_VAD": "silero",
        "TURN_END_OF_TURN": "silence",
        "VAD_SILENCE_MS": "600",
    },
}
OLD_ENV = {"VAD_SILENCE_MS": "600"}

ESPEAK_VOICES = ["en-us", "en-us+f3", "en-gb", "en+m3"]
QUESTIONS = [
    "What are your opening hours?",
    "Can I book a table for two tonight?",
    "How much does the monthly plan cost?",
    "Where is your nearest branch?",
    "Do you deliver on Sundays?",
    "What is the status of my order?",
]
BACKCHANNELS = ["uh-huh", "yeah", "okay", "right"]
INTERRUPTIONS = [
    "Wait, what about Sundays?",
    "No, I need the one in Paris.",
    "Can you repeat the first part please?",
    "That is not what I asked for.",
]
# The transcript of the caller's short request that starts a reply of about 4.5 s (the
# fake LLM echoes it); its words avoid the fake's keywords (bye, long, slow, ...).
TRIGGER = "Please read me the full list of opening hours for branch number {n} across the week"

# --------------------------------------------------------------------- caller audio


def _frames(mulaw: bytes) -> bytes:
    """`mulaw` from its first to its last audible 20 ms frame."""
    pcm = ulaw_decode(mulaw)
    n = len(pcm) // FRAME_BYTES
    peaks = np.abs(pcm[: n * FRAME_BYTES].astype(np.int32)).reshape(n, FRAME_BYTES).max(axis=1)
    loud = np.flatnonzero(peaks >= AUDIBLE)
    if not loud.size:
        raise RuntimeError("a clip with no audible frame")
    return mulaw[int(loud[0]) * FRAME_BYTES : (int(loud[-1]) + 1) * FRAME_BYTES]


def _to_mulaw(pcm: npt.NDArray[np.int16], rate: int) -> bytes:
    if rate != RATE:
        resampler = StreamResampler(rate, RATE)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    data = ulaw_encode(pcm)
    return data + ULAW_SILENCE * (-len(data) % FRAME_BYTES)


def _festival(text: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        source.write_text(text)
        subprocess.run(["text2wave", "-o", str(out), str(source)], check=True, capture_output=True)
        with wave.open(str(out)) as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return _to_mulaw(pcm, rate)


def speech(text: str, voice: str) -> bytes:
    """`text` said by `voice` (an espeak-ng voice, or "festival"), trimmed, 8 kHz mu-law."""
    raw = _festival(text) if voice == "festival" else espeak_mulaw(text, voice=voice)
    return _frames(raw)


def voices() -> list[str]:
    return ESPEAK_VOICES + (["festival"] if shutil.which("text2wave") else [])


def _burst(ms: int, rng: np.random.Generator, *, rms: float) -> npt.NDArray[np.float64]:
    return rng.standard_normal(RATE * ms // 1000) * rms


def _cough(ms: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A cough-like burst: band-limited noise, sharp attack, decaying."""
    noise = _burst(ms, rng, rms=1.0)
    band = np.convolve(np.diff(noise, prepend=0.0), np.ones(3) / 3, mode="same")  # ~300-2500 Hz
    t = np.arange(band.size) / RATE
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / (ms / 1000 / 3))
    out: npt.NDArray[np.float64] = band * envelope * (14000 / float(np.abs(band * envelope).max()))
    return out


def _clicks(count: int, spacing_ms: int) -> npt.NDArray[np.float64]:
    """`count` clicks (a 2 ms ringing impulse each) `spacing_ms` apart."""
    out = np.zeros(RATE * (spacing_ms * (count - 1) + 10) // 1000)
    t = np.arange(RATE * 2 // 1000) / RATE
    click = 16000 * np.sin(2 * np.pi * 1500 * t) * np.exp(-t / 0.0008)
    for i in range(count):
        start = RATE * spacing_ms * i // 1000
        out[start : start + click.size] += click
    return out


def noises() -> list[tuple[str, bytes]]:
    """The noise clips: name and 8 kHz mu-law (deterministic)."""
    rng = np.random.default_rng(13)
    clips: list[tuple[str, npt.NDArray[np.float64]]] = [
        ("cough 250 ms", _cough(250, rng)),
        ("cough 400 ms", _cough(400, rng)),
        (
            "double cough",
            np.concatenate([_cough(180, rng), np.zeros(RATE // 12), _cough(200, rng)]),
        ),
        ("click", _clicks(1, 0)),
        ("3 clicks 50 ms apart", _clicks(3, 50)),
        ("white noise 100 ms", _burst(100, rng, rms=3000)),
        ("white noise 250 ms", _burst(250, rng, rms=3000)),
        ("white noise 400 ms", _burst(400, rng, rms=3000)),
    ]
    return [(name, _frames(_to_mulaw(np.clip(pcm, -32767, 32767).astype(np.int16), RATE)))
            for name, pcm in clips]  # fmt: skip


# ---------------------------------------------------------------------- the calls


@dataclass(slots=True)
class Spoken:
    """A caller sound as the phone sent it: when it started and ended (monotonic clock)."""

    start: float
    end: float


@dataclass(slots=True)
class Trial:
    """One caller sound during an agent reply, and what the caller observed."""

    kind: str  # "backchannel" | "noise" | "interruption"
    name: str
    trigger: str  # the transcript that started the reply
    sound: Spoken
    reply_start: float
    trial_end: float
    interrupted: bool | None = None  # the stored reply turn (None: not found)


@dataclass(slots=True)
class Results:
    latency_ms: list[float] = field(default_factory=list)
    latency_by_voice: dict[str, list[float]] = field(default_factory=dict)
    stored_first_frame_ms: list[float] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    silent_ms: list[float] = field(default_factory=list)
    cancel_clear_ms: list[float] = field(default_factory=list)
    cancel_log_ms: list[float] = field(default_factory=list)
    cut: dict[str, list[str]] = field(default_factory=dict)
    paused_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Caller:
    """One simulated call whose recognition is scripted in the Deepgram fake."""

    def __init__(self, base: str, token: str, deepgram: str, http: httpx.AsyncClient) -> None:
        self.call = SimulatedTwilioCall(
            base_url=base,
            public_url=base,
            auth_token=token,
            record_arrivals=True,
            record_audio=True,
        )
        self._deepgram = deepgram
        self._http = http

    async def __aenter__(self) -> Caller:
        await self.call.start(self._http)
        await self.first_audio_after(time.monotonic() - 1, within_s=30)  # the greeting
        await self.call.wait_agent_silent(quiet_s=0.4, within_s=60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.call.stop()
        await self.call.aclose()

    @property
    def call_id(self) -> str:
        assert self.call.call_id is not None
        return self.call.call_id

    async def say(self, audio: bytes, words: str) -> Spoken:
        """Script the fake's transcript to `words`, send `audio`; when it started and ended."""
        # Later segments (an echo of a pause inside the clip) get no words.
        response = await self._http.post(
            self._deepgram + "/control", json={"utterances": [words] + [""] * 4}
        )
        response.raise_for_status()
        log = self.call.log
        before = len(log.sent)
        self.call.say(audio)
        await self.call.wait_said()
        first = audio[:FRAME_BYTES]
        index = next(i for i in range(before, len(log.sent)) if log.sent[i][1] == first)
        last = index + len(audio) // FRAME_BYTES - 1
        assert log.mic_started_at is not None and log.sent[last][1] == audio[-FRAME_BYTES:]
        start = log.mic_started_at + log.sent[index][0] / 1000 - FRAME_S
        return Spoken(start, log.mic_started_at + log.sent[last][0] / 1000)

    async def first_audio_after(self, t: float, within_s: float = 20.0) -> float:
        """When the first agent frame after `t` reached the phone."""
        deadline = time.monotonic() + within_s
        arrivals = self.call.log.arrivals
        while True:
            i = bisect.bisect_right(arrivals, t)
            if i < len(arrivals):
                return arrivals[i]
            if time.monotonic() > deadline:
                raise TimeoutError("no agent audio")
            await asyncio.sleep(0.005)

    async def stored_turns(self) -> list[dict[str, Any]]:
        headers = {"x-api-key": API_KEY}
        for _ in range(50):
            response = await self._http.get(f"/calls/{self.call_id}", headers=headers)
            body = response.json()
            if response.status_code == 200 and body["status"] not in ("in-progress", "ringing"):
                turns: list[dict[str, Any]] = body["transcript"]
                return turns
            await asyncio.sleep(0.2)
        raise TimeoutError(f"call {self.call_id} not stored as ended")


async def _control(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    (await http.post(url + "/control", json=body)).raise_for_status()


async def section_a(caller: Caller, out: Results) -> None:
    for voice in voices():
        for question in QUESTIONS:
            spoken = await caller.say(speech(question, voice), question)
            try:
                first = await caller.first_audio_after(spoken.end)
            except TimeoutError:
                out.errors.append(f"a: no reply to {question!r} ({voice})")
                continue
            out.latency_ms.append((first - spoken.end) * 1000)
            out.latency_by_voice.setdefault(voice, []).append((first - spoken.end) * 1000)
            await caller.call.wait_agent_silent(quiet_s=0.4, within_s=30)
    await caller.call.stop()
    for turn in await caller.stored_turns():
        if turn.get("latency") and "first_frame_out" in turn["latency"]:
            out.stored_first_frame_ms.append(turn["latency"]["first_frame_out"])


async def _during_reply(
    caller: Caller, n: int, kind: str, name: str, audio: bytes, words: str, voice: str
) -> Trial:
    """Start a reply with a short request, then send `audio` 1 s into the reply."""
    trigger = TRIGGER.format(n=n)
    spoken = await caller.say(speech("Please go on", voice), trigger)
    reply_start = await caller.first_audio_after(spoken.end)
    await asyncio.sleep(max(0.0, reply_start + REPLY_INTO_S - time.monotonic()))
    sound = await caller.say(audio, words)
    # Settled: past any end-of-turn wait after the sound, then the agent's answer (if any)
    # played out, so that the next request is a turn of its own.
    await asyncio.sleep(max(0.0, sound.end + SETTLE_S - time.monotonic()))
    await caller.call.wait_agent_silent(quiet_s=0.8, within_s=40)
    return Trial(kind, name, trigger, sound, reply_start, time.monotonic())


def _mark_stored(trials: list[Trial], turns: list[dict[str, Any]]) -> None:
    """Each trial's reply: the agent turn stored right after the caller turn that asked."""
    for trial in trials:
        for i, turn in enumerate(turns):
            if turn["speaker"] == "caller" and turn["text"] == trial.trigger:
                agent = next((t for t in turns[i + 1 :] if t["speaker"] == "agent"), None)
                trial.interrupted = None if agent is None else bool(agent["interrupted"])


def _playout_runs(played: list[float]) -> list[tuple[float, float]]:
    """The agent's playout at the phone as runs of contiguous frames (start, end)."""
    runs: list[tuple[float, float]] = []
    for t in played:
        if runs and t - runs[-1][1] < GAP_S:
            runs[-1] = (runs[-1][0], t + FRAME_S)
        else:
            runs.append((t, t + FRAME_S))
    return runs


async def section_b(caller: Caller, out: Results, n0: int) -> list[Trial]:
    trials: list[Trial] = []
    n = n0
    for voice in ESPEAK_VOICES:
        for word in BACKCHANNELS:
            n += 1
            clip = speech(word, voice)
            name = f"{word} ({voice})"
            trials.append(await _during_reply(caller, n, "backchannel", name, clip, word, voice))
    for name, clip in noises():
        n += 1
        trials.append(await _during_reply(caller, n, "noise", name, clip, "", "en-us"))
    return trials


async def section_c(caller: Caller, out: Results, n0: int) -> list[Trial]:
    trials: list[Trial] = []
    n = n0
    for voice in ("en-us", "en-gb"):
        for text in INTERRUPTIONS:
            n += 1
            clip = speech(text, voice)
            trials.append(await _during_reply(caller, n, "interruption", text, clip, text, voice))
    return trials


def _judge_b(caller: Caller, trials: list[Trial], out: Results) -> None:
    """Per backchannel / noise: cut (stored interrupted, a clear, or no audio after the
    sound) and paused (a playout gap over the sound)."""
    played = [t for t, _ in caller.call.log.played]
    runs = _playout_runs(played)
    clears = caller.call.log.clears
    for trial in trials:
        window = [r for r in runs if r[1] > trial.reply_start and r[0] < trial.trial_end]
        cleared = any(trial.sound.start <= c <= trial.trial_end for c in clears)
        resumed = any(r[1] > trial.sound.end + GAP_S for r in window)
        reasons = []
        if trial.interrupted is None:
            reasons.append("reply not stored")
        elif trial.interrupted:
            reasons.append("stored interrupted")
        if cleared:
            reasons.append("clear")
        if not resumed:
            reasons.append("no audio after")
        if reasons:
            out.cut.setdefault(trial.kind, []).append(f"{trial.name}: {', '.join(reasons)}")
        pairs = itertools.pairwise(window)
        gaps = [b[0] - a[1] for a, b in pairs if b[0] > trial.sound.start - GAP_S]
        if gaps and not cleared:
            out.paused_ms.setdefault(trial.kind, []).append(max(gaps) * 1000)
        out.paused_ms.setdefault(trial.kind, [])
        out.cut.setdefault(trial.kind, [])


def _log_times(log_file: Path, call_id: str) -> list[float]:
    """Monotonic times of the gateway's interruption / barge-in log lines for `call_id`."""
    offset = time.time() - time.monotonic()
    times: list[float] = []
    for line in log_file.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            msg = str(entry.get("msg", ""))
            if entry.get("call_id", call_id) == call_id and msg.startswith(
                ("interruption", "barge-in")
            ):
                times.append(datetime.fromisoformat(entry["ts"]).timestamp() - offset)
    return sorted(times)


def _judge_c(caller: Caller, trials: list[Trial], out: Results, log_file: Path) -> None:
    played = [t for t, _ in caller.call.log.played]
    runs = _playout_runs(played)
    clears = caller.call.log.clears
    logged = _log_times(log_file, caller.call_id)
    for trial in trials:
        start = trial.sound.start
        run = next((r for r in runs if r[0] <= start < r[1]), None)
        if run is None:
            out.errors.append(f"c: the agent was not playing at {trial.name!r}")
            continue
        out.silent_ms.append((run[1] - start) * 1000)
        clear = next((c for c in clears if start <= c <= trial.trial_end), None)
        if clear is not None:
            out.cancel_clear_ms.append((clear - start) * 1000)
        line = next((t for t in logged if start - 0.01 <= t <= trial.trial_end), None)
        if line is not None:
            out.cancel_log_ms.append((line - start) * 1000)
        if trial.interrupted is None:
            out.errors.append(f"c: the reply {trial.trigger!r} was not stored")
        elif not trial.interrupted:
            out.errors.append(f"c: {trial.name!r} left the reply stored whole")


async def run_config(
    base: str, token: str, deepgram: str, cartesia: str, sections: str, log_file: Path
) -> Results:
    out = Results()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        if "a" in sections:
            # Short replies (5 ms of audio per character): the reply's length does not matter.
            await _control(http, cartesia, {"ms_per_char": 5})
            async with Caller(base, token, deepgram, http) as caller:
                await section_a(caller, out)
        await _control(http, cartesia, {"ms_per_char": 45})  # replies of ~4.5 s
        for section, judge in (("b", section_b), ("c", section_c)):
            if section not in sections:
                continue
            async with Caller(base, token, deepgram, http) as caller:
                trials = await judge(caller, out, 100 if section == "c" else 0)
                await caller.call.stop()
                _mark_stored(trials, await caller.stored_turns())
                if section == "b":
                    _judge_b(caller, trials, out)
                else:
                    _judge_c(caller, trials, out, log_file)
            out.trials += trials
    return out


@contextlib.contextmanager
def _gateway(
    root: Path, env: dict[str, str], settings: dict[str, str], log_file: Path
) -> Iterator[tuple[str, str]]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex
    data_dir = log_file.parent / (log_file.stem + "-data")
    gateway_env = {
        **env,
        **settings,
        "PYTHONPATH": str(root),
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": token,
        "GATEWAY_API_KEY": API_KEY,
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "LOG_JSON": "true",
    }
    gateway_env.pop("MONGODB_URL", None)
    # -P: the source tree is PYTHONPATH's `root`, not the working directory.
    serve = [sys.executable, "-P", "-m", "gateway.cli", "serve", "--port", str(port)]
    with _process(serve, base + "/health", gateway_env, log_file):
        yield base, token


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} / {_pct(values, 0.95):.0f} ({len(values)})"


def report(results: dict[str, Results]) -> None:
    w = max(len(name) for name in results) + 2
    rows: list[tuple[str, Callable[[Results], str]]] = [
        ("a. end of speech -> first agent frame, ms p50 / p95 (n)", lambda r: _fmt(r.latency_ms)),
        ("   (stored first_frame_out, gateway clock)", lambda r: _fmt(r.stored_first_frame_ms)),
        ("b. backchannels cut / sent", lambda r: _count(r, "backchannel")),
        ("   noises cut / sent", lambda r: _count(r, "noise")),
        ("   backchannels: agent paused, n; pause ms p50", lambda r: _paused(r, "backchannel")),
        ("   noises: agent paused, n; pause ms p50", lambda r: _paused(r, "noise")),
        ("c. speech start -> agent silent at caller, ms", lambda r: _fmt(r.silent_ms)),
        ("   speech start -> reply cancelled (clear at caller)", lambda r: _fmt(r.cancel_clear_ms)),
        ("   speech start -> reply cancelled (gateway log)", lambda r: _fmt(r.cancel_log_ms)),
        ("   interruptions stored as interrupted", lambda r: _stored(r)),
    ]
    label = max(len(name) for name, _ in rows) + 2
    sys.stdout.write(f"{'':<{label}}" + "".join(f"{n:>{max(w, 22)}}" for n in results) + "\n")
    for name, cell in rows:
        line = f"{name:<{label}}" + "".join(f"{cell(r):>{max(w, 22)}}" for r in results.values())
        sys.stdout.write(line + "\n")
    for config, r in results.items():
        for voice, values in r.latency_by_voice.items():
            slow = sum(1 for v in values if v > 1000)
            sys.stdout.write(f"  {config}: a. {voice}: p50 {_fmt(values)}, over 1 s: {slow}\n")
        for kind, cuts in r.cut.items():
            for cut in cuts:
                sys.stdout.write(f"  {config}: {kind} cut: {cut}\n")
        for error in r.errors:
            sys.stdout.write(f"  {config}: {error}\n")


def _count(r: Results, kind: str) -> str:
    sent = sum(1 for t in r.trials if t.kind == kind)
    return f"{len(r.cut.get(kind, []))} / {sent}" if sent else "-"


def _paused(r: Results, kind: str) -> str:
    pauses = r.paused_ms.get(kind)
    if pauses is None:
        return "-"
    median = f"{statistics.median(pauses):.0f}" if pauses else "-"
    return f"{len(pauses)}; {median}"


def _stored(r: Results) -> str:
    trials = [t for t in r.trials if t.kind == "interruption"]
    return f"{sum(1 for t in trials if t.interrupted)} / {len(trials)}" if trials else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="baseline,smart-turn,silero-silence")
    parser.add_argument("--old-root", type=Path, help="also run the baseline from this tree")
    parser.add_argument("--sections", default="abc")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")

    log_dir = Path(tempfile.mkdtemp(prefix="vg-turn-e2e-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dg_url, dg = _fake("deepgram_server", env, log_dir)
    oa_url, oa = _fake("openai_server", env, log_dir)
    ct_url, ct = _fake("cartesia_server", env, log_dir)
    providers = fake_provider_env(dg_url, oa_url, ct_url)
    runs: list[tuple[str, Path, dict[str, str]]] = [(c, ROOT, CONFIGS[c]) for c in configs]
    if args.old_root is not None:
        runs.append(("old", args.old_root.resolve(), OLD_ENV))
    results: dict[str, Results] = {}
    with dg, oa, ct:
        for name, root, settings in runs:
            log_file = log_dir / f"gateway-{name}.log"
            sys.stderr.write(f"{name}: serving from {root}, log {log_file}\n")
            started = time.monotonic()
            with _gateway(root, env, {**providers, **settings}, log_file) as (base, token):
                results[name] = asyncio.run(
                    run_config(base, token, dg_url, ct_url, args.sections, log_file)
                )
            sys.stderr.write(f"{name}: {time.monotonic() - started:.0f} s\n")
    sys.stdout.write(f"voices: {', '.join(voices())}; logs in {log_dir}\n")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
