"""Synthetic turn-taking corpus: caller audio with known speech segments, written to files.

    python bench/turn_corpus.py [OUT_DIR]

OUT_DIR defaults to ${VOICE_GATEWAY_CACHE:-~/.cache/voice-gateway}/turn-corpus-<version>/ (never
the clone). Every file is one caller clip: lead-in line noise, speech (or a noise burst), then a
tail of line noise long enough for any end-of-turn wait. Written twice: `16k/` (16 kHz PCM) and
`8k/` (the telephone path: 16 kHz -> 8 kHz -> mu-law -> PCM, as Twilio delivers it), both mono
int16 WAV, with `manifest.json` listing per file its kind, voice, voice family, text and speech
segments [start_ms, end_ms] (from the lengths of the trimmed synthesised clips, not from a VAD).

Kinds: `complete` (questions and statements), `pause` (a sentence whose first part is an
incomplete thought, then 300-900 ms of silence, then the rest), `backchannel`, `interruption`,
`noise` (cough-like, click, white and babble-like bursts, 100-400 ms) and `silence`.

Voice families: espeak-ng (several voices and a slow rate), festival (Debian's HTS and diphone
voices, installed with apt-get when missing) and human: the Asterisk core prompts recorded by
Allison Smith (Debian `asterisk-core-sounds-en-wav`, CC-BY-SA-3.0, 8 kHz telephone recordings),
used for complete statements and for pause sentences spliced from prompts that Asterisk itself
plays in sequence ("You are currently caller number" | "three").
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from audio.codec import ulaw_decode, ulaw_encode
from audio.resample import StreamResampler

CORPUS_VERSION = 1
RATE = 16000
PHONE_RATE = 8000
LEAD_MS = 1000  # line noise before speech: lets an adaptive VAD learn the floor
TAIL_MS = 4000  # line noise after speech: longer than any end-of-turn wait measured
PAUSES_MS = (300, 500, 700, 900)
LINE_NOISE_DBFS = -60.0
SPEECH_PEAK_DBFS = -6.0  # every speech clip is normalised to this peak

PCM = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float64]

COMPLETE = [
    "What time do you open tomorrow?",
    "Can I book a table for two tonight?",
    "How much does the basic plan cost?",
    "Is there a pharmacy near the station?",
    "I want to cancel my appointment.",
    "My order has not arrived yet.",
    "Do you deliver on Sundays?",
    "Please send me the invoice by email.",
    "Where is your nearest branch?",
    "Can you repeat that please?",
    "I need to change my address.",
    "What is the balance on my account?",
    "Yes, that works for me.",
    "No, I would rather come on Friday.",
    "How long will the repair take?",
    "Thank you, that is all I needed.",
    "Could you transfer me to billing?",
    "My card was charged twice this month.",
    "Is the store open on public holidays?",
    "I would like to speak to a manager.",
]

# (incomplete first part, rest). The first part is synthesised ending in a comma, so the
# voices give it the continuing intonation of a speaker who has not finished.
PAUSED = [
    ("I would like to book", "a table for four people."),
    ("My account number is", "four five seven two nine."),
    ("Can you tell me", "when the next train leaves?"),
    ("I was wondering if", "you have any rooms free this weekend."),
    ("The problem is that", "my internet keeps dropping out."),
    ("I need to", "reschedule my appointment."),
    ("Could you send", "the documents to my new address?"),
    ("We are looking for", "a flat with two bedrooms."),
    ("I bought a jacket from you and", "the zip broke after a week."),
    ("What I really want to know is", "whether the price includes tax."),
    ("My name is", "Robert Johnson."),
    ("I would like to order", "a large pizza with mushrooms."),
    ("The last time I called", "nobody answered."),
    ("Is it possible to", "pay in three instalments?"),
    ("I am calling about", "the letter you sent me."),
    ("Our flight was cancelled and", "we need a hotel for tonight."),
    ("Can I have", "the chicken salad and a lemonade?"),
    ("I think the best day for me would be", "Thursday morning."),
    ("When I tried to log in", "it said my password was wrong."),
    ("Because of the storm", "our delivery is late."),
]

BACKCHANNELS = ["Uh-huh.", "Yeah.", "Okay.", "Right.", "Mm-hmm.", "Sure.", "I see."]

INTERRUPTIONS = [
    "Wait, I have a question about my bill.",
    "No, that is not what I asked.",
    "Sorry, can you stop for a second?",
    "Hold on, that is the wrong address.",
    "Actually, I want to talk to a person.",
    "Stop, I already paid that.",
    "Excuse me, I did not understand.",
    "Hang on, let me get a pen.",
]

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
# Asterisk prompt file -> its words (from memory of the upstream prompt list, checked against
# a PocketSphinx decode of each file).
HUMAN_COMPLETE = {
    "one-moment-please": "One moment please.",
    "please-try-again": "Please try again.",
    "pls-hold-while-try": "Please hold while I try that extension.",
    "something-terribly-wrong": "Something is terribly wrong.",
    "sorry-youre-having-problems": "I'm sorry you're having problems.",
    "number-not-answering": "The number you have dialed is not answering.",
    "check-number-dial-again": "Please check the number and dial again.",
    "cannot-complete-as-dialed": "Your call cannot be completed as dialed.",
    "vm-sorry": "I'm sorry, I did not understand your response.",
    "pbx-invalid": "I'm sorry, but that's not a valid extension. Please try again.",
    "conf-onlyperson": "You are currently the only person in this conference.",
    "queue-thankyou": "Thank you for your patience.",
    "queue-youarenext": "Your call is now first in line and will be answered by the next "
    "available representative.",
    "vm-nobodyavail": "Nobody is available to take your call at the moment.",
    "please-try-call-later": "Please try your call again later.",
    "feature-not-avail-line": "That feature is not available on this line.",
    "all-circuits-busy-now": "All circuits are busy now.",
    "tt-weasels": "Weasels have eaten our phone system.",
    "auth-thankyou": "Thank you.",
    "goodbye": "Goodbye.",
    "hello": "Hello.",
}
# (first part, rest): prompt sequences Asterisk plays, the first part ending mid-thought.
HUMAN_PAUSED = [
    (["queue-thereare"], ["digits/3"], "You are currently caller number | three."),
    (
        ["queue-holdtime"],
        ["digits/2", "queue-minutes"],
        "The estimated hold time is currently | two minutes.",
    ),
    (
        ["vm-num-i-have"],
        ["digits/5", "digits/5", "digits/1", "digits/2"],
        "The number I have is | five five one two.",
    ),
    (["you-entered"], ["digits/4", "digits/7", "digits/9"], "You entered | four seven nine."),
    (["vm-youhave"], ["digits/2", "vm-INBOX", "vm-messages"], "You have | two new messages."),
    (
        ["vm-theperson"],
        ["digits/2", "digits/1", "vm-isunavail"],
        "The person at extension | two one is unavailable.",
    ),
]


@dataclass(frozen=True, slots=True)
class Voice:
    """A synthetic voice: `synth(text)` gives (pcm, rate) with any silence around it."""

    name: str
    family: str
    synth: Callable[[str], tuple[PCM, int]]


def cache_root() -> Path:
    """The per-user cache the gateway's scripts use."""
    return Path(os.environ.get("VOICE_GATEWAY_CACHE") or Path.home() / ".cache/voice-gateway")


