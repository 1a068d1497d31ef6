"""Offline end-of-turn benchmark: the gateway's turn-taking on the synthetic corpus, no gateway.

    python bench/turn_bench.py [--corpus DIR] [--rates 8000,16000] [--limit N] [--workers N]

The corpus comes from bench/turn_corpus.py (default: the per-user cache). Each file is fed
in 20 ms frames, at 8 kHz (the Twilio path: mu-law, band-limited) and at 16 kHz, through the
call core's own `TurnTaking` (gateway/call/turn_taking.py: Endpointer, pauses, turn-model
verdicts and waits) with the VAD and end-of-turn of each configuration. A JudgeTurn is
answered by Smart Turn (audio/smart_turn.py) and the verdict is handed back only after the
inference time it took here, as the session's thread would. Reported per configuration:

- complete utterances: delay from the true end of speech (known from synthesis) to the frame
  at which the turn ended, p50/p95, and how many turns ended before the speech did;
- mid-sentence pauses (300-900 ms after an incomplete first part): cut-offs, i.e. the turn
  ended before the caller finished, by voice family and by pause length;
- Smart Turn's verdicts: share of complete utterances judged complete, of pauses judged so;
- per VAD: backchannels, noises, interruptions and silent lines that the VAD took for speech
  at all, how long (500 ms of speech interrupts the agent whatever its words), and
  how soon after true speech start the caller counted as speaking (the agent's pause).

Frames are fed as fast as the CPU allows; times are positions on the audio timeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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

from audio.frames import AudioFrame
from audio.models import locate_models
from audio.silero import SileroModel
from audio.smart_turn import SmartTurnModel
from audio.vad import EnergyVAD, FrameClassifier
from bench.turn_corpus import default_corpus_dir, read_wav
from gateway.call.turn_taking import (
    CallerStarted,
    EndOfTurn,
    JudgeTurn,
    TurnTaking,
    UtteranceEnded,
)
from gateway.providers.base import STTStream
from gateway.settings import Settings

PCM = npt.NDArray[np.int16]
FRAME_MS = 20
COMPLETE_THRESHOLD = 0.5  # as gateway/call/session.py
MIN_SPEECH_MS = 120  # the assistant default
INTERRUPTION_MIN_SPEECH_MS = 500  # the assistant default: this long interrupts whatever said
FAMILIES = ("espeak", "festival", "human")


@dataclass(frozen=True, slots=True)
class Detector:
    """One configuration: a VAD and an end-of-turn rule."""

    name: str
    vad: str  # "energy" | "silero"
    end: EndOfTurn
    threshold: float = COMPLETE_THRESHOLD  # Smart Turn probability that counts as complete


def silence(vad: str, ms: int) -> Detector:
    return Detector(f"{vad} + silence {ms}", vad, EndOfTurn(pause_ms=ms))


def smart(
    vad: str, pause: int, complete: int, incomplete: int, threshold: float = COMPLETE_THRESHOLD
) -> Detector:
    at = "" if threshold == COMPLETE_THRESHOLD else f" p>={threshold}"
    return Detector(
        f"{vad} + smart-turn {pause}/{complete}/{incomplete}{at}",
        vad,
        EndOfTurn(pause, judged=True, complete_wait_ms=complete, incomplete_wait_ms=incomplete),
        threshold,
    )


DETECTORS = [
    silence("energy", 600),  # today's gateway
    *(silence("silero", ms) for ms in (200, 300, 400, 500, 600, 800, 1000)),
    smart("silero", 200, 200, 1000),
    smart("silero", 200, 200, 1500),
    smart("silero", 200, 200, 2500),
    smart("silero", 200, 300, 1500),
    smart("silero", 300, 300, 1500),
    smart("silero", 150, 150, 1500),
    smart("silero", 200, 500, 1500),
    smart("silero", 200, 200, 1500, 0.8),
    smart("silero", 200, 200, 2000, 0.9),
    smart("silero", 200, 400, 2000, 0.8),
    smart("energy", 200, 200, 1500),
]
VADS = ("energy", "silero")


class _NoSTT:
    """The TurnTaking's STT: the bench sends no audio anywhere."""

    name = "none"
    continuous = True

    def input_rate(self, transport_rate: int) -> int:
        return transport_rate

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
    verdicts: list[tuple[float, float]] = field(default_factory=list)  # (speech end, p)
    infer_ms: list[float] = field(default_factory=list)


class _Worker:
    """Per-process state: the models, loaded once."""

    silero: SileroModel
    turn: SmartTurnModel


_W = _Worker()


def _init_worker(silero_path: str, turn_path: str) -> None:
    _W.silero = SileroModel.load(Path(silero_path))
    _W.turn = SmartTurnModel.load(Path(turn_path))


