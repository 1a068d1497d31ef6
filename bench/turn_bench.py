"""Offline end-of-turn benchmark: the gateway's turn-taking on the synthetic corpus, no gateway.

    python bench/turn_bench.py [--corpus DIR] [--rates 8000,16000] [--limit N] [--workers N]
                               [--only NAME,...] [--save FILE]

The corpus comes from bench/turn_corpus.py (default: the per-user cache). Each file is fed
in 20 ms frames, at 8 kHz (the Twilio path: mu-law, band-limited) and at 16 kHz, through the
call core's own `TurnTaking` (gateway/call/turn_taking.py: Endpointer, pauses, verdicts
and waits) with the VAD and end-of-turn of each configuration. A JudgeTurn is answered as
gateway/call/session.py `_judge_turn` does, from two signals: Smart Turn (audio/smart_turn.py,
"sounds complete") and the words so far read by `SentenceEnds` (gateway/call/sentence_end.py,
"reads complete"); both complete -> complete wait, both not -> incomplete wait, else the
unsure wait. The words come either from the corpus text (oracle: what a perfect streaming
STT gives) or from PocketSphinx decoding the audio the local STT holds for the utterance
(decoded: what gateway/providers/local_stt.py `words_so_far` gives). The verdict is handed
back after the time the slower judge took here. A grid of thresholds and waits runs, with
Smart-Turn-only, words-only and fixed-silence baselines. Reported per configuration:

- complete utterances: delay from the true end of speech (known from synthesis) to the frame
  at which the turn ended, p50/p95, and how many turns ended before the speech did;
- mid-sentence pauses (300-900 ms after an incomplete first part): cut-offs, i.e. the turn
  ended before the caller finished, by voice family and by pause length;
- the Pareto front (complete-turn p50 vs cut-offs) and the recommended configuration;
- each judge alone: share judged complete at the end of complete turns and mid-sentence,
  and the judges' time;
- per VAD: backchannels, noises, interruptions and silent lines that the VAD took for speech
  at all, how long (500 ms of speech interrupts the agent whatever its words), and
  how soon after true speech start the caller counted as speaking (the agent's pause).

Frames are fed as fast as the CPU allows; times are positions on the audio timeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pocketsphinx import Config, Decoder

from audio.frames import AudioFrame
from audio.models import locate_models
from audio.silero import SileroModel
from audio.smart_turn import SmartTurnModel
from audio.vad import EnergyVAD, FrameClassifier
from bench.turn_corpus import default_corpus_dir, read_wav
from gateway.call.sentence_end import SentenceEnds
from gateway.call.turn_taking import (
    CallerStarted,
    EndOfTurn,
    JudgeTurn,
    PushAudio,
    TurnTaking,
    UtteranceEnded,
)
from gateway.providers.base import STTStream
from gateway.settings import Settings

PCM = npt.NDArray[np.int16]
FRAME_MS = 20
MIN_SPEECH_MS = 120  # the assistant default
INTERRUPTION_MIN_SPEECH_MS = 500  # the assistant default: this long interrupts whatever said
FAMILIES = ("espeak", "festival", "human")
STT_RATE = 16000  # PocketSphinx's rate: the TurnTaking resamples the caller's speech to it


@dataclass(frozen=True, slots=True)
class Judge:
    """How a configuration turns a pause's two signals into the silence to wait for."""

    st_threshold: float | None  # Smart Turn p that sounds complete (None: the audio agrees)
    lm_threshold: float | None  # log10 P(</s>) that reads complete (None: no words)
    words: str  # "oracle" | "decoded" | "" (none)
    complete_ms: int
    unsure_ms: int
    incomplete_ms: int


@dataclass(frozen=True, slots=True)
class Detector:
    """One configuration: a VAD and an end-of-turn rule (judged when `judge` is set)."""

    name: str
    vad: str  # "energy" | "silero"
    end: EndOfTurn
    judge: Judge | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    """Everything a pause's judges said, whatever the configuration uses of it."""

    at: float  # position of the JudgeTurn (ms of the file)
    p: float  # Smart Turn's completion probability
    st_ms: float  # its inference time here
    oracle: str  # the words actually spoken before the pause
    oracle_score: float | None  # log10 P(</s> | their last two words)
    decoded: str  # PocketSphinx's decode of the audio held for the utterance so far
    decoded_score: float | None
    decode_ms: float


