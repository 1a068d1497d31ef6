import asyncio

from gateway.providers.base import ChatMessage, HangUp, TextDelta
from gateway.providers.local_agent import LocalScriptedAgent


def _reply(agent: LocalScriptedAgent, said: str) -> tuple[str, bool]:
    return agent.reply_for([ChatMessage("assistant", "hi"), ChatMessage("user", said)])


def test_greets_first_then_answers_by_keyword() -> None:
    agent = LocalScriptedAgent(greeting="Hello!")
    assert agent.reply_for([]) == ("Hello!", False)
    assert _reply(agent, "what are your opening hours")[0].startswith("We are open")
    assert _reply(agent, "i want to book an appointment")[0].startswith("I can book")
    assert _reply(agent, "thank you goodbye") == ("Thank you for calling. Goodbye!", True)
    assert _reply(agent, "purple elephants")[0].startswith("Sorry")


def test_keypad_entries_go_through_the_digit_menu() -> None:
    agent = LocalScriptedAgent(greeting="Hello!")
    assert _reply(agent, "[keypad] 1")[0].startswith("We are open")
    assert _reply(agent, "[keypad] 2")[0].startswith("I can book")
    assert _reply(agent, "[keypad] 0")[0].startswith("Sure. Let me note")
    assert _reply(agent, "[keypad] 1234") == ("You entered 1 2 3 4.", False)
    assert _reply(agent, "[keypad] #") == ("You entered #.", False)
    # Only the keypad marker starts the menu: spoken digits go through the keywords.
    assert _reply(agent, "one")[0].startswith("Sorry")


def test_streams_words_then_hangs_up() -> None:
    agent = LocalScriptedAgent(greeting="Hello!")

    async def collect() -> list[object]:
        history = [ChatMessage("user", "bye")]
        return [event async for event in agent.respond(history, call_id="c1")]

    events = asyncio.run(collect())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Thank you for calling. Goodbye!"
    assert isinstance(events[-1], HangUp)
    assert sum(isinstance(e, TextDelta) for e in events) == len(text.split())
