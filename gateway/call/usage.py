"""A call's provider usage, counted while it runs: one `UsageMeter` per call.

Each quantity is counted at one point: STT audio where the session pushes a frame to
its recogniser (`CallSession`), LLM tokens where the agent's reply reads the provider's
usage report, TTS characters where a sentence is handed to the voice (`ReplyGenerator`).
The carrier's seconds are added by the lifecycle when the call ends (`CallUsage.
with_carrier`). Counting a frame is a dictionary update of integers: no float drift, and
the audio path pays well under a microsecond (bench/audio_bench.py).

What is counted is what was sent or reported: a reply cancelled by barge-in before the
LLM's usage report arrived counts none of its tokens (OpenAI sends it last), and audio a
recogniser replays after a reconnect is counted once.
"""

from __future__ import annotations

from collections import defaultdict

from storage import CallUsage, LlmUsage, SttUsage, TtsUsage


class UsageMeter:
    """Counters per provider (and model) for one call; `usage()` is a typed snapshot."""

    def __init__(self) -> None:
        self._stt_samples: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._tokens: defaultdict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0])
        self._characters: defaultdict[str, int] = defaultdict(int)

    def stt_audio(self, provider: str, samples: int, rate: int) -> None:
        """`samples` of audio at `rate` Hz were sent to the recogniser `provider`."""
        self._stt_samples[provider, rate] += samples

    def llm_tokens(self, provider: str, model: str | None, prompt: int, completion: int) -> None:
        """One model request's tokens, as the provider reported them."""
        counts = self._tokens[provider, model]
        counts[0] += prompt
        counts[1] += completion

    def tts_text(self, provider: str, characters: int) -> None:
        """`characters` of text were sent to the voice `provider` to be spoken."""
        self._characters[provider] += characters

    def usage(self) -> CallUsage:
        """What was counted so far (no carrier: the lifecycle adds it at the end)."""
        seconds: dict[str, float] = {}
        for (provider, rate), samples in self._stt_samples.items():
            seconds[provider] = seconds.get(provider, 0.0) + samples / rate
        return CallUsage(
            stt=tuple(
                SttUsage(provider=provider, seconds=round(total, 3))
                for provider, total in seconds.items()
            ),
            llm=tuple(
                LlmUsage(
                    provider=provider,
                    model=model,
                    prompt_tokens=counts[0],
                    completion_tokens=counts[1],
                )
                for (provider, model), counts in self._tokens.items()
            ),
            tts=tuple(
                TtsUsage(provider=provider, characters=characters)
                for provider, characters in self._characters.items()
            ),
        )
