"""Voicemail detection on a synthetic set: accuracy and time to decision of `MachineDetector`.

    python bench/voicemail_bench.py [--quick]

The set: human pickups ("Hello?", "Hi, this is Sam speaking." ...: a short answer, then the
person waits) and machine greetings (several sentences, with a beep after them or none),
each spoken by several voices (espeak-ng voices at several speeds and pitches, and
Festival), behind 0.2-0.6 s of line, over a quiet line (-60 dBFS noise), through an 8 kHz
mu-law round trip, fed as 20 ms frames.

Ways of hearing the words:
- none: length and beep only;
- script: the text each sentence was synthesised from (an oracle, flagged as such),
  handed over as a final transcript when an endpointer (600 ms of silence) closes the
  utterance, as the call's STT would;
- pocketsphinx: the project's offline STT (`gateway/providers/local_stt.py`'s model)
  decoding each such utterance at 16 kHz; its decoding time is added to the utterance's
  end (measured, on this machine).
With transcripts, a short greeting followed by silence is decided at once (the gateway's
setting) or after waiting up to `transcript_wait_ms` for its words. A last pass runs the
set over a noisy line (-35 dBFS) without transcripts.

Figures: the confusion matrix (truth x first verdict), time to the first verdict (p50/p95:
for people from the end of their "Hello?", the wait they hear; for machines from the
answer), and for machines with a beep, how often `machine_done` came at or after the
beep's end (a message then starts after the beep), with its delay after the beep. Also
the detector's cost in µs per 20 ms frame (VAD + beep detector + rules).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr

from audio.beep import BeepDetector
from audio.codec import ulaw_decode, ulaw_encode
from audio.vad import Endpointer, SpeechEnded, SpeechStarted
from gateway.call.machine_detection import Detection, DetectionConfig, MachineDetector
from tests.espeak import festival_speak, speak

PCM = npt.NDArray[np.int16]
RATE = 8000
FRAME = RATE // 50

HUMAN = [
    ["Hello?"],
    ["Hi, this is Sam speaking."],
    ["Yeah?"],
    ["Hello, who is this?"],
    ["Hello, Sam speaking."],
    # A business pickup: a person, but a long greeting (the hard case for length rules).
    ["Good afternoon, Acme Dental, this is Sam speaking, how can I help you?"],
]
MACHINE = [
    ["Hi, you've reached Sam.", "I can't take your call right now.", "Please leave a message."],
    ["The person you are calling is not available.", "Please leave a message after the tone."],
    [
        "Hello, this is Alex.",
        "Sorry I missed your call.",
        "Leave your name and number and I'll get back to you.",
    ],
    [
        "Thank you for calling Acme Dental.",
        "Our office is currently closed.",
        "Please leave a message and we will return your call.",
    ],
    ["Hi, it's Jordan.", "Leave a message."],
]
# (engine, espeak voice, words per minute, pitch)
VOICES: list[tuple[str, str, int | None, int | None]] = [
    ("espeak", "en-us", None, None),
    ("espeak", "en-us+f3", 160, 70),
    ("espeak", "en-gb", 150, 40),
    ("espeak", "en-us+m7", 200, 30),
    ("festival", "", None, None),
]
BEEPS = [(1000.0, 400), (1400.0, 250), (850.0, 600)]  # Hz, ms


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    machine: bool
    pcm: PCM
    sentences: list[tuple[float, float, str]]  # start ms, end ms, text
    speech_end_ms: float  # end of the last sentence
    beep_end_ms: float | None


def _voice(text: str, voice: tuple[str, str, int | None, int | None]) -> PCM:
    engine, name, wpm, pitch = voice
    pcm = (
        festival_speak(text, RATE)
        if engine == "festival"
        else speak(text, RATE, voice=name, words_per_minute=wpm, pitch=pitch)
    )
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > 300)[0]
    return pcm[int(loud[0]) : int(loud[-1]) + 1]  # trimmed: pauses are placed by the clip


def _tone(hz: float, ms: int) -> PCM:
    t = np.arange(RATE * ms // 1000) / RATE
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _silence(ms: float) -> PCM:
    return np.zeros(int(RATE * ms / 1000), dtype=np.int16)


def _clip(
    name: str,
    texts: list[str],
    voice: tuple[str, str, int | None, int | None],
    *,
    machine: bool,
    lead_ms: float,
    beep: tuple[float, int] | None,
    rng: np.random.Generator,
    noise_dbfs: float,
) -> Clip:
    parts = [_silence(lead_ms)]
    at = lead_ms
    sentences = []
    for i, text in enumerate(texts):
        if i:
            gap = float(rng.uniform(250, 550))  # a machine's pause between sentences
            parts.append(_silence(gap))
            at += gap
        pcm = _voice(text, voice)
        parts.append(pcm)
        sentences.append((at, at + 1000 * pcm.size / RATE, text))
        at += 1000 * pcm.size / RATE
    speech_end = at
    beep_end = None
    if beep is not None:
        gap = float(rng.uniform(300, 800))
        parts += [_silence(gap), _tone(*beep)]
        beep_end = at + gap + beep[1]
    parts.append(_silence(4000))
    pcm = np.concatenate(parts)
    line = rng.standard_normal(pcm.size) * 32768 * 10 ** (noise_dbfs / 20)
    noisy = (pcm.astype(np.float64) + line).clip(-32768, 32767).astype(np.int16)
    return Clip(name, machine, ulaw_decode(ulaw_encode(noisy)), sentences, speech_end, beep_end)


def corpus(quick: bool, *, noise_dbfs: float = -60.0) -> list[Clip]:
    rng = np.random.default_rng(16)
    voices = VOICES[:2] + VOICES[-1:] if quick else VOICES
    clips = []
    for v, voice in enumerate(voices):
        tag = voice[0] if voice[0] == "festival" else f"{voice[1]}@{voice[2] or 175}"
        for texts in HUMAN:
            lead = float(rng.uniform(200, 600))
            clips.append(
                _clip(
                    f"human {tag}: {texts[0]}",
                    texts,
                    voice,
                    machine=False,
                    lead_ms=lead,
                    beep=None,
                    rng=rng,
                    noise_dbfs=noise_dbfs,
                )
            )
        for m, texts in enumerate(MACHINE):
            lead = float(rng.uniform(200, 600))
            beep = BEEPS[(m + v) % len(BEEPS)] if (m + v) % 3 else None
            label = f"machine{' +beep' if beep else ''} {tag}: {texts[0]}"
            clips.append(
                _clip(
                    label,
                    texts,
                    voice,
                    machine=True,
                    lead_ms=lead,
                    beep=beep,
                    rng=rng,
                    noise_dbfs=noise_dbfs,
                )
            )
    return clips


Transcriber = Callable[[PCM, list[str]], str]


def _script(_pcm: PCM, texts: list[str]) -> str:
    return " ".join(texts)


def _pocketsphinx() -> Transcriber:
    from pocketsphinx import Config, Decoder

    from gateway.providers.local_stt import _clean

    decoder = Decoder(Config(loglevel="FATAL"))

    def transcribe(pcm: PCM, _texts: list[str]) -> str:
        wide = soxr.resample(pcm, RATE, 16000).astype(np.int16)
        decoder.start_utt()
        decoder.process_raw(wide.tobytes(), False, True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return _clean(hypothesis.hypstr) if hypothesis is not None else ""

    return transcribe


@dataclass(frozen=True, slots=True)
class Outcome:
    clip: Clip
    decisions: list[Detection]
    words: list[str]


def run(clip: Clip, config: DetectionConfig, transcriber: Transcriber | None) -> Outcome:
    detector = MachineDetector(config)
    endpointer = Endpointer(rate=RATE, silence_ms=600)
    pending: list[tuple[float, str]] = []  # (due ms, transcript)
    utterance_start = 0.0
    heard: list[str] = []
    for i in range(0, clip.pcm.size - FRAME + 1, FRAME):
        frame = clip.pcm[i : i + FRAME]
        now = 1000.0 * (i + FRAME) / RATE
        detector.on_audio(frame, RATE)
        if transcriber is not None:
            for event in endpointer.feed(frame):
                if isinstance(event, SpeechStarted):
                    utterance_start = event.at_ms
                elif isinstance(event, SpeechEnded):
                    start = max(0, int((utterance_start - 300) * RATE / 1000))
                    audio = clip.pcm[start : int(event.at_ms * RATE / 1000)]
                    texts = [
                        t for s, e, t in clip.sentences if e > utterance_start and s < event.at_ms
                    ]
                    t0 = time.perf_counter()
                    text = transcriber(audio, texts)
                    decode_ms = 1000 * (time.perf_counter() - t0)
                    pending.append((now + decode_ms, text))
                    heard.append(text)
            for due, text in [p for p in pending if p[0] <= now]:
                pending.remove((due, text))
                detector.on_transcript(text, final=True)
        if detector.decided:
            break
    return Outcome(clip, list(detector.decisions), heard)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, outcomes: list[Outcome], *, verbose: bool) -> None:
    matrix: Counter[tuple[str, str]] = Counter()
    human_wait, machine_time, done_after_beep, done_delay, done_no_beep = [], [], [], [], []
    wrong = []
    for o in outcomes:
        truth = "machine" if o.clip.machine else "human"
        first = o.decisions[0] if o.decisions else None
        verdict = "undecided" if first is None else first.verdict.replace("machine_done", "machine")
        matrix[truth, verdict] += 1
        if first is not None and truth == "human" and verdict == "human":
            human_wait.append(first.at_ms - o.clip.speech_end_ms)
        if first is not None and truth == "machine" and verdict == "machine":
            machine_time.append(first.at_ms)
        done = next((d for d in o.decisions if d.verdict == "machine_done"), None)
        if o.clip.machine and o.clip.beep_end_ms is not None and done is not None:
            done_after_beep.append(done.at_ms >= o.clip.beep_end_ms - 20)
            done_delay.append(done.at_ms - o.clip.beep_end_ms)
        if o.clip.machine and o.clip.beep_end_ms is None and done is not None:
            done_no_beep.append(done.at_ms - o.clip.speech_end_ms)
        if verdict != truth:
            wrong.append(f"    {o.clip.name!r}: {verdict} {first} words={o.words}")
    total = len(outcomes)
    correct = matrix["human", "human"] + matrix["machine", "machine"]
    print(f"\n== {label}: {correct}/{total} correct ({100 * correct / total:.0f} %)")
    acted = correct + matrix["human", "unknown"]
    print(
        f"   as acted on (unknown is greeted as a person): {acted}/{total} "
        f"({100 * acted / total:.0f} %)"
    )
    print(f"   {'truth / verdict':<16}{'human':>8}{'machine':>9}{'unknown':>9}")
    for truth in ("human", "machine"):
        row = [matrix[truth, v] for v in ("human", "machine", "unknown")]
        print(f"   {truth:<16}{row[0]:>8}{row[1]:>9}{row[2]:>9}")
    print(
        f"   person greeted after their last word: p50 {_pct(human_wait, 0.5):.0f} ms, "
        f"p95 {_pct(human_wait, 0.95):.0f} ms (n={len(human_wait)})"
    )
    print(
        f"   machine verdict after the answer: p50 {_pct(machine_time, 0.5):.0f} ms, "
        f"p95 {_pct(machine_time, 0.95):.0f} ms (n={len(machine_time)})"
    )
    if done_after_beep:
        print(
            f"   beep machines: machine_done at/after the beep's end {sum(done_after_beep)}/"
            f"{len(done_after_beep)}, delay after the beep p50 {_pct(done_delay, 0.5):.0f} ms, "
            f"p95 {_pct(done_delay, 0.95):.0f} ms"
        )
    if done_no_beep:
        print(
            f"   machines without a beep: machine_done after the greeting's last word "
            f"p50 {_pct(done_no_beep, 0.5):.0f} ms, p95 {_pct(done_no_beep, 0.95):.0f} ms"
        )
    if verbose and wrong:
        print("   wrong:")
        print("\n".join(wrong))


def cost(clips: list[Clip]) -> None:
    speech = np.concatenate([c.pcm for c in clips[:10]])
    frames = [speech[i : i + FRAME] for i in range(0, speech.size - FRAME + 1, FRAME)]
    runs = []
    for _ in range(5):
        detector = MachineDetector(DetectionConfig(max_decision_ms=1e12, machine_greeting_ms=1e12))
        detector.tick(0)
        t0 = time.perf_counter_ns()
        for frame in frames:
            detector.on_audio(frame, RATE)
            if detector.decided:  # keep it listening: a fresh detector from here
                detector = MachineDetector(
                    DetectionConfig(max_decision_ms=1e12, machine_greeting_ms=1e12)
                )
        runs.append((time.perf_counter_ns() - t0) / 1000 / len(frames))
    print(
        f"\ncost: {statistics.median(runs):.1f} µs per 20 ms frame (median of 5 passes "
        f"over {len(frames)} frames of speech, 8 kHz; EnergyVAD + beep detector + rules)"
    )
    for rate in (8000, 16000):
        pcm = speech if rate == RATE else soxr.resample(speech, RATE, rate).astype(np.int16)
        size = rate // 50
        blocks = [pcm[i : i + size] for i in range(0, pcm.size - size + 1, size)]
        passes = []
        for _ in range(5):
            beeps = BeepDetector(rate)
            t0 = time.perf_counter_ns()
            for block in blocks:
                beeps.feed(block)
            passes.append((time.perf_counter_ns() - t0) / 1000 / len(blocks))
        print(
            f"      the beep detector alone at {rate} Hz: {statistics.median(passes):.1f} µs/frame"
        )


def beep_census(clips: list[Clip], line: str) -> None:
    """The beep detector over every whole clip: beeps found, and beeps found in speech."""
    found = false = 0
    for clip in clips:
        detector = BeepDetector(RATE)
        heard = []
        for i in range(0, clip.pcm.size - FRAME + 1, FRAME):
            heard += detector.feed(clip.pcm[i : i + FRAME])
        if clip.beep_end_ms is not None:
            found += any(abs(b.end_ms - clip.beep_end_ms) <= 40 for b in heard)
        false += sum(
            1 for b in heard if clip.beep_end_ms is None or abs(b.end_ms - clip.beep_end_ms) > 40
        )
    with_beep = sum(c.beep_end_ms is not None for c in clips)
    print(
        f"\nbeep detector over whole clips, {line}: {found}/{with_beep} beeps found, "
        f"{false} false beeps in {len(clips)} clips of speech"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three voices, no PocketSphinx")
    parser.add_argument("--verbose", action="store_true", help="list the wrong verdicts")
    args = parser.parse_args()
    t0 = time.perf_counter()
    clips = corpus(args.quick)
    humans = sum(not c.machine for c in clips)
    beeps = sum(c.beep_end_ms is not None for c in clips)
    print(
        f"{len(clips)} clips ({humans} human pickups, {len(clips) - humans} machine greetings, "
        f"{beeps} with a beep), 8 kHz mu-law; synthesised in {time.perf_counter() - t0:.0f} s"
    )
    plain = DetectionConfig()
    waiting = DetectionConfig(transcript_wait_ms=700.0)
    print(f"config: {plain}")
    report("quiet line, no transcripts", [run(c, plain, None) for c in clips], verbose=args.verbose)
    report(
        "quiet line, script transcripts (oracle: the synthesised text), no wait for them",
        [run(c, plain, _script) for c in clips],
        verbose=args.verbose,
    )
    report(
        "quiet line, script transcripts (oracle), transcript_wait_ms=700",
        [run(c, waiting, _script) for c in clips],
        verbose=args.verbose,
    )
    if not args.quick:
        stt = _pocketsphinx()
        report(
            "quiet line, PocketSphinx transcripts (local STT), no wait for them",
            [run(c, plain, stt) for c in clips],
            verbose=args.verbose,
        )
        report(
            "quiet line, PocketSphinx transcripts (local STT), transcript_wait_ms=700",
            [run(c, waiting, stt) for c in clips],
            verbose=args.verbose,
        )
        by_words = DetectionConfig(words_greeting_ms=5000.0, max_decision_ms=8000.0)
        report(
            "quiet line, script transcripts (oracle), long greetings judged by words "
            "(words_greeting_ms=5000, max_decision_ms=8000)",
            [run(c, by_words, _script) for c in clips],
            verbose=args.verbose,
        )
        report(
            "quiet line, PocketSphinx transcripts, long greetings judged by words "
            "(words_greeting_ms=5000, max_decision_ms=8000)",
            [run(c, by_words, stt) for c in clips],
            verbose=args.verbose,
        )
        noisy = corpus(args.quick, noise_dbfs=-35.0)
        report(
            "noisy line (-35 dBFS white noise), no transcripts",
            [run(c, plain, None) for c in noisy],
            verbose=args.verbose,
        )
        beep_census(noisy, "noisy line")
    beep_census(clips, "quiet line")
    cost(clips)


if __name__ == "__main__":
    main()