def decide(judge: Judge, j: Judgement) -> tuple[int, float]:
    """The silence to wait for and how late the verdict comes (as gateway/call/session.py
    `TurnJudge`: agreement picks the short or long wait, disagreement the unsure one; no
    words: a turn that sounds complete waits the unsure wait, one that does not the long
    one; no audio model: the words alone, unsure without words)."""
    if judge.words == "oracle":
        score, words_ms = j.oracle_score, 0.0
    elif judge.words == "decoded":
        score, words_ms = j.decoded_score, j.decode_ms
    else:
        score, words_ms = None, 0.0
    reads = None if judge.lm_threshold is None or score is None else score >= judge.lm_threshold
    if judge.st_threshold is None:
        if reads is None:
            return judge.unsure_ms, words_ms
        return (judge.complete_ms if reads else judge.incomplete_ms), words_ms
    sounds = j.p >= judge.st_threshold
    delay = max(j.st_ms, words_ms)
    if reads is None:
        return (judge.unsure_ms if sounds else judge.incomplete_ms), delay
    if reads == sounds:
        return (judge.complete_ms if sounds else judge.incomplete_ms), delay
    return judge.unsure_ms, delay


def silence(vad: str, ms: int) -> Detector:
    return Detector(f"{vad} + silence {ms}", vad, EndOfTurn(pause_ms=ms))


def judged(
    words: str,
    complete: int,
    unsure: int,
    incomplete: int,
    st: float | None,
    lm: float | None,
    pause: int = 200,
) -> Detector:
    """A Silero + judged configuration; its name reads pause/complete/unsure/incomplete."""
    audio = "words only" if st is None else f"ST>={st}"
    text = "" if lm is None else f" LM>={lm}"
    source = f"{words} " if words else ""
    waits = f"{pause}/{complete}/{unsure}/{incomplete}"
    judge = Judge(st, lm, words, complete, unsure, incomplete)
    longest = max(complete, unsure, incomplete)
    return Detector(
        f"{source}{audio}{text} {waits}",
        "silero",
        EndOfTurn(pause, judged=True, max_wait_ms=longest),
        judge,
    )


def _grid() -> list[Detector]:
    dets = [silence("energy", 600), silence("silero", 600), silence("silero", 1000)]
    for complete in (200, 300):
        for incomplete in (1500, 2000):
            for st in (0.5, 0.7, 0.9):
                for unsure in (complete, 1200):
                    dets.append(judged("", complete, unsure, incomplete, st, None))
            for words in ("oracle", "decoded"):
                for lm in (-0.8, -1.0, -1.3, -1.6):
                    dets.append(judged(words, complete, 800, incomplete, None, lm))
                    for unsure in (600, 800, 1000, 1200):
                        for st in (0.5, 0.7, 0.9):
                            dets.append(judged(words, complete, unsure, incomplete, st, lm))
    return dets


DETECTORS = _grid()
VADS = ("energy", "silero")
TURN_KINDS = ("complete", "pause")  # the files judged detectors run on


class _HeldSTT:
    """The TurnTaking's STT: like PocketSphinx, only the caller's speech at 16 kHz (the
    bench keeps what it is sent, as the local STT holds an utterance's audio)."""

    name = "held"
    continuous = False

    def input_rate(self, transport_rate: int) -> int:
        return STT_RATE

    async def open_stream(self, *, call_id: str, sample_rate: int) -> STTStream:
        raise NotImplementedError


class _Replay:
    """A VAD that replays decisions already computed for the file (VADs do not depend on
    the end-of-turn rule, so each runs once per file and rate)."""

    def __init__(self, decisions: list[bool]) -> None:
        self._decisions = iter(decisions)

    def is_speech(self, pcm: PCM) -> bool:
        return next(self._decisions)


@dataclass(slots=True)
class Run:
    """What one detector did on one file (positions in ms of the file's audio)."""

    starts: list[tuple[float, float]] = field(default_factory=list)  # (speech at, reported at)
    ends: list[float] = field(default_factory=list)  # turn ended at (frame position)
    spans: list[tuple[float, float]] = field(default_factory=list)  # utterance start/end
    judgements: list[Judgement] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)  # the wait each judgement gave


class _Worker:
    """Per-process state: the models, loaded once."""

    silero: SileroModel
    turn: SmartTurnModel
    decoder: Decoder
    sentence_ends: SentenceEnds


_W = _Worker()


