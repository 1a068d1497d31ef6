"""Turn-taking fed caller frames with no event loop: the pre-roll reaches the STT before
the speech it precedes, the steps come in the order the session carries them out, and each
utterance keeps its span until its transcript arrives."""

from __future__ import annotations

import numpy as np

from audio.frames import AudioFrame
from gateway.call.turn_taking import (
    CallerSound,
    CallerStarted,
    EndOfTurn,
    JudgeTurn,
    PushAudio,
    TurnStep,
    TurnTaking,
    Utterance,
    UtteranceEnded,
)
from gateway.providers.base import STTStream

RATE = 8000


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _STT:
    """An STT as turn-taking sees it: its input rate and whether it wants every frame."""

    name = "test-stt"

    def __init__(self, *, continuous: bool = False, rate: int = 16000) -> None:
        self.continuous = continuous
        self._rate = rate

    def input_rate(self, transport_rate: int) -> int:
        return self._rate

    async def open_stream(self, *, call_id: str, sample_rate: int) -> STTStream:
        raise NotImplementedError


def _turns(stt: _STT, clock: _Clock) -> TurnTaking:
    return TurnTaking(
        stt,
        rate=RATE,
        min_speech_ms=120,
        end_of_turn=EndOfTurn(pause_ms=400),
        preroll_ms=300,
        clock=clock,
        started_at=clock.now,
    )


def _speech(ms: int) -> list[AudioFrame]:
    t = np.arange(RATE * ms // 1000) / RATE
    voiced = sum((np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 10)), np.zeros_like(t))
    voiced *= 4000
    pcm = voiced.astype(np.int16)
    return [AudioFrame(pcm[i : i + 160], RATE) for i in range(0, len(pcm), 160)]


