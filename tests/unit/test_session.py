"""CallSession, run by its CallLifecycle, with in-process doubles of their own collaborators
(the carrier's leg and transport, providers, store).

The wire-level proof is tests/integration/test_e2e_twilio.py; these pin the turn-taking
rules: greet first, answer after end of turn, barge-in clears and keeps only what was heard;
and the lifecycle's: the call is finished once, with the first reason given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from audio.frames import FRAME_MS, AudioFrame, samples_per_frame
from gateway.call.config import SessionConfig
from gateway.call.lifecycle import CallEnding, CallLifecycle, CallRuntime, LiveCalls
from gateway.call.writes import WritePolicy
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import ChatMessage, LLMEvent, Providers, Transcript
from gateway.providers.catalog import ProviderCatalog
from gateway.providers.local_agent import LocalScriptedAgent
from gateway.providers.sentence_speech import SentenceConnection
from gateway.settings import Settings
from storage import (
    CallRecord,
    CallStatus,
    Direction,
    Speaker,
    StorageError,
    TurnRecord,
    TurnTakingConfig,
)

RATE = 8000
# The energy VAD and a fixed 400 ms silence: these tests pin the session's rules, not a model.
SILENCE_400 = TurnTakingConfig(
    vad="energy", end_of_turn="silence", silence_ms=400, idle_timeout_s=0
)


class FakeTransport:
    """Plays audio in real time (sped up) and echoes marks, like a phone would; a pause
    holds what is queued until resumed or cleared."""

    sample_rate = RATE

    def __init__(self, session_ref: list[CallLifecycle], speed: float = 5.0) -> None:
        self._session_ref = session_ref
        self._speed = speed
        self.played_samples = 0
        self.clears = 0
        self.pauses = 0
        self.resumes = 0
        self.hung_up = False
        self._queue: asyncio.Queue[int | str] = asyncio.Queue()
        self._playing = asyncio.Event()  # cleared while paused: nothing plays
        self._playing.set()
        self._task = asyncio.create_task(self._playout())
        self._closed = asyncio.Event()

    async def play(self, pcm: npt.NDArray[np.int16]) -> None:
        await self._queue.put(int(pcm.shape[0]))

    async def mark(self, name: str) -> None:
        await self._queue.put(name)

    async def pause(self) -> None:
        self.pauses += 1
        self._playing.clear()

    async def resume(self) -> None:
        self.resumes += 1
        self._playing.set()

    async def clear(self) -> None:
        self.clears += 1
        self._playing.set()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, str):
                self._session_ref[0].on_mark(item)

    async def run(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()

    async def _playout(self) -> None:
        while True:
            await self._playing.wait()
            item = await self._queue.get()
            if isinstance(item, int):
                await asyncio.sleep(item / RATE / self._speed)
                self.played_samples += item
            else:
                self._session_ref[0].on_mark(item)

    async def aclose(self) -> None:
        self._task.cancel()


class ScriptedSTT:
    """Returns the next scripted text for each utterance the session closes."""

    name = "scripted"
    continuous = False
    live_words = True  # its words so far are what its next final says

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.pushed = 0

    def input_rate(self, transport_rate: int) -> int:
        return 16000

    async def open_stream(self, *, call_id: str, sample_rate: int) -> ScriptedSTT:
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        return self

    async def push(self, frame: AudioFrame, *, quiet: bool = False) -> None:
        assert frame.rate == 16000
        self.pushed += 1

    async def end_utterance(self) -> None:
        await self._queue.put(Transcript(self.texts.pop(0) if self.texts else "", True))

    async def words_so_far(self) -> str:
        return self.texts[0] if self.texts else ""

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def aclose(self) -> None:
        await self._queue.put(None)


class ToneTTS:
    """100 ms of tone per word, at 24 kHz, in 20 ms chunks."""

    name = "tone"
    sample_rate = 24000

    def output_rate(self, transport_rate: int) -> int:
        return self.sample_rate

    async def open(self, *, call_id: str, sample_rate: int) -> SentenceConnection:
        return SentenceConnection(lambda text: self.synthesize(text, call_id=call_id))

    async def synthesize(self, text: str, *, call_id: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        samples = 2400 * len(text.split())
        tone = (8000 * np.sin(np.arange(samples) * 0.2)).astype(np.int16)
        for i in range(0, samples, 480):
            await asyncio.sleep(0)
            yield tone[i : i + 480]


class FakeLeg:
    """A carrier's leg: its transport, and hanging up."""

    def __init__(self, transport: FakeTransport) -> None:
        self._transport = transport

    def recording(self) -> None:
        raise AssertionError("these calls are not recorded")

    def transport(self, recording: object) -> FakeTransport:
        return self._transport

    async def close(self, ending: CallEnding) -> None:
        self._transport.hung_up = True


