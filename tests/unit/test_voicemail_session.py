"""A screened outbound call, run by its lifecycle with the in-process doubles of
tests/unit/test_session.py: no greeting before a verdict, the callee's words go to the
gate's listeners (never a turn), a machine gets the message (filled) then the call ends
`voicemail`, a person is greeted once the verdict came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pytest

from gateway.call.config import SessionConfig
from gateway.call.lifecycle import CallLifecycle, CallRuntime, LiveCalls
from gateway.call.session import CallSession
from gateway.call.voicemail import CalleeVerdict, GateOutcome, VoicemailBounds, VoicemailGate
from gateway.metrics import GatewayMetrics
from gateway.providers.base import Providers
from gateway.providers.catalog import ProviderCatalog
from gateway.providers.local_agent import LocalScriptedAgent
from gateway.settings import Settings
from storage import (
    AssistantConfig,
    AssistantRecord,
    CallRecord,
    CallStatus,
    Direction,
    VoicemailPlan,
)
from tests.unit.test_session import (
    SILENCE_400,
    FakeLeg,
    FakeTransport,
    MemoryStore,
    NoOutbox,
    ScriptedSTT,
    ToneTTS,
    _feed,
    _silence,
    _speech,
)

METRICS = GatewayMetrics()  # of every call here
PLAN = VoicemailPlan(action="leave_message", message="Hi {{customer}}, call Acme back.")


class OneAssistant:
    def __init__(self, plan: VoicemailPlan) -> None:
        config = AssistantConfig(
            name="a", system_prompt="p", turn_taking=SILENCE_400, voicemail=plan
        )
        now = datetime.now(UTC)
        self.record = AssistantRecord("asst", "org", config, now, now)

    async def get_any(self, assistant_id: str) -> AssistantRecord:
        return self.record


class Ears:
    def __init__(self) -> None:
        self.words: list[str] = []

    def on_audio(self, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
        pass

    def on_transcript(self, text: str, final: bool) -> None:
        self.words.append(text)


async def _until(check: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _screened(
    texts: list[str], plan: VoicemailPlan = PLAN
) -> tuple[CallLifecycle, VoicemailGate, MemoryStore, FakeTransport, Ears]:
    ref: list[CallLifecycle] = []
    transport = FakeTransport(ref)
    store = MemoryStore()
    providers = Providers(
        ScriptedSTT(texts), LocalScriptedAgent(greeting="Hello Dana, this is Acme."), ToneTTS()
    )
    runtime = CallRuntime(
        store=store,  # type: ignore[arg-type]
        assistants=OneAssistant(plan),  # type: ignore[arg-type]
        catalog=ProviderCatalog(Settings(), providers),
        session_config=SessionConfig(turn=SILENCE_400),
        metrics=METRICS,
        reports=NoOutbox(),
        live=LiveCalls("gw-test"),
        recordings_enabled=False,
        voicemail=VoicemailBounds(decision_timeout_s=30, message_end_timeout_s=30),
    )
    call = CallRecord(
        id="call-vm", org_id="org", transport="test", call_sid="", stream_sid=None,
        from_number="+15550001111", to_number="+15550002222", direction=Direction.OUTBOUND,
        assistant_id="asst", metadata={"customer": "Dana"}, status=CallStatus.QUEUED,
        started_at=datetime.now(UTC), ended_at=None, duration_s=None, end_reason=None,
    )  # fmt: skip
    lifecycle = CallLifecycle(runtime, call, FakeLeg(transport))
    ref.append(lifecycle)
    lifecycle.take()
    await lifecycle.answer()
    gate = lifecycle.callee_gate
    assert gate is not None
    ears = Ears()
    gate.add_listener(ears)
    return lifecycle, gate, store, transport, ears


async def test_a_machine_hears_the_message_after_its_greeting_then_the_call_ends() -> None:
    call, gate, store, transport, ears = await _screened(["hi you have reached Sam"])
    # A second of line noise first: the energy VAD learns its floor from it.
    await _feed(call, _silence(1000) + _speech(1500) + _silence(600))
    await _until(lambda: ears.words == ["hi you have reached Sam"])
    await _feed(call, _silence(400))
    assert transport.played_samples == 0 and store.turns == []  # nothing said, no turn
    gate.verdict(CalleeVerdict.MACHINE)
    await _feed(call, _speech(400))  # the beep: no interruption, no turn
    assert transport.played_samples == 0
    gate.verdict(CalleeVerdict.MACHINE_DONE)
    await asyncio.wait_for(call.finished(), 10)
    assert store.finished == [(CallStatus.COMPLETED, "voicemail")]
    assert store.turns == [
        {"speaker": "agent", "text": "Hi Dana, call Acme back.", "interrupted": False}
    ]
    assert transport.played_samples > 0 and transport.clears == 0
    assert METRICS.screened_messages_left_total >= 1
    await transport.aclose()


async def test_hang_up_on_a_machine_says_nothing() -> None:
    call, gate, store, transport, _ = await _screened([], VoicemailPlan(action="hangup"))
    gate.verdict(CalleeVerdict.MACHINE)
    await asyncio.wait_for(call.finished(), 10)
    assert store.finished == [(CallStatus.COMPLETED, "voicemail")]
    assert store.turns == [] and transport.played_samples == 0
    await transport.aclose()


async def test_a_person_is_greeted_after_the_verdict_and_hello_is_no_turn() -> None:
    call, gate, store, transport, ears = await _screened(["hello", "what is this about"])
    await _feed(call, _silence(1000) + _speech(500) + _silence(600))
    await _until(lambda: ears.words == ["hello"])
    assert transport.played_samples == 0
    gate.verdict(CalleeVerdict.HUMAN)
    await _until(lambda: len(store.turns) == 1)
    assert store.turns[0]["text"] == "Hello Dana, this is Acme."
    await _feed(call, _speech(600) + _silence(600))  # now a turn, answered
    await _until(lambda: len(store.turns) >= 3)
    assert [t["speaker"] for t in store.turns[:3]] == ["agent", "caller", "agent"]
    assert store.turns[1]["text"] == "what is this about"
    assert ears.words == ["hello"]  # decided: the listeners hear no more
    call.request_end("caller-hung-up")
    await call.finished()
    assert store.finished == [(CallStatus.COMPLETED, "caller-hung-up")]
    await transport.aclose()


async def test_screening_that_fails_greets_rather_than_staying_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gate's wait raised (a bug, a poll error nobody foresaw): logged, the callee is
    taken for a person, greeted, and their words are turns again."""

    async def broken(self: VoicemailGate) -> GateOutcome:
        raise RuntimeError("screening broke")

    monkeypatch.setattr(VoicemailGate, "outcome", broken)
    call, gate, store, transport, _ = await _screened(["what is this about"])
    await _until(lambda: len(store.turns) == 1)
    assert store.turns[0]["text"] == "Hello Dana, this is Acme."
    assert gate.decision is CalleeVerdict.UNKNOWN
    await _feed(call, _silence(1000) + _speech(600) + _silence(600))
    await _until(lambda: len(store.turns) >= 3)
    assert store.turns[1] == {
        "speaker": "caller",
        "text": "what is this about",
        "interrupted": False,
    }
    call.request_end("caller-hung-up")
    await call.finished()
    await transport.aclose()


async def test_acting_on_the_screening_that_fails_ends_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: CallSession) -> None:
        raise RuntimeError("greeting broke")

    monkeypatch.setattr(CallSession, "greet", broken)
    call, gate, store, transport, _ = await _screened([])
    gate.verdict(CalleeVerdict.HUMAN)
    await asyncio.wait_for(call.finished(), 10)
    assert store.finished == [(CallStatus.FAILED, "agent-error")]
    await transport.aclose()
