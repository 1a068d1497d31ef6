"""Deepgram STT and Cartesia TTS through their official SDKs against local servers that
speak each provider's WebSocket protocol (tests/fakes/deepgram_server.py, cartesia_server.py)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from audio.codec import ulaw_decode
from audio.frames import AudioFrame
from gateway.errors import ProviderError
from gateway.providers.base import SegmentDone, SpeechAudio, SpeechEvent, Transcript
from gateway.providers.cartesia_tts import CartesiaTTS
from gateway.providers.deepgram_stt import DeepgramStream, DeepgramSTT

from .conftest import FakeServer

pytestmark = pytest.mark.timeout(60)


def _stt(fake: FakeServer, key: str = "test-deepgram-key", **options: float) -> DeepgramSTT:
    return DeepgramSTT(api_key=key, base_url=fake.url.replace("http", "ws"), **options)  # type: ignore[arg-type]


def _frames(kind: str, ms: int, rate: int = 8000) -> list[AudioFrame]:
    n = rate * ms // 1000
    t = np.arange(n) / rate
    if kind == "speech":
        pcm = (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    else:
        pcm = np.zeros(n, dtype=np.int16)
    step = rate // 50
    return [AudioFrame(pcm[i : i + step], rate) for i in range(0, n, step)]


async def _push(stream: DeepgramStream, frames: list[AudioFrame]) -> None:
    for frame in frames:
        await stream.push(frame)
        await asyncio.sleep(0.002)


async def _next_final(transcripts: AsyncIterator[Transcript], seen: list[Transcript]) -> str:
    async with asyncio.timeout(5):
        async for transcript in transcripts:
            seen.append(transcript)
            if transcript.is_final:
                return transcript.text
    raise AssertionError("stream ended")


@pytest.fixture
def dg(deepgram_fake: FakeServer) -> FakeServer:
    deepgram_fake.reset()
    return deepgram_fake


@pytest.fixture
def cartesia(cartesia_fake: FakeServer) -> FakeServer:
    cartesia_fake.reset()
    return cartesia_fake


async def test_deepgram_interims_then_one_final_per_turn_on_finalize(dg: FakeServer) -> None:
    dg.control(utterances=["What are your opening hours?", "Book me in."])
    stream = await _stt(dg).open_stream(call_id="c1", sample_rate=8000)
    transcripts = aiter(stream.transcripts())
    seen: list[Transcript] = []
    await _push(stream, _frames("silence", 200) + _frames("speech", 1200) + _frames("silence", 700))
    await stream.end_utterance()  # the session's VAD closed the turn
    assert await _next_final(transcripts, seen) == "What are your opening hours?"
    assert any(not t.is_final and t.text for t in seen)  # interim results came first
    await _push(stream, _frames("speech", 800) + _frames("silence", 700))
    await stream.end_utterance()
    assert await _next_final(transcripts, seen) == "Book me in."
    await stream.aclose()
    log = dg.log()
    [opened] = [e for e in log if e["kind"] == "open"]
    assert opened["auth"] == "Token test-deepgram-key"
    assert opened["extensions"] is None  # no permessage-deflate: audio is sent as it is
    query = opened["query"]
    assert isinstance(query, dict)
    assert (query["encoding"], query["sample_rate"], query["model"]) == ("mulaw", "8000", "nova-3")
    sent = [e["data"]["type"] for e in log if e["kind"] == "json"]  # type: ignore[index]
    assert sent == ["Finalize", "Finalize", "CloseStream"]
    audio_bytes = sum(int(e["bytes"]) for e in log if e["kind"] == "audio")  # type: ignore[call-overload]
    assert audio_bytes == 8 * (200 + 1200 + 700 + 800 + 700)  # mu-law: one byte a sample


def _audio_sizes(log: list[dict[str, object]]) -> list[object]:
    """The fake's log as the audio message sizes and the control messages, in order."""
    out: list[object] = []
    for entry in log:
        if entry["kind"] == "audio":
            out += entry["sizes"]  # type: ignore[arg-type]
        elif entry["kind"] == "json":
            out.append(entry["data"]["type"])  # type: ignore[index]
    return out