def _init_worker(silero_path: str, turn_path: str) -> None:
    _W.silero = SileroModel.load(Path(silero_path))
    _W.turn = SmartTurnModel.load(Path(turn_path))
    _W.decoder = Decoder(Config(loglevel="FATAL"))  # the local STT's default decoder
    _W.sentence_ends = SentenceEnds.load()


def _frames(pcm: PCM, rate: int) -> Iterator[PCM]:
    step = rate * FRAME_MS // 1000
    for i in range(0, pcm.size - step + 1, step):
        yield pcm[i : i + step]


def _decisions(vad: FrameClassifier, pcm: PCM, rate: int) -> list[bool]:
    return [vad.is_speech(f) for f in _frames(pcm, rate)]


def _decode(pcm: bytes) -> str:
    """One batch decode, as gateway/providers/local_stt.py's `words_so_far`."""
    if not pcm:
        return ""
    _W.decoder.start_utt()
    _W.decoder.process_raw(pcm, False, True)
    _W.decoder.end_utt()
    hypothesis = _W.decoder.hyp()
    text = hypothesis.hypstr if hypothesis is not None else ""
    return " ".join(_FILLER.sub(" ", text).split()).lower()


_FILLER = re.compile(r"<[^>]*>|\[[^\]]*\]|\([0-9]+\)")


def oracle_words(entry: dict[str, Any], at_ms: float, pause_ms: int) -> str:
    """The words spoken before a pause judged at `at_ms`: whole segments before it; within
    a segment (a pause the VAD found between words), its words in proportion to the time
    spoken up to the VAD's silence (an approximation: the corpus has no word timings)."""
    texts = [t.strip() for t in entry["text"].split("|")]
    words: list[str] = []
    for (start, end), text in zip(entry["segments"], texts, strict=True):
        if at_ms >= end:
            words += text.split()
        elif at_ms > start:
            spoken = max(0.0, min(1.0, (at_ms - pause_ms - start) / (end - start)))
            seg = text.split()
            words += seg[: int(spoken * len(seg))]
            break
        else:
            break
    return " ".join(words)


@dataclass(slots=True)
class _Caches:
    """Per file and rate: model answers by input, and the drives already made."""

    st: dict[str, tuple[float, float]] = field(default_factory=dict)
    decoded: dict[str, tuple[str, float]] = field(default_factory=dict)
    tries: dict[tuple[str, EndOfTurn], _Node] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    """A drive's history so far: the next pause judged, and where each way of answering
    it leads (a (wait, frames until the verdict) edge); or the finished run."""

    judgement: Judgement | None = None
    children: dict[tuple[int, int], _Node] = field(default_factory=dict)
    run: Run | None = None


def _edge(answer: tuple[int, float]) -> tuple[int, int]:
    wait, delay = answer
    return wait, math.ceil(delay / FRAME_MS)


def _judge(
    step: JudgeTurn,
    held: list[PCM],
    position: float,
    entry: dict[str, Any],
    pause_ms: int,
    c: _Caches,
) -> Judgement:
    """Both judges on a pause (each model run once per distinct input)."""
    st_key = hashlib.blake2b(step.audio.tobytes(), digest_size=16).hexdigest()
    if st_key not in c.st:
        t0 = time.perf_counter()
        p = _W.turn.completion_probability(step.audio)
        c.st[st_key] = (p, 1000.0 * (time.perf_counter() - t0))
    audio = np.concatenate(held).tobytes() if held else b""
    words_key = hashlib.blake2b(audio, digest_size=16).hexdigest()
    if not any(d.judge is not None and d.judge.words == "decoded" for d in DETECTORS):
        c.decoded[words_key] = ("", 0.0)  # no configuration reads the decode: skip it
    elif words_key not in c.decoded:
        t0 = time.perf_counter()
        text = _decode(audio)
        c.decoded[words_key] = (text, 1000.0 * (time.perf_counter() - t0))
    p, st_ms = c.st[st_key]
    decoded, decode_ms = c.decoded[words_key]
    oracle = oracle_words(entry, position, pause_ms)
    return Judgement(
        position,
        p,
        st_ms,
        oracle,
        _W.sentence_ends.end_log10(oracle),
        decoded,
        _W.sentence_ends.end_log10(decoded),
        decode_ms,
    )


