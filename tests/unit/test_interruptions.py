"""The small rules of turn-taking: which words over the agent interrupt it, how keypad
digits become one entry, and when an idle caller is prompted."""

from __future__ import annotations

import asyncio

import pytest

from gateway.call.idle import IdleCaller
from gateway.call.interruptions import InterruptionPolicy
from gateway.call.keypad import KeypadEntry, keypad_text
from storage import TurnTakingConfig


@pytest.fixture
def policy() -> InterruptionPolicy:
    return InterruptionPolicy(TurnTakingConfig().backchannel_words, min_speech_ms=500)


@pytest.mark.parametrize(
    "text",
    ["uh-huh", "Uh huh.", "yeah", "Okay", "ok ok", "right, right", "mm-hmm", "mhmm", "I see", ""],
)
def test_acknowledgements_and_silence_do_not_interrupt(
    policy: InterruptionPolicy, text: str
) -> None:
    assert not policy.interrupts(text)


@pytest.mark.parametrize(
    "text", ["wait", "no", "stop", "okay but what about Friday", "yeah no", "hold on", "see", "да"]
)
def test_any_other_word_interrupts(policy: InterruptionPolicy, text: str) -> None:
    assert policy.interrupts(text)


@pytest.mark.parametrize("text", ["I", "all", "got", "okay i"])
def test_words_still_being_heard_may_be_the_start_of_an_acknowledgement(
    policy: InterruptionPolicy, text: str
) -> None:
    assert not policy.interrupts(text, final=False)  # "I" of "I see", "all" of "all right"
    assert policy.interrupts(text)  # but a final "I" is a word of its own


def test_the_list_is_the_assistants() -> None:
    custom = InterruptionPolicy(["jawohl", "genau", "ja ja", "да"], min_speech_ms=500)
    assert not custom.interrupts("Genau, jawohl") and not custom.interrupts("Да!")
    assert custom.interrupts("okay") and not custom.interrupts("ja", final=False)


def test_keypad_digits_end_at_the_terminator_or_the_length() -> None:
    entry = KeypadEntry(max_digits=4)
    assert [entry.press(d) for d in "12#"] == [None, None, "12"]
    assert [entry.press(d) for d in "98765"] == [None, None, None, "9876", None]
    assert entry.pending and entry.flush() == "5"  # the caller paused
    assert entry.press("#") == "#"  # "press pound to continue"
    assert entry.press("x") is None and not entry.pending
    assert keypad_text("1234") == "[keypad] 1234"


async def test_an_idle_caller_is_told_after_the_timeout_each_time() -> None:
    fired: list[int] = []
    told = asyncio.Event()

    def on_idle(spell: int) -> None:
        fired.append(spell)
        idle.prompted()  # the session said a reprompt
        told.set()

    async def next_spell() -> None:
        told.clear()
        idle.agent_finished()
        await asyncio.wait_for(told.wait(), 10)

    idle = IdleCaller(timeout_s=0.05, max_prompts=2, on_idle=on_idle)
    await next_spell()
    assert fired == [1]
    idle.agent_finished()
    idle.caller_active()  # a sound: the timer is gone, no prompt this time
    await next_spell()
    assert fired == [1, 2]
    idle.caller_turn()  # the caller spoke: the count starts again
    await next_spell()
    assert fired == [1, 2, 1]
    idle.stop()


async def test_a_zero_timeout_never_prompts() -> None:
    fired: list[int] = []
    idle = IdleCaller(timeout_s=0, max_prompts=2, on_idle=fired.append)
    idle.agent_finished()
    assert idle._timer is None and fired == []  # no timer is armed at all