async def _sent_once(
    fake: FakeServer, done: Callable[[list[object]], bool], what: str
) -> list[object]:
    """The fake's log (`_audio_sizes`) once `done` holds of it (polled, bounded)."""
    for _ in range(500):
        sent = _audio_sizes(fake.log())
        if done(sent):
            return sent
        await asyncio.sleep(0.02)
    raise AssertionError(f"the fake never got {what}: {_audio_sizes(fake.log())}")


async def _logged(fake: FakeServer, until: str, count: int = 1) -> list[object]:
    """The fake's log once it holds `count` control messages `until`."""
    return await _sent_once(fake, lambda sent: sent.count(until) >= count, until)


async def test_deepgram_audio_goes_in_chunks_and_finalize_flushes_the_tail(
    dg: FakeServer,
) -> None:
    """80 ms chunks (4 frames of 8 kHz mu-law: 640 bytes); the end of a turn sends the part
    of a chunk gathered so far ahead of `Finalize`, without waiting for more audio."""
    dg.control(utterances=["What are your opening hours?"])
    stream = await _stt(dg, chunk_ms=80).open_stream(call_id="c7", sample_rate=8000)
    transcripts = aiter(stream.transcripts())
    # 1 300 ms of speech then 700 ms of silence: 100 frames = 25 chunks, none left over.
    await _push(stream, _frames("speech", 1300) + _frames("silence", 700))
    # Three more frames (60 ms): less than a chunk, held back...
    await _push(stream, _frames("silence", 60))
    assert _audio_sizes(dg.log()) == [640] * 25
    # ... until the turn ends: they go at once, ahead of `Finalize`, and the final comes
    # with no more audio pushed.
    await stream.end_utterance()
    assert await _logged(dg, "Finalize") == [640] * 25 + [480, "Finalize"]
    assert await _next_final(transcripts, []) == "What are your opening hours?"
    # A partial chunk at the close goes ahead of `CloseStream`.
    await _push(stream, _frames("silence", 20))
    await stream.aclose()
    assert (await _logged(dg, "CloseStream"))[-3:] == ["Finalize", 160, "CloseStream"]


async def test_deepgram_quiet_audio_goes_in_larger_chunks_until_a_frame_is_heard(
    dg: FakeServer,
) -> None:
    """Quiet audio (the VAD hears nothing) goes in chunks of up to 250 ms (12 frames, 1 920
    bytes) where others go in 100 ms ones; the first frame heard goes at once, with the
    quiet frames gathered before it."""
    stream = await _stt(dg).open_stream(call_id="c10", sample_rate=8000)
    for frame in _frames("silence", 600):  # 30 frames: two chunks, six frames held
        await stream.push(frame, quiet=True)
    heard = _frames("speech", 20)[0]
    await stream.push(heard)
    # No more audio and no `Finalize`: the chunk goes as it is.
    expected: list[object] = [1920, 1920, 1120]
    assert await _sent_once(dg, lambda sent: sent == expected, "the heard chunk") == expected
    await stream.aclose()


async def test_deepgram_chunks_of_linear16_and_of_a_size_between_frames(dg: FakeServer) -> None:
    """At 16 kHz a chunk is linear16 (2 bytes a sample); a chunk size that is no whole
    number of frames is reached with whole frames (70 ms: 4 frames of 20 ms, 80 ms)."""
    stream = await _stt(dg, chunk_ms=70).open_stream(call_id="c8", sample_rate=16000)
    await _push(stream, _frames("silence", 200, rate=16000))
    await stream.end_utterance()
    assert await _logged(dg, "Finalize") == [2560, 2560, 1280, "Finalize"]
    await stream.aclose()


