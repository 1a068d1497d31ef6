"""The stereo timeline: both legs aligned by position, silence where a leg is quiet, the
agent cut at a barge-in; and the WAV framing, streaming then final, PCM and mu-law."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from audio.codec import ulaw_decode, ulaw_encode
from audio.stereo import (
    UNKNOWN_SIZE,
    StereoTimeline,
    WavFormat,
    WavFormatError,
    parse_wav_header,
    read_wav,
)


def _frames(stereo: np.ndarray) -> np.ndarray:
    assert stereo.dtype == np.int16 and stereo.shape[1] == 2
    return stereo


def test_legs_are_placed_by_position_with_silence_between() -> None:
    timeline = StereoTimeline()
    timeline.write_caller(0, np.full(160, 100, dtype=np.int16))
    timeline.write_caller(320, np.full(160, 200, dtype=np.int16))  # a 20 ms gap before it
    timeline.write_agent(80, np.full(160, -7, dtype=np.int16))
    out = _frames(timeline.take(480))
    assert out.shape == (480, 2)
    assert (out[:160, 0] == 100).all() and (out[160:320, 0] == 0).all()
    assert (out[320:, 0] == 200).all()
    assert (out[:80, 1] == 0).all() and (out[80:240, 1] == -7).all() and (out[240:, 1] == 0).all()
    assert timeline.committed == 480 and timeline.take(480).shape == (0, 2)


def test_take_in_pieces_equals_take_at_once() -> None:
    rng = np.random.default_rng(1)
    caller = rng.integers(-3000, 3000, 1600, dtype=np.int16)
    agent = rng.integers(-3000, 3000, 1600, dtype=np.int16)
    whole, pieces = StereoTimeline(), StereoTimeline()
    for t in (whole, pieces):
        t.write_agent(200, agent)
    whole.write_caller(0, caller)
    chunks = []
    for start in range(0, 1600, 160):
        pieces.write_caller(start, caller[start : start + 160])
        chunks.append(pieces.take(start + 100))
    chunks.append(pieces.take(1800))
    assert np.array_equal(np.concatenate(chunks), whole.take(1800))


def test_barge_in_cut_silences_only_what_was_not_heard() -> None:
    timeline = StereoTimeline()
    agent = np.arange(1, 801, dtype=np.int16)  # 100 ms queued ahead of playout
    timeline.write_agent(0, agent)
    assert _frames(timeline.take(300))[:, 1].tolist() == list(range(1, 301))
    timeline.cut_agent(500)  # the caller stopped hearing the agent at sample 500
    timeline.write_agent(700, np.full(50, 9, dtype=np.int16))  # the next reply
    rest = _frames(timeline.take(800))[:, 1]
    assert rest[:200].tolist() == list(range(301, 501))
    assert (rest[200:400] == 0).all() and (rest[400:450] == 9).all()


def test_late_caller_audio_before_the_committed_position_is_trimmed() -> None:
    timeline = StereoTimeline()
    timeline.take(100)
    timeline.write_caller(60, np.full(80, 5, dtype=np.int16))
    out = _frames(timeline.take(200))
    assert (out[:40, 0] == 5).all() and (out[40:, 0] == 0).all()


def test_pcm16_wav_streaming_then_final() -> None:
    wav = WavFormat("pcm16", 8000)
    streaming = wav.header(None)
    assert len(streaming) == wav.header_bytes == 44
    assert int.from_bytes(streaming[40:44], "little") == UNKNOWN_SIZE
    stereo = np.arange(16, dtype=np.int16).reshape(8, 2)
    data = wav.encode(stereo)
    final = wav.header(len(data)) + data
    with wave.open(io.BytesIO(final)) as reader:  # the standard library reads it
        assert (reader.getnchannels(), reader.getframerate(), reader.getsampwidth()) == (2, 8000, 2)
        assert reader.getnframes() == 8 and reader.readframes(8) == data
    assert parse_wav_header(streaming) == wav
    fmt, samples = read_wav(streaming + data + b"\x01")  # streaming: read to the end
    assert fmt == wav and np.array_equal(samples, stereo)
    assert wav.duration_s(len(final)) == 8 / 8000


def test_mulaw_wav_is_bit_exact_to_the_wire_at_half_the_size() -> None:
    rng = np.random.default_rng(7)
    wire = bytes(rng.integers(0, 256, 320, dtype=np.uint8))  # what the call carried
    stereo = ulaw_decode(wire).reshape(-1, 2)
    mulaw, pcm = WavFormat("mulaw", 8000), WavFormat("pcm16", 8000)
    data = mulaw.encode(stereo)
    # Decoding then encoding keeps every code (but the two codes of zero, 0x7f and 0xff).
    assert ulaw_encode(ulaw_decode(data)) == data
    assert np.array_equal(ulaw_decode(data), ulaw_decode(wire))
    assert len(data) * 2 == len(pcm.encode(stereo))
    final = mulaw.header(len(data)) + data
    assert len(mulaw.header(None)) == mulaw.header_bytes == 58
    assert final[38:42] == b"fact" and int.from_bytes(final[46:50], "little") == 160
    fmt, samples = read_wav(final)
    assert fmt == mulaw and np.array_equal(samples, stereo)


def test_a_file_not_of_ours_is_refused() -> None:
    with pytest.raises(WavFormatError):
        parse_wav_header(b"ID3" + bytes(60))
