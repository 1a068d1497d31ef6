"""The offline recogniser holds at most `max_utterance_s` of one utterance."""

from __future__ import annotations

import numpy as np

from audio.frames import AudioFrame
from gateway.providers.local_stt import PocketSphinxSTT

RATE = PocketSphinxSTT.sample_rate


async def test_an_endless_utterance_keeps_only_its_newest_audio() -> None:
    stt = PocketSphinxSTT(max_utterance_s=5.0)
    stream = await stt.open_stream(call_id="call-bounded", sample_rate=RATE)
    try:
        frame = AudioFrame(np.zeros(RATE // 50, dtype=np.int16), RATE)  # 20 ms
        for _ in range(50 * 40):  # 40 s without a pause
            await stream.push(frame)
        assert 4.9 <= stream.buffered_s <= 5.0
        await stream.end_utterance()
        assert stream.buffered_s == 0
        transcripts = stream.transcripts()
        final = await anext(transcripts)
        assert final.is_final
    finally:
        await stream.aclose()