async def test_deepgram_gets_a_twilio_frames_mu_law_bytes_as_they_came(dg: FakeServer) -> None:
    """A frame decoded from mu-law carries its bytes: they go to Deepgram as they came, not
    encoded again (0x7F and 0xFF both decode to 0; encoding 0 again gives 0xFF only)."""
    stream = await _stt(dg, chunk_ms=80).open_stream(call_id="c9", sample_rate=8000)
    payloads = [bytes([0x7F, 0x80 + i, 0x00 + i, 0xFF]) * 40 for i in range(8)]  # 8 frames
    await _push(stream, [AudioFrame(ulaw_decode(p), 8000, p) for p in payloads])
    await stream.end_utterance()
    await _logged(dg, "Finalize")
    audio = [e for e in dg.log() if e["kind"] == "audio"]
    assert [e["sizes"] for e in audio] == [[640, 640]]
    assert audio[0]["crc32"] == zlib.crc32(b"".join(payloads))
    await stream.aclose()


async def test_deepgram_keepalive_while_no_audio_flows(dg: FakeServer) -> None:
    stream = await _stt(dg, keepalive_s=0.2).open_stream(call_id="c2", sample_rate=16000)
    await asyncio.sleep(0.7)
    await stream.aclose()
    sent = [e["data"]["type"] for e in dg.log() if e["kind"] == "json"]  # type: ignore[index]
    assert sent.count("KeepAlive") >= 2 and sent[-1] == "CloseStream"
    [opened] = [e for e in dg.log() if e["kind"] == "open"]
    assert opened["query"]["encoding"] == "linear16"  # type: ignore[index]


async def test_deepgram_socket_drop_reconnects_and_keeps_transcribing(dg: FakeServer) -> None:
    dg.control(utterances=["First.", "Second."], drop_after_finals=1)
    reconnects: list[int] = []
    stt = DeepgramSTT(
        api_key="test-deepgram-key",
        base_url=dg.url.replace("http", "ws"),
        on_reconnect=lambda: reconnects.append(1),
    )
    stream = await stt.open_stream(call_id="c3", sample_rate=8000)
    transcripts = aiter(stream.transcripts())
    seen: list[Transcript] = []
    await _push(stream, _frames("speech", 600) + _frames("silence", 700))
    await stream.end_utterance()
    assert await _next_final(transcripts, seen) == "First."
    await asyncio.sleep(0.5)
    await _push(stream, _frames("speech", 600) + _frames("silence", 700))
    await stream.end_utterance()
    assert await _next_final(transcripts, seen) == "Second."
    await stream.aclose()
    assert reconnects == [1]
    assert len([e for e in dg.log() if e["kind"] == "open"]) == 2


async def test_deepgram_skips_a_message_that_is_not_a_json_object(
    dg: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    dg.control(utterances=["Still heard."], junk_first=True)
    stream = await _stt(dg).open_stream(call_id="c3j", sample_rate=8000)
    transcripts = aiter(stream.transcripts())
    await _push(stream, _frames("speech", 600) + _frames("silence", 700))
    await stream.end_utterance()
    assert await _next_final(transcripts, []) == "Still heard."
    await stream.aclose()
    skipped = [r for r in caplog.records if "not a JSON object" in r.getMessage()]
    assert len(skipped) == 2


async def test_deepgram_wrong_key_is_a_final_provider_error(dg: FakeServer) -> None:
    with pytest.raises(ProviderError) as refused:
        await _stt(dg, key="wrong").open_stream(call_id="c4", sample_rate=8000)
    assert refused.value.status == 401 and not refused.value.retryable


def _tts(fake: FakeServer, key: str = "test-cartesia-key") -> CartesiaTTS:
    return CartesiaTTS(api_key=key, voice_id="voice-1", base_url=fake.url)


async def _collect(events: AsyncIterator[SpeechEvent]) -> list[SpeechEvent]:
    async with asyncio.timeout(10):
        return [event async for event in events]


async def test_cartesia_turn_streams_sentences_as_continuations(cartesia: FakeServer) -> None:
    tts = _tts(cartesia)
    connection = await tts.open(call_id="c5", sample_rate=tts.output_rate(8000))
    speech = connection.turn()
    await speech.say("Hello there.")
    await speech.say("How are you?")
    await speech.finish()
    events = await _collect(speech.audio())
    await connection.aclose()
    await tts.aclose()
    segments = [e.segment for e in events]
    assert segments == sorted(segments) and set(segments) == {0, 1}
    assert [e for e in events if isinstance(e, SegmentDone)] == [SegmentDone(0), SegmentDone(1)]
    samples = [
        sum(len(e.pcm) for e in events if isinstance(e, SpeechAudio) and e.segment == s)
        for s in (0, 1)
    ]
    assert samples == [
        int(8000 * 0.045 * len("Hello there.")),
        int(8000 * 0.045 * len("How are you?")),
    ]
    requests = [e["data"] for e in cartesia.log() if e["kind"] == "json"]
    assert len({r["context_id"] for r in requests}) == 1
    assert [(r["transcript"], r["continue"], r.get("flush", False)) for r in requests] == [
        ("Hello there. ", True, False), ("", True, True),
        ("How are you? ", True, False), ("", True, True),
        ("", False, False),
    ]  # fmt: skip
    assert requests[0]["output_format"] == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": 8000,
    }