class NoAssistants:
    async def get_any(self, assistant_id: str) -> None:
        return None


class NoOutbox:
    def poke(self, call_id: str) -> None:
        pass


@dataclass
class MemoryStore:
    turns: list[dict[str, object]] = field(default_factory=list)
    finished: list[tuple[CallStatus, str]] = field(default_factory=list)
    latencies: list[dict[str, float]] = field(default_factory=list)
    turns_down: bool = False  # every turn write fails, as with the database away
    turns_wait: asyncio.Event | None = None  # turn writes hang until it is set
    finish_fails: bool = False

    async def add_turn(
        self,
        call_id: str,
        *,
        speaker: Speaker,
        text: str,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
        latency: Mapping[str, float] | None = None,
        turn_id: str | None = None,
        first_attempt: bool = False,
    ) -> TurnRecord:
        if self.turns_wait is not None:
            await self.turns_wait.wait()
        if self.turns_down:
            raise StorageError("database away")
        self.turns.append({"speaker": speaker, "text": text, "interrupted": interrupted})
        if latency is not None:
            self.latencies.append(dict(latency))
        return TurnRecord(
            id="t", call_id=call_id, index=len(self.turns), speaker=speaker, text=text,
            start_ms=start_ms, end_ms=end_ms, interrupted=interrupted, created_at=datetime.now(),
        )  # fmt: skip

    async def finish_call(
        self,
        call_id: str,
        *,
        status: CallStatus,
        end_reason: str,
        ended_at: datetime,
        usage: object = None,
        cost: object = None,
        with_turns: bool = False,
    ) -> CallRecord | None:
        if self.finish_fails:
            raise StorageError("database away")
        self.finished.append((status, end_reason))
        return None

    async def set_served_by(self, call_id: str, gateway_id: str) -> None:
        pass

    async def set_status(
        self, call_id: str, status: CallStatus, *, answered_at: datetime | None = None
    ) -> bool:
        return True


def _call(call_id: str) -> CallRecord:
    return CallRecord(
        id=call_id, org_id=None, transport="test", call_sid="", stream_sid=None,
        from_number="+15550001111", to_number="+15550002222", direction=Direction.INBOUND,
        assistant_id=None, metadata={}, status=CallStatus.RINGING, started_at=datetime.now(),
        ended_at=None, duration_s=None, end_reason=None,
    )  # fmt: skip


async def _answered(
    call_id: str,
    providers: Providers,
    store: MemoryStore,
    ref: list[CallLifecycle],
    transport: FakeTransport,
    metrics: GatewayMetrics | None = None,
    writes: WritePolicy | None = None,
    turn: TurnTakingConfig = SILENCE_400,
) -> CallLifecycle:
    """A call taken and answered by its lifecycle, as a carrier would."""
    runtime = CallRuntime(
        store=store,  # type: ignore[arg-type]
        assistants=NoAssistants(),  # type: ignore[arg-type]
        catalog=ProviderCatalog(Settings(), providers),
        session_config=SessionConfig(turn=turn),
        metrics=metrics or GatewayMetrics(),
        reports=NoOutbox(),
        live=LiveCalls("gw-test"),
        recordings_enabled=False,
        writes=writes or WritePolicy(),
    )
    call = CallLifecycle(runtime, _call(call_id), FakeLeg(transport))
    ref.append(call)
    call.take()
    await call.answer()
    return call