def default_corpus_dir() -> Path:
    return cache_root() / f"turn-corpus-{CORPUS_VERSION}"


def read_wav(data: bytes | Path) -> tuple[PCM, int]:
    """Mono int16 samples and rate of a WAV file or its bytes."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with wave.open(src if isinstance(src, io.BytesIO) else str(src), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit WAV is read")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0].copy()
        return pcm, w.getframerate()


def write_wav(path: Path, pcm: PCM, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def resample(pcm: PCM, in_rate: int, out_rate: int) -> PCM:
    if in_rate == out_rate:
        return pcm
    r = StreamResampler(in_rate, out_rate)
    return np.concatenate([r.process(pcm), r.flush()])


def espeak_voice(name: str, voice: str, wpm: int) -> Voice:
    def synth(text: str) -> tuple[PCM, int]:
        wav = subprocess.run(
            ["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm), "--", text],
            check=True,
            capture_output=True,
        ).stdout
        return read_wav(wav)

    return Voice(name, "espeak", synth)


def festival_voice(name: str, voice: str) -> Voice:
    def synth(text: str) -> tuple[PCM, int]:
        # text2wave cannot finish a WAV header on a pipe, so it writes a file.
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            subprocess.run(
                ["text2wave", "-eval", f"({voice})", "-o", str(wav)],
                input=text.encode(),
                check=True,
                capture_output=True,
            )
            return read_wav(wav.read_bytes())

    return Voice(name, "festival", synth)


ESPEAK = [
    espeak_voice("espeak:en-us", "en-us", 175),
    espeak_voice("espeak:en-us+f3", "en-us+f3", 175),
    espeak_voice("espeak:en+m3", "en+m3", 175),
    espeak_voice("espeak:en-gb", "en-gb", 175),
    espeak_voice("espeak:en-us-slow", "en-us", 130),
]
# (voice, Debian package). festvox-rablpc16k is not in Debian 13; ked stands in for it.
FESTIVAL = [
    (festival_voice("festival:slt-hts", "voice_cmu_us_slt_arctic_hts"), "festvox-us-slt-hts"),
    (festival_voice("festival:kal", "voice_kal_diphone"), "festvox-kallpc16k"),
    (festival_voice("festival:ked", "voice_ked_diphone"), "festvox-kdlpc16k"),
]
DEBIAN_PACKAGES = [
    "espeak-ng",
    "festival",
    *(p for _, p in FESTIVAL),
    "asterisk-core-sounds-en-wav",
]


def ensure_debian_packages() -> None:
    """Install the synthesisers and the recorded prompts with apt-get when any is missing."""
    missing = [
        p
        for p in DEBIAN_PACKAGES
        if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0
    ]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages (install them as root): {' '.join(missing)}")
    print(f"installing {' '.join(missing)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def trim(pcm: PCM, rate: int, *, below_peak_db: float = 40.0) -> PCM:
    """The clip from its first to its last 5 ms block within `below_peak_db` of the loudest."""
    block = rate // 200
    n = pcm.size // block
    if n == 0:
        return pcm
    power = np.mean(np.square(pcm[: n * block].reshape(n, block), dtype=np.float64), axis=1)
    loud = np.flatnonzero(power >= power.max() * 10.0 ** (-below_peak_db / 10.0))
    return pcm[loud[0] * block : (loud[-1] + 1) * block]


def normalise(x: Floats, peak_dbfs: float) -> Floats:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x if peak == 0.0 else x * (32767.0 * 10.0 ** (peak_dbfs / 20.0) / peak)


class Speech:
    """Synthesises (or reads) clips once, trimmed to their speech, at 16 kHz as floats."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], Floats] = {}

    def tts(self, voice: Voice, text: str) -> Floats:
        key = (voice.name, text)
        if key not in self._memo:
            pcm, rate = voice.synth(text)
            clip = resample(trim(pcm, rate), rate, RATE).astype(np.float64)
            self._memo[key] = normalise(clip, SPEECH_PEAK_DBFS)
        return self._memo[key]

    def prompts(self, names: list[str]) -> Floats:
        """Asterisk prompts played back to back (each trimmed, 60 ms apart), as one clip."""
        parts: list[Floats] = []
        for name in names:
            pcm, rate = read_wav(ASTERISK_DIR / f"{name}.wav")
            if parts:
                parts.append(np.zeros(RATE * 60 // 1000))
            parts.append(resample(trim(pcm, rate), rate, RATE).astype(np.float64))
        return normalise(np.concatenate(parts), SPEECH_PEAK_DBFS)


@dataclass(slots=True)
class Clip:
    """One corpus file before line noise: the pieces laid out after the lead-in."""

    name: str
    kind: str
    voice: str
    family: str
    text: str
    pieces: list[Floats]  # sound, silence, sound, ...: even indices are sound
    pause_ms: int | None = None
    level_dbfs: float | None = None


def lay_out(clip: Clip) -> tuple[Floats, list[list[float]]]:
    """The clip's samples (without line noise) and its sound segments in ms."""
    lead = np.zeros(RATE * LEAD_MS // 1000)
    tail = np.zeros(RATE * TAIL_MS // 1000)
    segments: list[list[float]] = []
    pos = lead.size
    for i, piece in enumerate(clip.pieces):
        if i % 2 == 0:
            segments.append([1000.0 * pos / RATE, 1000.0 * (pos + piece.size) / RATE])
        pos += piece.size
    return np.concatenate([lead, *clip.pieces, tail]), segments


def silence(ms: int) -> Floats:
    return np.zeros(RATE * ms // 1000)


def level(x: Floats, rms_dbfs: float) -> Floats:
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    return x if rms == 0.0 else x * (32767.0 * 10.0 ** (rms_dbfs / 20.0) / rms)


def band(x: Floats, low_hz: float, high_hz: float, tilt_db_per_octave: float = 0.0) -> Floats:
    """Band-pass by FFT masking, with an optional spectral tilt above `low_hz`."""
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / RATE)
    gain = ((f >= low_hz) & (f <= high_hz)).astype(np.float64)
    if tilt_db_per_octave:
        octaves = np.log2(np.maximum(f, low_hz) / low_hz)
        gain *= 10.0 ** (tilt_db_per_octave * octaves / 20.0)
    return np.fft.irfft(spectrum * gain, n=x.size)


def noise_clips(rng: random.Random, speech: Speech) -> list[Clip]:
    """Cough-like, click, white and babble-like bursts of 100-400 ms at assorted levels."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    clips: list[Clip] = []
    levels = [-40.0, -35.0, -30.0, -25.0, -20.0]
    babble_sources = [speech.tts(v, t) for v in ESPEAK[:3] for t in COMPLETE[:6]]
    for i in range(8):
        ms = rng.randrange(100, 401)
        n = RATE * ms // 1000
        t = np.arange(n) / RATE
        lvl = levels[i % len(levels)]
        # Cough: a burst of noise shaped like a glottal explosion, fast attack, decaying.
        env = np.minimum(t / 0.01, 1.0) * np.exp(-t / rng.uniform(0.05, 0.12))
        cough = band(nprng.standard_normal(n), 250.0, 4000.0, -3.0) * env
        clips.append(
            Clip(
                f"noise/cough-{i:02d}",
                "noise",
                "cough",
                "noise",
                f"cough {ms} ms",
                [level(cough, lvl)],
                level_dbfs=lvl,
            )
        )
        # Clicks: one to three 2-6 ms pops inside the burst window.
        click = np.zeros(n)
        for _ in range(rng.randrange(1, 4)):
            at, width = rng.randrange(0, n - 100), rng.randrange(32, 97)
            click[at : at + width] = nprng.standard_normal(width) * np.hanning(width)
        click = normalise(click, lvl + 12.0)
        clips.append(
            Clip(
                f"noise/click-{i:02d}",
                "noise",
                "click",
                "noise",
                f"click {ms} ms",
                [click],
                level_dbfs=lvl + 12.0,
            )
        )
        white = nprng.standard_normal(n) * np.hanning(n) ** 0.25
        clips.append(
            Clip(
                f"noise/white-{i:02d}",
                "noise",
                "white",
                "noise",
                f"white noise {ms} ms",
                [level(white, lvl)],
                level_dbfs=lvl,
            )
        )
        # Babble: several voices at once, cut to the burst length.
        babble = np.zeros(n)
        for src in rng.sample(babble_sources, 4):
            at = rng.randrange(0, max(1, src.size - n))
            piece = src[at : at + n]
            babble[: piece.size] += piece
        babble *= np.hanning(n) ** 0.25
        clips.append(
            Clip(
                f"noise/babble-{i:02d}",
                "noise",
                "babble",
                "noise",
                f"babble {ms} ms",
                [level(babble, lvl)],
                level_dbfs=lvl,
            )
        )
    return clips


def speech_clips(speech: Speech) -> list[Clip]:
    clips: list[Clip] = []
    voices = ESPEAK + [v for v, _ in FESTIVAL]
    for voice in voices:
        tag = voice.name.replace(":", "-")
        for i, text in enumerate(COMPLETE):
            clips.append(
                Clip(
                    f"complete/{tag}/{i:02d}",
                    "complete",
                    voice.name,
                    voice.family,
                    text,
                    [speech.tts(voice, text)],
                )
            )
        for i, (first, rest) in enumerate(PAUSED):
            a, b = speech.tts(voice, first + ","), speech.tts(voice, rest)
            for pause in PAUSES_MS:
                clips.append(
                    Clip(
                        f"pause/{tag}/{i:02d}-{pause}",
                        "pause",
                        voice.name,
                        voice.family,
                        f"{first} | {rest}",
                        [a, silence(pause), b],
                        pause_ms=pause,
                    )
                )
        for i, text in enumerate(BACKCHANNELS):
            clips.append(
                Clip(
                    f"backchannel/{tag}/{i:02d}",
                    "backchannel",
                    voice.name,
                    voice.family,
                    text,
                    [speech.tts(voice, text)],
                )
            )
        for i, text in enumerate(INTERRUPTIONS):
            clips.append(
                Clip(
                    f"interruption/{tag}/{i:02d}",
                    "interruption",
                    voice.name,
                    voice.family,
                    text,
                    [speech.tts(voice, text)],
                )
            )
    human = "human:asterisk-allison"
    for i, (name, text) in enumerate(HUMAN_COMPLETE.items()):
        clips.append(
            Clip(
                f"complete/human/{i:02d}",
                "complete",
                human,
                "human",
                text,
                [speech.prompts([name])],
            )
        )
    for i, (first_names, rest_names, text) in enumerate(HUMAN_PAUSED):
        a, b = speech.prompts(first_names), speech.prompts(rest_names)
        for pause in PAUSES_MS:
            clips.append(
                Clip(
                    f"pause/human/{i:02d}-{pause}",
                    "pause",
                    human,
                    "human",
                    text,
                    [a, silence(pause), b],
                    pause_ms=pause,
                )
            )
    return clips


def silent_clips(rng: random.Random) -> list[Clip]:
    """Callers who say nothing: the line noise alone, louder noise, mains hum."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    n = RATE * 6
    hum_t = np.arange(n) / RATE
    hum = sum(np.sin(2 * np.pi * 50.0 * k * hum_t) / k for k in (1, 3, 5))
    return [
        Clip("silence/line", "silence", "line", "noise", "line noise only", [silence(6000)]),
        Clip(
            "silence/noisy",
            "silence",
            "noisy",
            "noise",
            "white noise at -45 dBFS",
            [level(nprng.standard_normal(n), -45.0)],
            level_dbfs=-45.0,
        ),
        Clip(
            "silence/hum",
            "silence",
            "hum",
            "noise",
            "50 Hz hum at -40 dBFS",
            [level(np.asarray(hum, dtype=np.float64), -40.0)],
            level_dbfs=-40.0,
        ),
    ]


def phone_path(pcm16k: PCM) -> PCM:
    """16 kHz -> 8 kHz -> mu-law and back: the caller as Twilio delivers them."""
    return ulaw_decode(ulaw_encode(resample(pcm16k, RATE, PHONE_RATE)))


def write_corpus(out: Path, *, seed: int = 13) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    speech = Speech()
    clips = speech_clips(speech) + noise_clips(rng, speech) + silent_clips(rng)
    nprng = np.random.default_rng(seed)
    noise_rms = 32767.0 * 10.0 ** (LINE_NOISE_DBFS / 20.0)
    entries: list[dict[str, Any]] = []
    for clip in clips:
        samples, segments = lay_out(clip)
        samples = samples + nprng.standard_normal(samples.size) * noise_rms
        pcm = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
        write_wav(out / "16k" / f"{clip.name}.wav", pcm, RATE)
        write_wav(out / "8k" / f"{clip.name}.wav", phone_path(pcm), PHONE_RATE)
        entries.append(
            {
                "file": f"{clip.name}.wav",
                "kind": clip.kind,
                "voice": clip.voice,
                "family": clip.family,
                "text": clip.text,
                "segments": [[round(a, 1), round(b, 1)] for a, b in segments],
                "pause_ms": clip.pause_ms,
                "level_dbfs": clip.level_dbfs,
                "duration_ms": round(1000.0 * pcm.size / RATE, 1),
            }
        )
    manifest = {
        "version": CORPUS_VERSION,
        "rates": {"16k": RATE, "8k": PHONE_RATE},
        "line_noise_dbfs": LINE_NOISE_DBFS,
        "files": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return entries


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default_corpus_dir()
    ensure_debian_packages()
    entries = write_corpus(out)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    seconds = sum(e["duration_ms"] for e in entries) / 1000.0
    summary = ", ".join(f"{k} {n}" for k, n in counts.items())
    print(f"{len(entries)} files ({summary}), {seconds / 60:.0f} min of audio, in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
