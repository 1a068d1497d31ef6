"""A deterministic local responder used in place of an LLM when no LLM is configured.

It is not a language model: it matches a few keywords and streams a canned reply word by
word, so the whole call path (streaming, sentences, barge-in, hang-up) runs with no keys.
Keypad entries (caller turns `[keypad] 1234`) go through a small digit menu: a lone 1 is
the opening hours, 2 a booking, 0 a person; any other entry is read back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.providers.base import KEYPAD_PREFIX, ChatMessage, HangUp, LLMEvent, TextDelta


@dataclass(frozen=True, slots=True)
class _Rule:
    keywords: tuple[str, ...]
    reply: str
    hang_up: bool = False


_RULES: tuple[_Rule, ...] = (
    _Rule(("goodbye", "bye", "that's all", "that is all"), "Thank you for calling. Goodbye!", True),
    _Rule(("hour", "open", "close"), "We are open from nine to five, Monday to Friday."),
    _Rule(
        ("appointment", "book", "schedule"),
        "I can book that for you. Our next free slot is tomorrow at ten in the morning. "
        "Shall I reserve it?",
    ),
    _Rule(("person", "human", "agent", "someone"), "Sure. Let me note that you want a call back."),
    _Rule(("price", "cost", "much"), "A standard visit costs forty dollars."),
    _Rule(("yes", "correct", "please"), "Great, that is done. Is there anything else?"),
    _Rule(("no", "nothing"), "All right. Say goodbye whenever you are ready to end the call."),
)

# The digit menu of keypad entries (a lone digit).
_MENU: dict[str, str] = {"1": "hour", "2": "book", "0": "person"}

_FALLBACK = (
    "Sorry, I did not catch that. You can ask about our opening hours or book an appointment."
)


def _keypad_reply(entry: str) -> tuple[str, bool]:
    """The menu's answer to a lone digit; any other entry is read back, key by key."""
    keyword = _MENU.get(entry)
    if keyword is not None:
        rule = next(r for r in _RULES if keyword in r.keywords)
        return rule.reply, rule.hang_up
    return f"You entered {' '.join(entry)}.", False


class LocalScriptedAgent:
    """Keyword-matching stand-in for the LLM; replies are streamed as text deltas."""

    name = "local-scripted-agent"

    def __init__(self, *, greeting: str, word_delay_s: float = 0.0) -> None:
        self._greeting = greeting
        self._word_delay_s = word_delay_s

    def reply_for(self, history: Sequence[ChatMessage]) -> tuple[str, bool]:
        """The reply text to the conversation so far and whether the agent then hangs up."""
        last_user = next((m.content for m in reversed(history) if m.role == "user"), None)
        if last_user is None:
            return self._greeting, False
        if last_user.startswith(KEYPAD_PREFIX):
            return _keypad_reply(last_user.removeprefix(KEYPAD_PREFIX).strip())
        words = set(re.findall(r"[a-z']+", last_user.lower()))
        text = last_user.lower()
        for rule in _RULES:
            if any((k in words) if " " not in k else (k in text) for k in rule.keywords):
                return rule.reply, rule.hang_up
        # Plural/stem matches such as "hours" or "booking".
        for rule in _RULES:
            if any(w.startswith(k) for k in rule.keywords if " " not in k for w in words):
                return rule.reply, rule.hang_up
        return _FALLBACK, False

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        """Stream the scripted reply word by word, then `HangUp` if the rule ends the call."""
        text, hang_up = self.reply_for(history)
        for i, word in enumerate(text.split(" ")):
            if self._word_delay_s:
                await asyncio.sleep(self._word_delay_s)
            yield TextDelta(word if i == 0 else " " + word)
        if hang_up:
            yield HangUp(reason="agent-ended")