def _frames(pcm: PCM, rate: int) -> Iterator[PCM]:
    step = rate * FRAME_MS // 1000
    for i in range(0, pcm.size - step + 1, step):
        yield pcm[i : i + step]


def _decisions(vad: FrameClassifier, pcm: PCM, rate: int) -> list[bool]:
    return [vad.is_speech(f) for f in _frames(pcm, rate)]


def _drive(
    det: Detector,
    decisions: list[bool],
    pcm: PCM,
    rate: int,
    judged: dict[str, tuple[float, float]],
) -> Run:
    """Feed the file through TurnTaking as the session does; answer JudgeTurn with Smart
    Turn after the time its inference took (cached per turn audio across detectors)."""
    turns = TurnTaking(
        _NoSTT(),
        rate=rate,
        min_speech_ms=MIN_SPEECH_MS,
        end_of_turn=det.end,
        preroll_ms=300,
        clock=lambda: 0.0,
        started_at=0.0,
        vad=_Replay(decisions),
    )
    run = Run()
    pending: list[tuple[float, int, bool]] = []  # (due at ms, pause, complete)
    position = 0.0
    for frame in _frames(pcm, rate):
        position += FRAME_MS
        steps = turns.feed(AudioFrame(frame, rate))
        while pending and pending[0][0] <= position:
            _, pause, complete = pending.pop(0)
            steps += turns.verdict(pause, complete)
        for step in steps:
            if isinstance(step, CallerStarted):
                run.starts.append((step.at_ms, position))
            elif isinstance(step, UtteranceEnded):
                run.ends.append(position)
                u = turns.take_utterance()
                run.spans.append((u.start_ms, u.end_ms))
            elif isinstance(step, JudgeTurn):
                key = hashlib.blake2b(step.audio.tobytes(), digest_size=16).hexdigest()
                if key not in judged:
                    t0 = time.perf_counter()
                    p = _W.turn.completion_probability(step.audio)
                    judged[key] = (p, 1000.0 * (time.perf_counter() - t0))
                p, ms = judged[key]
                run.verdicts.append((position, p))
                run.infer_ms.append(ms)
                pending.append((position + ms, step.pause, p >= det.threshold))
    return run


def _one_file(entry: dict[str, Any], corpus: str, rates: list[int]) -> dict[str, Any]:
    """Every detector on one file at each rate."""
    out: dict[str, Any] = {}
    for rate in rates:
        pcm, file_rate = read_wav(Path(corpus) / f"{rate // 1000}k" / entry["file"])
        assert file_rate == rate
        decisions = {
            "energy": _decisions(EnergyVAD(), pcm, rate),
            "silero": _decisions(_W.silero.stream(rate), pcm, rate),
        }
        judged: dict[str, tuple[float, float]] = {}
        for det in DETECTORS:
            out[f"{det.name}@{rate}"] = _drive(det, decisions[det.vad], pcm, rate, judged)
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
    judged_complete: int = 0
    judged: int = 0