async def _hang_up(call: CallLifecycle) -> None:
    """The caller hangs up; the call is finished once."""
    call.request_end("caller-hung-up")
    await call.finished()


def _speech(ms: int) -> list[np.ndarray]:
    t = np.arange(RATE * ms // 1000) / RATE
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 10)) * 4000
    pcm = voiced.astype(np.int16)
    frame = samples_per_frame(RATE)
    return [pcm[i : i + frame] for i in range(0, len(pcm), frame)]


def _silence(ms: int) -> list[np.ndarray]:
    return [np.zeros(samples_per_frame(RATE), dtype=np.int16)] * (ms // FRAME_MS)


async def _feed(session: CallLifecycle, frames: list[np.ndarray], speed: float = 20.0) -> None:
    for frame in frames:
        await session.on_audio(AudioFrame(frame, RATE))
        await asyncio.sleep(0.02 / speed)


async def _run(
    texts: list[str],
    script: list[tuple[str, int]],
    turn: TurnTakingConfig = SILENCE_400,
    metrics: GatewayMetrics | None = None,
) -> tuple[MemoryStore, FakeTransport]:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore()
    providers = Providers(
        ScriptedSTT(texts), LocalScriptedAgent(greeting="Hello, how can I help?"), ToneTTS()
    )
    session = await _answered(
        "call-1", providers, store, ref, transport, metrics=metrics, turn=turn
    )
    for kind, ms in script:
        await _feed(session, _speech(ms) if kind == "speech" else _silence(ms))
    await _hang_up(session)
    await transport.aclose()
    return store, transport


async def test_greets_then_answers_after_the_caller_stops() -> None:
    store, transport = await _run(
        ["what are your opening hours"],
        [("silence", 3000), ("speech", 1000), ("silence", 8000)],
    )
    assert [t["speaker"] for t in store.turns] == ["agent", "caller", "agent"]
    assert store.turns[0]["text"] == "Hello, how can I help?"
    assert str(store.turns[2]["text"]).startswith("We are open")
    assert not any(t["interrupted"] for t in store.turns)
    assert transport.clears == 0
    assert store.finished == [(CallStatus.COMPLETED, "caller-hung-up")]
    # The answer's latency, measured from the caller's end of speech, stage by stage.
    [latency] = store.latencies
    assert list(latency) == ["stt_final", "llm_first_token", "tts_first_byte", "first_frame_out"]
    stages = list(latency.values())
    assert stages == sorted(stages)
    # Endpointing waits 400 ms of silence (20 ms at 20x); all stages follow within ~1 s.
    assert 0 <= stages[0] < 1000 and stages[-1] < 1500


async def test_barge_in_clears_and_keeps_only_what_was_heard() -> None:
    # Audio plays 5x faster than real time, the caller talks 20x: the caller talks over
    # the 1.7 s booking answer (340 ms here) soon after it starts.
    store, transport = await _run(
        ["i want to book an appointment", "yes please"],
        [("silence", 3000), ("speech", 800), ("silence", 1000), ("speech", 800), ("silence", 8000)],
    )
    assert transport.clears == 1
    interrupted = [t for t in store.turns if t["interrupted"]]
    assert len(interrupted) == 1
    heard = str(interrupted[0]["text"])
    full = "I can book that for you. Our next free slot is tomorrow at ten in the morning."
    assert full.startswith(heard) and len(heard) < len(full)
    speakers = [t["speaker"] for t in store.turns]
    assert speakers == ["agent", "caller", "agent", "caller", "agent"]


BOOKING = "I can book that for you. Our next free slot is tomorrow at ten in the morning."


async def test_an_acknowledgement_over_the_agent_pauses_it_and_it_plays_on() -> None:
    metrics = GatewayMetrics()
    store, transport = await _run(
        ["i want to book an appointment", "uh-huh"],
        [("silence", 3000), ("speech", 800), ("silence", 1000), ("speech", 300), ("silence", 9000)],
        metrics=metrics,
    )
    assert transport.pauses == 1 and transport.resumes == 1 and transport.clears == 0
    assert [t["speaker"] for t in store.turns] == ["agent", "caller", "agent"]  # no "uh-huh"
    assert not any(t["interrupted"] for t in store.turns)
    assert str(store.turns[2]["text"]).startswith(BOOKING)  # the whole answer
    assert (metrics.agent_pauses_total, metrics.agent_resumes_total) == (1, 1)
    assert metrics.agent_interruptions_total == 0


async def test_long_speech_over_the_agent_interrupts_it_whatever_its_words() -> None:
    store, transport = await _run(
        ["i want to book an appointment", "okay okay okay okay"],
        [("silence", 3000), ("speech", 800), ("silence", 1000), ("speech", 900), ("silence", 9000)],
    )
    assert transport.pauses == 1 and transport.clears == 1
    interrupted = [t for t in store.turns if t["interrupted"]]
    assert len(interrupted) == 1 and BOOKING.startswith(str(interrupted[0]["text"]))
    assert [t["speaker"] for t in store.turns][-2:] == ["caller", "agent"]


async def test_an_idle_caller_is_reprompted_then_hung_up_on() -> None:
    turn = SILENCE_400.model_copy(
        update={"idle_timeout_s": 0.2, "idle_max_prompts": 1, "idle_reprompt": "Hello?"}
    )
    store, transport = await _run([], [("silence", 40000)], turn=turn)
    said = [(t["speaker"], t["text"]) for t in store.turns]
    assert said == [
        ("agent", "Hello, how can I help?"),
        ("agent", "Hello?"),
        ("agent", turn.idle_goodbye),
    ]
    assert transport.hung_up
    assert store.finished == [(CallStatus.COMPLETED, "caller-idle")]


async def test_speech_resets_the_idle_count() -> None:
    turn = SILENCE_400.model_copy(update={"idle_timeout_s": 1.0, "idle_max_prompts": 1})
    call, store, transport = await _call_with(ScriptedSTT(["what are your opening hours"]), turn)

    def reprompts() -> int:
        return [t["text"] for t in store.turns].count(turn.idle_reprompt)

    while reprompts() < 1:  # the line stays silent until the agent reprompts
        await _feed(call, _silence(200))
    await _feed(call, _speech(600))
    while not store.finished:  # then silent again: reprompted once more, then hung up on
        await _feed(call, _silence(200))
    await transport.aclose()
    texts = [t["text"] for t in store.turns]
    assert "what are your opening hours" in texts
    assert reprompts() == 2 and texts[-1] == turn.idle_goodbye
    assert store.finished == [(CallStatus.COMPLETED, "caller-idle")]


async def test_keypad_digits_reach_the_agent_as_a_caller_turn() -> None:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore()
    providers = Providers(
        ScriptedSTT([]), LocalScriptedAgent(greeting="Hello, how can I help?"), ToneTTS()
    )
    turn = SILENCE_400.model_copy(update={"keypad_timeout_s": 0.5})
    call = await _answered("call-k", providers, store, ref, transport, turn=turn)
    await _feed(call, _silence(3000))
    for digit in "1234#":
        await call.on_dtmf(digit)
    for digit in "42":  # then a pause ends the entry
        await call.on_dtmf(digit)
    for _ in range(200):
        if sum(t["speaker"] == "agent" for t in store.turns) >= 3:
            break
        await asyncio.sleep(0.05)
    await _hang_up(call)
    await transport.aclose()
    said = [(t["speaker"], t["text"]) for t in store.turns]
    assert ("caller", "[keypad] 1234") in said and ("caller", "[keypad] 42") in said
    assert [speaker for speaker, _ in said] == ["agent", "caller", "agent", "caller", "agent"]


class SlowSTT(ScriptedSTT):
    """A final transcript comes `delay_s` after it is asked for (None: never); interim
    words may be pushed at any time."""

    def __init__(self, texts: list[str], delay_s: float | None) -> None:
        super().__init__(texts)
        self._delay_s = delay_s
        self._pending: set[asyncio.Task[None]] = set()

    async def end_utterance(self) -> None:
        if self._delay_s is None:
            return
        text = self.texts.pop(0) if self.texts else ""

        async def later() -> None:
            await asyncio.sleep(self._delay_s or 0.0)
            await self._queue.put(Transcript(text, True))

        task = asyncio.create_task(later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def interim(self, text: str) -> None:
        self._queue.put_nowait(Transcript(text, False))


class HeldSTT(SlowSTT):
    """A final transcript comes when the test releases it (in order): what the caller said
    is judged exactly when the test says, whatever the machine's load."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__(texts, None)
        self.owed: list[str] = []  # utterances ended, their transcripts not released

    async def end_utterance(self) -> None:
        self.owed.append(self.texts.pop(0) if self.texts else "")

    def release(self) -> None:
        self._queue.put_nowait(Transcript(self.owed.pop(0), True))

    def taken(self) -> bool:
        """True once the session took every released transcript (and acted on it up to its
        next wait: it acts on a transcript as it takes it)."""
        return self._queue.empty()


async def _call_with(
    stt: ScriptedSTT, turn: TurnTakingConfig = SILENCE_400, speed: float = 5.0
) -> tuple[CallLifecycle, MemoryStore, FakeTransport]:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref, speed)
    store = MemoryStore()
    agent = LocalScriptedAgent(greeting="Hello, how can I help?")
    call = await _answered(
        "call-s", Providers(stt, agent, ToneTTS()), store, ref, transport, turn=turn
    )
    return call, store, transport


async def _until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_interim_words_with_no_utterance_do_not_pause_the_agent() -> None:
    stt = SlowSTT([], delay_s=0.0)
    call, store, transport = await _call_with(stt)
    await _until(lambda: transport.played_samples > 0)  # the agent is speaking
    stt.interim("yeah")  # Deepgram heard something the VAD never took for speech
    await _feed(call, _silence(3000))
    await _hang_up(call)
    await transport.aclose()
    assert transport.pauses == 0
    assert store.turns[0] == {
        "speaker": "agent",
        "text": "Hello, how can I help?",
        "interrupted": False,
    }


async def test_a_pause_that_no_words_come_to_decide_ends_and_the_agent_goes_on() -> None:
    call, store, transport = await _call_with(SlowSTT(["i want to book an appointment"], 0.0))
    await _feed(call, _silence(3000) + _speech(800) + _silence(1000))
    silent = await SlowSTT([], None).open_stream(call_id="call-s", sample_rate=16000)
    call.session._stt_stream = silent  # type: ignore[union-attr]
    await _feed(call, _speech(300) + _silence(30000))  # its final transcript never comes
    await _hang_up(call)
    await transport.aclose()
    assert transport.pauses == 1 and transport.resumes == 1 and transport.clears == 0
    assert str(store.turns[-1]["text"]).startswith(BOOKING)
    assert not store.turns[-1]["interrupted"]


async def test_an_acknowledgement_judged_while_the_caller_talks_again_keeps_the_agent_paused() -> (
    None
):
    # Each step waits for the one before (the transcripts come when released, the agent's
    # audio plays in real time): the order is the test's, not the machine's.
    stt = HeldSTT(["i want to book an appointment", "uh-huh", "wait no"])
    call, store, transport = await _call_with(stt, speed=0.5)
    await _feed(call, _silence(3000))
    await _until(lambda: len(store.turns) == 1)  # the greeting, all played
    await _feed(call, _speech(800) + _silence(1000))
    await _until(lambda: len(stt.owed) == 1)
    greeting = transport.played_samples
    stt.release()  # "i want to book an appointment"
    await _until(lambda: transport.played_samples > greeting)  # the answer plays (3.4 s)
    # "uh-huh" over it: the agent pauses; its transcript is owed.
    await _feed(call, _speech(300) + _silence(400))
    await _until(lambda: len(stt.owed) == 1)
    assert transport.pauses == 1 and transport.clears == 0
    # The caller talks again, then "uh-huh" is judged: an acknowledgement, but the caller
    # is speaking, so the agent stays paused.
    await _feed(call, _speech(300))
    stt.release()
    await _until(stt.taken)
    assert transport.resumes == 0 and transport.clears == 0
    # The caller goes on: long speech interrupts the agent; "wait no" is the caller's turn.
    await _feed(call, _speech(8700) + _silence(2000))
    await _until(lambda: len(stt.owed) == 1)
    stt.release()
    await _until(lambda: len(store.turns) >= 5)
    await _hang_up(call)
    await transport.aclose()
    assert transport.resumes == 0  # never played over the caller's second utterance
    assert transport.clears >= 1
    said = [(t["speaker"], t["text"]) for t in store.turns]
    assert [speaker for speaker, _ in said] == ["agent", "caller", "agent", "caller", "agent"]
    assert said[3] == ("caller", "wait no")  # "uh-huh" was no turn
    assert store.turns[-3]["interrupted"]
    assert BOOKING.startswith(str(said[2][1]))


async def test_a_keypad_entry_over_the_agent_stores_its_cut_turn_first() -> None:
    call, store, transport = await _call_with(ScriptedSTT([]))
    await _until(lambda: transport.played_samples > 0)
    await call.on_dtmf("1")
    await call.on_dtmf("#")
    await _until(lambda: len(store.turns) >= 3)
    await _hang_up(call)
    await transport.aclose()
    said = [(t["speaker"], t["text"], t["interrupted"]) for t in store.turns]
    assert said[0][0] == "agent" and said[0][2]  # the greeting, cut
    assert said[1] == ("caller", "[keypad] 1", False)
    assert said[2][0] == "agent" and str(said[2][1]).startswith("We are open")


async def test_agent_hangs_up_after_saying_goodbye() -> None:
    store, transport = await _run(
        ["goodbye"], [("silence", 3000), ("speech", 600), ("silence", 3000)]
    )
    assert transport.hung_up
    assert store.turns[-1]["text"] == "Thank you for calling. Goodbye!"
    assert store.finished == [(CallStatus.COMPLETED, "agent-ended")]


async def test_noise_without_words_gets_no_reply() -> None:
    store, _ = await _run([""], [("silence", 3000), ("speech", 600), ("silence", 3000)])
    assert [t["speaker"] for t in store.turns] == ["agent"]


class FlakyAgent:
    """Fails its first `failures` replies to the caller, then answers like the local agent."""

    name = "flaky"

    def __init__(self, failures: int, *, retryable: bool = True) -> None:
        self._failures = failures
        self._retryable = retryable
        self._agent = LocalScriptedAgent(greeting="Hello, how can I help?")
        self.calls = 0

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        if any(m.role == "user" for m in history):
            self.calls += 1
            if self.calls <= self._failures:
                raise ProviderError(
                    "upstream 503", provider=self.name, status=503 if self._retryable else 400
                )
        async for event in self._agent.respond(history, call_id=call_id):
            yield event


async def _run_with_agent(agent: FlakyAgent) -> MemoryStore:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore()
    providers = Providers(ScriptedSTT(["what are your hours"]), agent, ToneTTS())
    session = await _answered("call-2", providers, store, ref, transport)
    for kind, ms in [("silence", 3000), ("speech", 800), ("silence", 12000)]:
        await _feed(session, _speech(ms) if kind == "speech" else _silence(ms))
    await _hang_up(session)
    await transport.aclose()
    return store


async def test_a_failed_agent_is_retried_once() -> None:
    agent = FlakyAgent(failures=1)
    store = await _run_with_agent(agent)
    assert agent.calls == 2
    assert str(store.turns[-1]["text"]).startswith("We are open")


async def test_an_agent_that_keeps_failing_gets_an_apology_not_silence() -> None:
    for agent in (FlakyAgent(failures=5), FlakyAgent(failures=5, retryable=False)):
        store = await _run_with_agent(agent)
        assert store.turns[-1] == {
            "speaker": "agent",
            "text": SessionConfig().apology,
            "interrupted": False,
        }
        assert store.finished == [(CallStatus.COMPLETED, "caller-hung-up")]
    assert agent.calls == 1  # a final (4xx) error is not retried


class BrokenTTS(ToneTTS):
    """Starts speaking, then its connection drops (after `good_chunks` chunks)."""

    name = "broken-tts"

    def __init__(self, good_chunks: int = 2) -> None:
        self._good_chunks = good_chunks
        self.attempts = 0

    async def synthesize(self, text: str, *, call_id: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        self.attempts += 1
        n = 0
        async for chunk in super().synthesize(text, call_id=call_id):
            if n == self._good_chunks:
                raise ProviderError("socket dropped", provider=self.name)
            n += 1
            yield chunk


async def test_a_tts_that_drops_mid_turn_gives_way_to_the_fallback_apology() -> None:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore()
    metrics = GatewayMetrics()
    broken = BrokenTTS()
    providers = Providers(
        ScriptedSTT([]), LocalScriptedAgent(greeting="Hello, how can I help?"), broken,
        fallback_tts=ToneTTS(),
    )  # fmt: skip
    session = await _answered("call-3", providers, store, ref, transport, metrics)
    await _feed(session, _silence(8000))
    await _hang_up(session)
    await transport.aclose()
    # The greeting started playing, so it is not retried: the apology follows at once,
    # spoken by the fallback TTS, and the call goes on.
    assert broken.attempts == 1
    [turn] = store.turns
    assert str(turn["text"]).endswith(SessionConfig().apology)
    assert metrics.provider_failures == {"broken-tts": 1}
    assert store.finished == [(CallStatus.COMPLETED, "caller-hung-up")]


def _tone(text: str) -> int:
    """The samples at RATE that ToneTTS plays for `text` (100 ms a word), less a resampler's
    margin."""
    return len(text.split()) * RATE // 10 - 100


async def test_a_database_that_stays_away_ends_the_call_politely() -> None:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore(turns_down=True)
    metrics = GatewayMetrics()
    providers = Providers(
        ScriptedSTT(["what are your opening hours"]),
        LocalScriptedAgent(greeting="Hello, how can I help?"),
        ToneTTS(),
    )
    # The database hangs (writes in flight, none failed yet) while the caller talks; then it
    # refuses, and after `outage_s` of refusals the call ends. Each step waits for the one
    # before: the outage is timed from the first refusal, after the agent answered.
    store.turns_wait = asyncio.Event()
    policy = WritePolicy(attempt_timeout_s=60, outage_s=1.0, retry_base_s=0.05)
    call = await _answered("call-1", providers, store, ref, transport, metrics, policy)
    await _feed(call, _silence(3000))
    await _until(lambda: transport.played_samples >= _tone("Hello, how can I help?"))
    # The caller talks; the agent answers although nothing is stored.
    await _feed(call, _speech(1000) + _silence(1000))
    answered = _tone("Hello, how can I help? We are open from nine to five, Monday to Friday.")
    await _until(lambda: transport.played_samples >= answered)
    before = transport.played_samples
    store.turns_wait.set()  # now it refuses every write
    await asyncio.wait_for(call.finished(), 30)
    await transport.aclose()
    assert store.finished == [(CallStatus.FAILED, "storage-unavailable")]
    assert transport.hung_up and store.turns == []
    # The goodbye was played after the answer: all of it.
    goodbye = call._rt.outage_goodbye
    assert transport.played_samples - before >= _tone(goodbye)
    assert metrics.calls_active == 0


class BrokenTransport(FakeTransport):
    def close(self) -> None:
        super().close()
        raise RuntimeError("the transport is broken")


async def test_each_step_of_the_end_runs_when_one_before_it_fails() -> None:
    ref: list[CallLifecycle] = []
    transport = BrokenTransport(ref)
    store = MemoryStore(finish_fails=True)
    metrics = GatewayMetrics()
    providers = Providers(
        ScriptedSTT([]), LocalScriptedAgent(greeting="Hello, how can I help?"), ToneTTS()
    )
    policy = WritePolicy(attempt_timeout_s=0.5, outage_s=0.3, retry_base_s=0.05)
    call = await _answered("call-1", providers, store, ref, transport, metrics, policy)
    live = call._rt.live
    await _feed(call, _silence(600))
    await _hang_up(call)  # the transport's close raises, then the final write fails
    await transport.aclose()
    assert transport.hung_up  # the leg was closed all the same
    assert store.finished == [] and [t["speaker"] for t in store.turns] == ["agent"]
    assert metrics.calls_active == 0 and not live.serving("call-1")