def _drive(
    det: Detector,
    decisions: list[bool],
    pcm: PCM,
    rate: int,
    entry: dict[str, Any],
    c: _Caches,
) -> Run:
    """Feed the file through TurnTaking as the session does; answer a JudgeTurn with the
    detector's verdict after the time its judges took. Drives are shared: the run depends
    only on the answers given, so a detector answering as an earlier one did reuses it."""
    node: _Node | None = None
    if det.judge is not None:
        node = c.tries.setdefault((det.vad, det.end), _Node())
        while node.run is None and node.judgement is not None:
            edge = _edge(decide(det.judge, node.judgement))
            if edge not in node.children:
                break
            node = node.children[edge]
        if node.run is not None:
            return node.run
    turns = TurnTaking(
        _HeldSTT(),
        rate=rate,
        min_speech_ms=MIN_SPEECH_MS,
        end_of_turn=det.end,
        preroll_ms=300,
        clock=lambda: 0.0,
        started_at=0.0,
        vad=_Replay(decisions),
    )
    run = Run()
    pending: list[tuple[float, int, int]] = []  # (due at ms, pause, wait)
    held: list[PCM] = []  # the STT's audio of the utterance so far
    path: list[tuple[Judgement, tuple[int, int]]] = []
    position = 0.0
    for frame in _frames(pcm, rate):
        position += FRAME_MS
        steps = turns.feed(AudioFrame(frame, rate))
        while pending and pending[0][0] <= position:
            _, pause, wait = pending.pop(0)
            steps += turns.verdict(pause, wait)
        for step in steps:
            if isinstance(step, PushAudio):
                held.append(step.frame.pcm)
            elif isinstance(step, CallerStarted):
                run.starts.append((step.at_ms, position))
            elif isinstance(step, UtteranceEnded):
                run.ends.append(position)
                u = turns.take_utterance()
                run.spans.append((u.start_ms, u.end_ms))
                held = []
            elif isinstance(step, JudgeTurn):
                assert det.judge is not None
                j = _judge(step, held, position, entry, det.end.pause_ms, c)
                answer = decide(det.judge, j)
                run.judgements.append(j)
                run.waits.append(answer[0])
                path.append((j, _edge(answer)))
                pending.append((position + FRAME_MS * _edge(answer)[1], step.pause, answer[0]))
                pending.sort()
    if det.judge is not None:
        node = c.tries[(det.vad, det.end)]
        for j, edge in path:
            node.judgement = j
            node = node.children.setdefault(edge, _Node())
        node.run = run
    return run


def _one_file(entry: dict[str, Any], corpus: str, rates: list[int]) -> dict[str, Any]:
    """Every detector on one file at each rate (judged ones on complete and paused turns)."""
    out: dict[str, Any] = {}
    for rate in rates:
        pcm, file_rate = read_wav(Path(corpus) / f"{rate // 1000}k" / entry["file"])
        assert file_rate == rate
        decisions = {
            "energy": _decisions(EnergyVAD(rate=rate), pcm, rate),
            "silero": _decisions(_W.silero.stream(rate), pcm, rate),
        }
        caches = _Caches()
        for det in DETECTORS:
            if det.judge is None or entry["kind"] in TURN_KINDS:
                out[f"{det.name}@{rate}"] = _drive(
                    det, decisions[det.vad], pcm, rate, entry, caches
                )
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _fmt_ms(values: list[float]) -> str:
    if not values:
        return "      -     "
    return f"{statistics.median(values):5.0f} {_pct(values, 0.95):5.0f}"


@dataclass(slots=True)
class Cell:
    """Tallies for one detector, rate and group of files."""

    delays: list[float] = field(default_factory=list)
    early: int = 0
    missed: int = 0
    n: int = 0
    cut: int = 0

    @property
    def cut_pct(self) -> float:
        return 100.0 * self.cut / self.n if self.n else 0.0


def _tally(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], key: str
) -> dict[tuple[str, str], Cell]:
    """Cells keyed by (kind, group) where group is 'all', a family, or a pause length."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for entry, result in zip(entries, results, strict=True):
        kind = entry["kind"]
        if kind not in TURN_KINDS:
            continue
        run: Run = result[key]
        speech_end = entry["segments"][-1][1]
        groups = ["all", entry["family"]]
        if kind == "pause":
            groups += [f"{entry['pause_ms']} ms", f"{entry['family']} {entry['pause_ms']} ms"]
        for group in groups:
            cell = cells[(kind, group)]
            cell.n += 1
            first_end = run.ends[0] if run.ends else None
            if first_end is None:
                cell.missed += 1
            elif first_end < speech_end:
                cell.early += 1
                cell.cut += 1
            else:
                cell.delays.append(first_end - speech_end)
    return cells


@dataclass(frozen=True, slots=True)
class Row:
    """One detector's headline numbers at one rate."""

    det: Detector
    rate: int
    cells: dict[tuple[str, str], Cell]

    @property
    def p50(self) -> float:
        delays = self.cells[("complete", "all")].delays
        return statistics.median(delays) if delays else math.inf

    @property
    def cut(self) -> float:
        return self.cells[("pause", "all")].cut_pct