def _tally(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], key: str, threshold: float
) -> dict[tuple[str, str], Cell]:
    """Cells keyed by (kind, group) where group is 'all', a family, or a pause length."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for entry, result in zip(entries, results, strict=True):
        kind = entry["kind"]
        if kind not in ("complete", "pause"):
            continue
        run: Run = result[key]
        segments = entry["segments"]
        speech_end = segments[-1][1]
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
            if run.verdicts:
                if kind == "complete":
                    # The verdict on the final pause (after all speech).
                    finals = [p for at, p in run.verdicts if at >= speech_end]
                    if finals:
                        cell.judged += 1
                        cell.judged_complete += finals[0] >= threshold
                else:
                    mid = [p for at, p in run.verdicts if segments[0][1] <= at < segments[1][0]]
                    if mid:
                        cell.judged += 1
                        cell.judged_complete += mid[0] >= threshold
    return cells


def _report_turns(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], rates: list[int]
) -> None:
    groups = ["all", *FAMILIES]
    for rate in rates:
        print(f"\n=== End of turn at {rate} Hz ===")
        print(
            "complete: delay after the true end of speech, p50 p95 ms [early/n]; "
            "pause: cut-offs % [cut/n]; ST: share judged complete (final pause on complete "
            "utterances / mid-sentence pause)"
        )
        head = f"{'detector':40s}"
        for g in groups:
            head += f" | {'complete ' + g:>24s}"
        for g in groups:
            head += f" | {'cut ' + g:>14s}"
        print(head + " | ST complete/mid")
        for det in DETECTORS:
            cells = _tally(entries, results, f"{det.name}@{rate}", det.threshold)
            line = f"{det.name:40s}"
            for g in groups:
                c = cells[("complete", g)]
                line += f" | {_fmt_ms(c.delays)} [{c.early + c.missed:2d}/{c.n:3d}]"
            for g in groups:
                c = cells[("pause", g)]
                pct = 100.0 * c.cut / c.n if c.n else 0.0
                line += f" | {pct:5.1f}% [{c.cut:3d}/{c.n:3d}]"
            if det.end.judged:
                c, m = cells[("complete", "all")], cells[("pause", "all")]
                line += (
                    f" | {100 * c.judged_complete / max(1, c.judged):3.0f}% /"
                    f" {100 * m.judged_complete / max(1, m.judged):3.0f}%"
                )
            print(line)
        print(f"\ncut-offs by pause length at {rate} Hz, % (espeak / festival / human)")
        pauses = sorted({e["pause_ms"] for e in entries if e["kind"] == "pause"})
        print(f"{'detector':40s}" + "".join(f" | {str(p) + ' ms':>20s}" for p in pauses))
        for det in DETECTORS:
            cells = _tally(entries, results, f"{det.name}@{rate}", det.threshold)
            line = f"{det.name:40s}"
            for p in pauses:
                parts = []
                for fam in FAMILIES:
                    c = cells[("pause", f"{fam} {p} ms")]
                    parts.append(f"{100.0 * c.cut / c.n:4.0f}" if c.n else "   -")
                line += " | " + " /".join(parts) + "  "
            print(line)
        infer = [ms for r in results for x in r.values() for ms in x.infer_ms]
        if infer:
            print(
                f"Smart Turn inference here: p50 {statistics.median(infer):.0f} ms, "
                f"p95 {_pct(infer, 0.95):.0f} ms (n {len(infer)})"
            )


def _report_probabilities(
    entries: list[dict[str, Any]], results: list[dict[str, Any]], rates: list[int]
) -> None:
    """Smart Turn's probability at the end of complete utterances and at mid-sentence
    pauses: the share at or above each threshold, per voice family."""
    det = smart("silero", 200, 200, 1500)
    thresholds = (0.5, 0.7, 0.8, 0.9)
    print(
        f"\n=== Smart Turn probability (judged after {det.end.pause_ms} ms of Silero silence) ==="
    )
    print("share of judgements at or above each threshold: want high on complete, low on mid")
    print(
        f"{'where':28s} {'rate':>5s} {'n':>4s} {'p50':>5s}"
        + "".join(f" {t:>6}" for t in thresholds)
    )
    for rate in rates:
        for fam in FAMILIES:
            finals: list[float] = []
            mids: list[float] = []
            for e, r in zip(entries, results, strict=True):
                if e["family"] != fam or e["kind"] not in ("complete", "pause"):
                    continue
                run: Run = r[f"{det.name}@{rate}"]
                segs = e["segments"]
                if e["kind"] == "complete":
                    finals += [p for at, p in run.verdicts if at >= segs[-1][1]][:1]
                else:
                    mids += [p for at, p in run.verdicts if segs[0][1] <= at < segs[1][0]][:1]
            for where, ps in (("end of complete", finals), ("mid-sentence pause", mids)):
                if not ps:
                    continue
                shares = "".join(
                    f" {100.0 * sum(p >= t for p in ps) / len(ps):5.0f}%" for t in thresholds
                )
                print(
                    f"{fam + ' ' + where:28s} {rate:5d} {len(ps):4d} "
                    f"{statistics.median(ps):5.2f}{shares}"
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
    args = parser.parse_args()
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
            if n % 100 == 0:
                print(f"  {n}/{len(entries)} files, {time.perf_counter() - t0:.0f} s", flush=True)
    families: dict[str, int] = defaultdict(int)
    for e in entries:
        families[f"{e['kind']}/{e['family']}"] += 1
    print(
        f"{len(entries)} files from {args.corpus}: "
        + ", ".join(f"{k} {n}" for k, n in sorted(families.items()))
    )
    _report_turns(entries, results, rates)
    _report_probabilities(entries, results, rates)
    _report_vad(entries, results, rates)
    if args.save:
        raw = [
            {"file": e["file"], **{k: vars_of(v) for k, v in r.items()}}
            for e, r in zip(entries, results, strict=True)
        ]
        args.save.write_text(json.dumps(raw))
    return 0


def vars_of(run: Run) -> dict[str, Any]:
    return {
        "starts": run.starts,
        "ends": run.ends,
        "spans": run.spans,
        "verdicts": run.verdicts,
        "infer_ms": run.infer_ms,
    }


if __name__ == "__main__":
    sys.exit(main())