def _silence(ms: int) -> list[AudioFrame]:
    return [AudioFrame(np.zeros(160, dtype=np.int16), RATE)] * (ms // 20)


def _feed(turns: TurnTaking, frames: list[AudioFrame]) -> list[list[TurnStep]]:
    return [turns.feed(frame) for frame in frames]


def _kinds(steps: list[TurnStep]) -> list[str]:
    return [type(step).__name__ for step in steps]


def test_the_preroll_reaches_the_stt_before_the_speech_it_precedes() -> None:
    clock = _Clock()
    turns = _turns(_STT(), clock)
    # Before the caller speaks nothing goes to the STT: the last 300 ms are kept.
    assert _feed(turns, _silence(500)) == [[]] * 25
    speech = _feed(turns, _speech(1000))
    # Speech is confirmed after 120 ms (six frames); the five before it are kept too. The
    # first sound is announced at once (an agent speaking may pause on it).
    assert speech[:5] == [[CallerSound()]] + [[]] * 4
    started = speech[5]
    assert _kinds(started) == ["PushAudio"] * 15 + ["CallerStarted", "PushAudio"]
    assert started[15] == CallerStarted(at_ms=500.0)
    assert all(
        isinstance(step, PushAudio) and step.frame.rate == 16000
        for step in started[:15] + started[16:]
    )
    assert turns.caller_speaking
    # While the caller speaks each frame goes to the STT as it comes.
    assert all(_kinds(steps) == ["PushAudio"] for steps in speech[6:])


def test_with_40_ms_frames_the_preroll_and_the_onset_span_the_same_time() -> None:
    clock = _Clock()
    turns = _turns(_STT(rate=RATE), clock)
    frames = _speech(400)
    pairs = [np.concatenate([f.pcm for f in frames[i : i + 2]]) for i in range(0, 20, 2)]
    _feed(turns, [AudioFrame(np.zeros(320, dtype=np.int16), RATE)] * 25)
    speech = _feed(turns, [AudioFrame(pcm, RATE) for pcm in pairs])
    # 120 ms of speech: the third frame. The pre-roll is the last frames that cover 300 ms.
    assert speech[:2] == [[CallerSound()], []]
    assert _kinds(speech[2]) == ["PushAudio"] * 8 + ["CallerStarted", "PushAudio"]
    assert speech[2][8] == CallerStarted(at_ms=1000.0)
    kept = [step.frame for step in speech[2][:8] if isinstance(step, PushAudio)]
    assert sum(frame.duration_ms for frame in kept) == 320.0
    assert [bool(frame.pcm.any()) for frame in kept] == [False] * 6 + [True] * 2


def test_the_caller_is_quiet_from_the_end_of_a_turn_to_the_next_sound() -> None:
    clock = _Clock()
    turns = _turns(_STT(), clock)
    quiet = []
    for frame in _silence(200) + _speech(400) + _silence(1000):
        turns.feed(frame)
        quiet.append(turns.caller_quiet)
    # Quiet through the silence; not from the first frame heard (a sound, then speech)
    # through the pause that ends the turn (400 ms); quiet again once it has ended.
    assert quiet[:10] == [True] * 10
    assert quiet[10:49] == [False] * 39
    assert quiet[49:] == [True] * 31


def test_the_utterance_ends_after_the_silence_and_keeps_its_span() -> None:
    clock = _Clock()
    turns = _turns(_STT(), clock)
    _feed(turns, _silence(500) + _speech(1000))
    clock.now = 110.0
    silence = _feed(turns, _silence(1000))
    # The silence up to the end of turn still goes to the STT, then the transcript is owed.
    assert all(_kinds(steps) == ["PushAudio"] for steps in silence[:19])
    assert _kinds(silence[19]) == ["PushAudio", "UtteranceEnded"]
    assert isinstance(silence[19][1], UtteranceEnded)
    assert not turns.caller_speaking
    assert silence[20:] == [[]] * 30
    # Speech ended 400 ms before the VAD could say so; its clock time is dated back.
    utterance = turns.take_utterance()
    assert utterance.start_ms == 500.0 and utterance.end_ms == 1500.0
    assert abs(utterance.ended_at - 109.6) < 1e-9


def test_utterances_wait_for_their_transcripts_in_order() -> None:
    clock = _Clock()
    turns = _turns(_STT(), clock)
    _feed(turns, _silence(500) + _speech(600) + _silence(600) + _speech(400) + _silence(600))
    first, second = turns.take_utterance(), turns.take_utterance()
    assert (first.start_ms, first.end_ms) == (500.0, 1100.0)
    assert (second.start_ms, second.end_ms) == (1700.0, 2100.0)
    # A transcript with no utterance of the VAD's behind it spans the call up to now.
    clock.now = 103.0
    assert turns.take_utterance() == Utterance(0.0, 3000.0, 103.0)


def test_a_continuous_stt_gets_every_frame_and_no_replay() -> None:
    turns = _turns(_STT(continuous=True), _Clock())
    steps = _feed(turns, _silence(500) + _speech(400) + _silence(600))
    assert all(_kinds(s)[-1:] == ["PushAudio"] for s in steps[:25])
    assert _kinds(steps[30]) == ["CallerStarted", "PushAudio"]
    assert _kinds(steps[-11]) == ["PushAudio", "UtteranceEnded"]
    assert sum(_kinds(s).count("PushAudio") for s in steps) == len(steps)


def test_a_continuous_stt_is_told_which_frames_are_quiet() -> None:
    """Quiet: the VAD hears nothing and no utterance is under way (a recogniser may batch
    such audio); the first frame it hears is not, nor is any frame up to the utterance's
    end, its trailing silence included."""
    turns = _turns(_STT(continuous=True), _Clock())
    steps = _feed(turns, _silence(500) + _speech(400) + _silence(1000))
    quiet = [s.quiet for frame_steps in steps for s in frame_steps if isinstance(s, PushAudio)]
    assert len(quiet) == len(steps)
    ended = next(i for i, s in enumerate(steps) if "UtteranceEnded" in _kinds(s))
    assert quiet[:25] == [True] * 25
    assert quiet[25 : ended + 1] == [False] * (ended + 1 - 25)  # heard, speech, its silence
    assert ended < len(steps) - 1 and quiet[ended + 1 :] == [True] * (len(steps) - ended - 1)


def test_a_fallback_stt_is_fed_at_its_own_rate() -> None:
    turns = _turns(_STT(), _Clock())
    turns.use_stt(_STT(rate=RATE))
    assert turns.stt_rate == RATE
    steps = _feed(turns, _silence(300) + _speech(200))
    pushed = [s for frame_steps in steps for s in frame_steps if isinstance(s, PushAudio)]
    assert pushed and all(s.frame.rate == RATE and s.frame.samples == 160 for s in pushed)


COMPLETE, INCOMPLETE = 300, 5000  # the waits verdicts give (5 s: capped at the longest)


def _judged(clock: _Clock) -> TurnTaking:
    """Pauses of 200 ms judged (here: complete ends at 300 ms of silence, not at 1 s)."""
    return TurnTaking(
        _STT(),
        rate=RATE,
        min_speech_ms=120,
        end_of_turn=EndOfTurn(pause_ms=200, judged=True, max_wait_ms=1000),
        preroll_ms=300,
        clock=clock,
        started_at=clock.now,
    )


def _steps_of(steps: list[list[TurnStep]], kind: type) -> list[tuple[int, TurnStep]]:
    return [(i, s) for i, frame in enumerate(steps) for s in frame if isinstance(s, kind)]


def test_a_pause_is_judged_and_a_complete_turn_ends_after_the_short_wait() -> None:
    turns = _judged(_Clock())
    steps = _feed(turns, _silence(200) + _speech(800) + _silence(200))
    [(at, judge)] = _steps_of(steps, JudgeTurn)
    assert at == 59  # after 200 ms of silence (frames 10..49 are the speech)
    assert isinstance(judge, JudgeTurn)
    # The model gets the turn at 16 kHz: its 800 ms, the pause so far and some audio before.
    assert 16000 * 1.0 <= judge.audio.shape[0] <= 16000 * 1.6
    assert turns.caller_speaking  # not over until the model answers
    assert turns.verdict(judge.pause, COMPLETE) == []  # 300 ms not reached yet
    later = _feed(turns, _silence(200))
    [(at, _)] = _steps_of(later, UtteranceEnded)
    assert at == 4  # at 300 ms of silence
    utterance = turns.take_utterance()
    assert (utterance.start_ms, utterance.end_ms) == (200.0, 1000.0)


def test_a_turn_judged_incomplete_waits_and_speech_in_the_pause_continues_it() -> None:
    turns = _judged(_Clock())
    steps = _feed(turns, _silence(200) + _speech(600) + _silence(200))
    [(_, judge)] = _steps_of(steps, JudgeTurn)
    assert isinstance(judge, JudgeTurn)
    assert turns.verdict(judge.pause, INCOMPLETE) == []
    # 700 ms of silence in all: a turn judged incomplete is still open; the caller goes on.
    more = _feed(turns, _silence(500) + _speech(600) + _silence(200))
    assert _steps_of(more, UtteranceEnded) == [] and _steps_of(more, CallerStarted) == []
    [(_, second)] = _steps_of(more, JudgeTurn)
    assert isinstance(second, JudgeTurn) and second.pause == judge.pause + 1
    assert turns.verdict(judge.pause, COMPLETE) == []  # a stale answer is ignored
    assert _kinds(turns.verdict(second.pause, COMPLETE)) == []
    end = _feed(turns, _silence(100))
    assert _steps_of(end, UtteranceEnded)
    utterance = turns.take_utterance()  # one turn, from the first word to the last
    assert (utterance.start_ms, utterance.end_ms) == (200.0, 2100.0)


def test_a_slow_model_never_holds_a_turn_past_the_longest_wait() -> None:
    turns = _judged(_Clock())
    steps = _feed(turns, _silence(200) + _speech(600) + _silence(1000))
    assert len(_steps_of(steps, JudgeTurn)) == 1
    [(at, _)] = _steps_of(steps, UtteranceEnded)
    assert at == 40 + 49  # 1 s of silence after the speech
    assert not turns.caller_speaking


def test_a_hurried_utterance_ends_at_its_first_pause_unjudged() -> None:
    turns = _judged(_Clock())
    _feed(turns, _silence(200) + _speech(300))
    turns.hurry()  # the agent is paused on this utterance (maybe an "uh-huh")
    steps = _feed(turns, _silence(200))
    assert _steps_of(steps, JudgeTurn) == []
    assert len(_steps_of(steps, UtteranceEnded)) == 1
    # The next utterance is judged again.
    steps = _feed(turns, _speech(400) + _silence(200))
    assert len(_steps_of(steps, JudgeTurn)) == 1


def test_an_utterance_no_longer_hurried_is_judged_again() -> None:
    turns = _judged(_Clock())
    _feed(turns, _silence(200) + _speech(300))
    turns.hurry()
    _feed(turns, _speech(300))
    turns.hurry(False)  # it was an interruption: the caller may pause mid-sentence
    steps = _feed(turns, _silence(200))
    assert len(_steps_of(steps, JudgeTurn)) == 1 and _steps_of(steps, UtteranceEnded) == []


def test_a_sound_that_stops_short_of_speech_is_announced_and_withdrawn() -> None:
    turns = _turns(_STT(), _Clock())
    steps = _feed(turns, _silence(200) + _speech(60) + _silence(200))
    kinds = [k for frame in steps for k in _kinds(frame) if k != "PushAudio"]
    assert kinds == ["CallerSound", "SoundGone"]  # a click: never a CallerStarted
    assert not turns.caller_speaking


def test_the_speech_of_an_utterance_stops_counting_when_the_caller_falls_silent() -> None:
    """An "uh-huh" over the agent is measured by its sound, not by the pause after it (which
    the agent waits out before it goes on): only longer speech interrupts by its length."""
    turns = _turns(_STT(), _Clock())
    _feed(turns, _silence(200) + _speech(300))
    assert turns.speech_ms == 300.0
    _feed(turns, _silence(300))  # the pause, before the turn ends
    assert turns.caller_speaking and turns.speech_ms == 300.0
    _feed(turns, _speech(200))  # speech again in the same utterance counts on
    assert turns.speech_ms == 800.0
    _feed(turns, _silence(400))
    assert not turns.caller_speaking and turns.speech_ms == 0.0