def _rows(entries: list[dict[str, Any]], results: list[dict[str, Any]], rate: int) -> list[Row]:
    return [Row(det, rate, _tally(entries, results, f"{det.name}@{rate}")) for det in DETECTORS]


def _pareto(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both complete-turn p50 and cut-offs."""
    front: list[Row] = []
    for row in sorted(rows, key=lambda r: (r.cut, r.p50)):
        if not front or row.p50 < front[-1].p50:
            front.append(row)
    return front


NAME_W = 44


def _print_rows(rows: list[Row], pauses: list[int]) -> None:
    print(
        f"{'detector':{NAME_W}s} | {'complete p50 p95 [bad]':>22s} | {'cut all':>13s} | "
        f"{'cut esp/fest/hum %':>18s} | "
        + " | ".join(f"{str(p) + ' ms e/f/h':>14s}" for p in pauses)
    )
    for row in rows:
        c = row.cells[("complete", "all")]
        cut = row.cells[("pause", "all")]
        fams = "/".join(f"{row.cells[('pause', f)].cut_pct:4.0f}" for f in FAMILIES)
        by_pause = " | ".join(
            "/".join(
                f"{row.cells[('pause', f'{f} {p} ms')].cut_pct:4.0f}"
                if row.cells[("pause", f"{f} {p} ms")].n
                else "   -"
                for f in FAMILIES
            )
            for p in pauses
        )
        print(
            f"{row.det.name:{NAME_W}s} | {_fmt_ms(c.delays)} [{c.early + c.missed:3d}/{c.n:3d}]"
            f" | {cut.cut_pct:5.1f}% {cut.cut:3d}/{cut.n:3d} | {fams:>18s} | {by_pause}"
        )


def _report_turns(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], rates: list[int]
) -> dict[int, list[Row]]:
    pauses = sorted({e["pause_ms"] for e in entries if e["kind"] == "pause"})
    by_rate: dict[int, list[Row]] = {}
    for rate in rates:
        rows = _rows(entries, results, rate)
        by_rate[rate] = rows
        print(f"\n=== End of turn at {rate} Hz, every configuration (fewest cut-offs first) ===")
        print(
            "name: [oracle|decoded words] ST>=Smart Turn threshold | words only, LM>=log10 "
            "P(</s>) threshold, waits pause/complete/unsure/incomplete ms\ncomplete: delay "
            "after the true end of speech, p50 p95 ms [ended early or never / n]; cut: "
            "mid-sentence pauses where the turn ended before the caller finished"
        )
        _print_rows(sorted(rows, key=lambda r: (r.cut, r.p50)), pauses)
        print(f"\n--- Pareto front at {rate} Hz (complete p50 vs cut-offs), all configurations")
        _print_rows(_pareto(rows), pauses)
        for words in ("oracle", "decoded"):
            print(f"\n--- Pareto front at {rate} Hz, {words} words (+ the baselines)")
            _print_rows(
                _pareto(
                    [r for r in rows if r.det.judge is None or r.det.judge.words in (words, "")]
                ),
                pauses,
            )
    return by_rate


def _recommend(by_rate: dict[int, list[Row]]) -> None:
    """The lowest complete-turn p50 among the configurations with the fewest cut-offs,
    both rates averaged; for each words source."""
    print("\n=== Recommendation: both rates averaged (cut-offs %, complete p50 / p95 ms) ===")
    rates = sorted(by_rate)
    rows_by_det: dict[str, list[Row]] = defaultdict(list)
    for rate in rates:
        for row in by_rate[rate]:
            rows_by_det[row.det.name].append(row)

    def score(name: str) -> tuple[float, float, float]:
        rows = rows_by_det[name]
        p95s = [_pct(r.cells[("complete", "all")].delays, 0.95) for r in rows]
        return (
            statistics.mean(r.cut for r in rows),
            statistics.mean(r.p50 for r in rows),
            statistics.mean(p95s),
        )

    for words in ("oracle", "decoded", ""):
        names = [d.name for d in DETECTORS if d.judge is not None and (d.judge.words == words)]
        ranked = sorted(names, key=lambda n: score(n)[:2])
        front: list[str] = []
        for n in ranked:
            if not front or score(n)[1] < score(front[-1])[1]:
                front.append(n)
        print(f"\n{words or 'Smart Turn only'}: Pareto front")
        for n in front:
            cut, p50, p95 = score(n)
            print(f"  {n:{NAME_W}s} cut {cut:5.1f}%  complete p50 {p50:5.0f}  p95 {p95:5.0f}")


def _report_signals(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], rates: list[int]
) -> None:
    """Each judge alone at the end of complete utterances and at mid-sentence pauses (the
    judgements of the Smart-Turn-only 200 ms configuration), per voice family: the share
    judged complete at each threshold; the judges' time."""
    det = next(d for d in DETECTORS if d.judge is not None and d.judge.words == "")
    print(f"\n=== The judges alone (pauses of {det.name}) ===")
    print("share judged complete: want high at the end of complete turns, low mid-sentence")
    sts, lms = (0.5, 0.7, 0.9), (-0.8, -1.0, -1.3, -1.6)
    print(
        f"{'where':28s} {'rate':>5s} {'n':>4s} | ST p>= "
        + "".join(f"{t:>5}" for t in sts)
        + " | oracle LM>= "
        + "".join(f"{t:>5}" for t in lms)
        + " | decoded LM>= "
        + "".join(f"{t:>5}" for t in lms)
        + " | no words"
    )
    if not any(d.judge is not None and d.judge.words == "decoded" for d in DETECTORS):
        print("(no configuration read decoded words: PocketSphinx did not run)")

    def share(values: list[float | None], t: float) -> str:
        return f"{100.0 * sum(v is not None and v >= t for v in values) / len(values):5.0f}"

    for rate in rates:
        st_ms: list[float] = []
        decode_ms: list[float] = []
        for fam in FAMILIES:
            finals: list[Judgement] = []
            mids: list[Judgement] = []
            for e, r in zip(entries, results, strict=True):
                if e["kind"] not in TURN_KINDS:
                    continue
                run: Run = r[f"{det.name}@{rate}"]
                if fam == FAMILIES[0]:
                    st_ms += [j.st_ms for j in run.judgements]
                    decode_ms += [j.decode_ms for j in run.judgements]
                if e["family"] != fam:
                    continue
                segs = e["segments"]
                if e["kind"] == "complete":
                    finals += [j for j in run.judgements if j.at >= segs[-1][1]][:1]
                else:
                    mids += [j for j in run.judgements if segs[0][1] <= j.at < segs[1][0]][:1]
            for where, js in (("end of complete", finals), ("mid-sentence pause", mids)):
                if not js:
                    continue
                line = f"{fam + ' ' + where:28s} {rate:5d} {len(js):4d} |        "
                line += "".join(share([j.p for j in js], t) for t in sts)
                line += " |            " + "".join(
                    share([j.oracle_score for j in js], t) for t in lms
                )
                line += " |             " + "".join(
                    share([j.decoded_score for j in js], t) for t in lms
                )
                line += f" | {100.0 * sum(j.decoded_score is None for j in js) / len(js):5.0f}%"
                print(line)
        if st_ms:
            print(
                f"judge time at {rate} Hz: Smart Turn p50 {statistics.median(st_ms):.0f} p95 "
                f"{_pct(st_ms, 0.95):.0f} ms; PocketSphinx decode of the utterance so far p50 "
                f"{statistics.median(decode_ms):.0f} p95 {_pct(decode_ms, 0.95):.0f} ms"
            )


def _report_vad(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], rates: list[int]
) -> None:
    """VAD starts on sounds that are not a turn; how soon a real interruption registers."""
    print("\n=== Caller sounds that are not turns, and interruptions (per VAD) ===")
    print(
        "started: files where the VAD confirmed speech / n; speech ms: median and max length "
        f"of what it took for speech; >= {INTERRUPTION_MIN_SPEECH_MS} ms: long enough to "
        "interrupt whatever the words; onset: true speech start -> caller counted as speaking"
    )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        if e["kind"] in ("backchannel", "interruption"):
            groups[f"{e['kind']} {e['family']}"].append(i)
        elif e["kind"] in ("noise", "silence"):
            groups[f"{e['kind']} {e['voice']}"].append(i)
    print(
        f"{'group':24s} {'rate':>5s} {'vad':7s} {'started':>9s} {'speech ms':>11s} "
        f"{'>=500':>6s} {'onset p50 p95':>14s}"
    )
    for name in sorted(groups):
        for rate in rates:
            for vad in VADS:
                det = next(d for d in DETECTORS if d.vad == vad)
                started, lengths, onsets = 0, [], []
                for i in groups[name]:
                    run: Run = results[i][f"{det.name}@{rate}"]
                    if run.starts:
                        started += 1
                        _, reported = run.starts[0]
                        onsets.append(reported - entries[i]["segments"][0][0])
                    lengths += [end - start for start, end in run.spans]
                long = sum(1 for x in lengths if x >= INTERRUPTION_MIN_SPEECH_MS)
                med = f"{statistics.median(lengths):4.0f} {max(lengths):5.0f}" if lengths else "-"
                onset = _fmt_ms(onsets) if "interruption" in name else ""
                print(
                    f"{name:24s} {rate:5d} {vad:7s} {started:4d}/{len(groups[name]):<4d} "
                    f"{med:>11s} {long:6d} {onset:>14s}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=default_corpus_dir())
    parser.add_argument("--rates", default="8000,16000")
    parser.add_argument("--limit", type=int, default=0, help="every Nth file only (quick run)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the raw per-file results as JSON")
    parser.add_argument(
        "--only", help="these configurations (names, comma-separated) and the baselines"
    )
    args = parser.parse_args()
    if args.only:
        names = {n.strip() for n in args.only.split(",")}
        unknown = names - {d.name for d in DETECTORS}
        if unknown:
            print(f"no such configuration: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 1
        st_only = next(d for d in DETECTORS if d.judge is not None and d.judge.words == "")
        # The workers fork after this: they run the same list.
        DETECTORS[:] = [d for d in DETECTORS if d.name in names or d.judge is None or d is st_only]
    manifest_path = args.corpus / "manifest.json"
    if not manifest_path.exists():
        print(f"no corpus at {args.corpus}: run bench/turn_corpus.py first", file=sys.stderr)
        return 1
    entries: list[dict[str, Any]] = json.loads(manifest_path.read_text())["files"]
    if args.limit > 1:
        entries = entries[:: args.limit]
    rates = [int(r) for r in args.rates.split(",")]
    paths = locate_models(Settings().turn_models_dir)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(
        args.workers, initializer=_init_worker, initargs=(str(paths.silero), str(paths.smart_turn))
    ) as pool:
        futures = [pool.submit(_one_file, e, str(args.corpus), rates) for e in entries]
        results = []
        for n, f in enumerate(futures, 1):
            results.append(f.result())
            if n % 50 == 0:
                print(f"  {n}/{len(entries)} files, {time.perf_counter() - t0:.0f} s", flush=True)
    families: dict[str, int] = defaultdict(int)
    for e in entries:
        families[f"{e['kind']}/{e['family']}"] += 1
    print(
        f"{len(entries)} files from {args.corpus}: "
        + ", ".join(f"{k} {n}" for k, n in sorted(families.items()))
    )
    by_rate = _report_turns(entries, results, rates)
    _recommend(by_rate)
    _report_signals(entries, results, rates)
    _report_vad(entries, results, rates)
    if args.save:
        raw = [
            {"file": e["file"], **{k: vars_of(v) for k, v in r.items()}}
            for e, r in zip(entries, results, strict=True)
        ]
        args.save.write_text(json.dumps(raw))
    return 0


def vars_of(run: Run) -> dict[str, Any]:
    """A run as JSON: where turns ended, the waits given, what the judges said."""
    return {
        "starts": run.starts,
        "ends": run.ends,
        "spans": run.spans,
        "judgements": [vars_of_judgement(j) for j in run.judgements],
        "waits": run.waits,
    }


def vars_of_judgement(j: Judgement) -> dict[str, Any]:
    return {
        "at": j.at,
        "p": j.p,
        "st_ms": j.st_ms,
        "oracle": j.oracle,
        "oracle_score": j.oracle_score,
        "decoded": j.decoded,
        "decoded_score": j.decoded_score,
        "decode_ms": j.decode_ms,
    }


if __name__ == "__main__":
    sys.exit(main())