async def test_cartesia_socket_offers_no_deflate_and_skips_what_is_not_json(
    cartesia: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    cartesia.control(junk_first=True)
    tts = _tts(cartesia)
    connection = await tts.open(call_id="c5j", sample_rate=8000)
    speech = connection.turn()
    await speech.say("Hello there.")
    await speech.finish()
    events = await _collect(speech.audio())
    await connection.aclose()
    await tts.aclose()
    assert events[-1] == SegmentDone(0)
    heard = sum(len(e.pcm) for e in events if isinstance(e, SpeechAudio))
    assert heard == int(8000 * 0.045 * len("Hello there."))
    [opened] = [e for e in cartesia.log() if e["kind"] == "open"]
    assert opened["path"] == "/tts/websocket"
    assert opened["auth"] == "Bearer test-cartesia-key" and opened["version"]
    assert opened["extensions"] is None  # no permessage-deflate: audio comes as it is
    skipped = [r for r in caplog.records if "not a JSON object" in r.getMessage()]
    assert len(skipped) == 2


async def test_cartesia_cancel_stops_the_context(cartesia: FakeServer) -> None:
    cartesia.control(chunk_interval_ms=20)
    tts = _tts(cartesia)
    connection = await tts.open(call_id="c6", sample_rate=8000)
    speech = connection.turn()
    await speech.say("A rather long sentence that takes a while to speak out loud.")
    received = 0
    async with asyncio.timeout(5):
        async for event in speech.audio():
            received += isinstance(event, SpeechAudio)
            if received == 3:
                break
    await speech.cancel()
    await asyncio.sleep(0.2)
    # The next turn on the same socket works.
    after = connection.turn()
    await after.say("Next.")
    await after.finish()
    assert any(isinstance(e, SpeechAudio) for e in await _collect(after.audio()))
    await connection.aclose()
    await tts.aclose()
    requests = [e["data"] for e in cartesia.log() if e["kind"] == "json"]
    assert {"context_id": requests[0]["context_id"], "cancel": True} in requests


async def test_cartesia_drop_mid_turn_fails_the_turn_and_the_next_reconnects(
    cartesia: FakeServer,
) -> None:
    cartesia.control(drop_on_text="boom")
    tts = _tts(cartesia)
    connection = await tts.open(call_id="c7", sample_rate=8000)
    speech = connection.turn()
    await speech.say("This goes boom.")
    await speech.finish()
    with pytest.raises(ProviderError):
        await _collect(speech.audio())
    again = connection.turn()
    await again.say("Fine now.")
    await again.finish()
    assert any(isinstance(e, SpeechAudio) for e in await _collect(again.audio()))
    await connection.aclose()
    await tts.aclose()
    assert len([e for e in cartesia.log() if e["kind"] == "open"]) == 2


async def test_cartesia_wrong_key_is_a_final_provider_error(cartesia: FakeServer) -> None:
    tts = _tts(cartesia, key="wrong")
    connection = await tts.open(call_id="c8", sample_rate=8000)
    with pytest.raises(ProviderError) as refused:
        await connection.turn().say("Hello.")
    await tts.aclose()
    assert refused.value.status == 401 and not refused.value.retryable
