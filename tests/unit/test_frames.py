"""FrameQueue: agent audio cut into whole 20 ms frames, padded at a marker, cleared at once.
ChunkGatherer: caller frames joined into chunks of at least `chunk_ms`, flushed on demand."""

import numpy as np
import pytest

from audio.frames import FRAME_MS, ChunkGatherer, FrameJoiner, FrameQueue, samples_per_frame


def _ramp(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.int16)


def _drain(queue: FrameQueue) -> list[np.ndarray | str]:
    """Everything the queue holds, frames and markers in the order they are released."""
    out: list[np.ndarray | str] = list(queue.pop_markers())
    while (frame := queue.pop_frame()) is not None:
        out.append(frame)
        out.extend(queue.pop_markers())
    return out


def test_frame_size_comes_from_frame_ms() -> None:
    assert FRAME_MS == 20
    assert [samples_per_frame(rate) for rate in (8000, 16000, 24000, 48000)] == [160, 320, 480, 960]
    assert FrameQueue(8000).frame_samples == 160
    assert FrameQueue(16000).frame_samples == 320
    assert FrameQueue(16000, frame_ms=10).frame_samples == 160
    with pytest.raises(ValueError):
        FrameQueue(8000, frame_ms=0)


def test_push_cuts_exact_frames_and_a_partial_frame_waits() -> None:
    queue = FrameQueue(8000)
    queue.push(_ramp(0, 100))
    assert queue.queued_frames == 0 and queue.pop_frame() is None
    queue.push(_ramp(100, 300))  # 400 samples so far: two frames, 80 waiting
    assert queue.queued_frames == 2
    first, second = queue.pop_frame(), queue.pop_frame()
    assert first is not None and second is not None
    assert np.array_equal(first, _ramp(0, 160)) and np.array_equal(second, _ramp(160, 160))
    assert first.dtype == np.int16
    assert queue.pop_frame() is None
    queue.push(_ramp(400, 80))  # completes the third frame
    third = queue.pop_frame()
    assert third is not None and np.array_equal(third, _ramp(320, 160))
    assert queue.queued_frames == 0


def test_frames_are_the_queues_own_read_only_copy() -> None:
    queue = FrameQueue(8000)
    pcm = _ramp(0, 160)
    queue.push(pcm)
    pcm[:] = 0  # the caller reuses its buffer
    frame = queue.pop_frame()
    assert frame is not None and np.array_equal(frame, _ramp(0, 160))
    with pytest.raises(ValueError):
        frame[0] = 1


def test_a_marker_pads_the_partial_frame_with_silence_and_sits_behind_it() -> None:
    queue = FrameQueue(8000)
    queue.push(_ramp(1, 240))  # a frame and a half
    queue.mark("a")
    assert queue.queued_frames == 2
    queue.push(_ramp(1000, 160))
    queue.mark("b")  # nothing partial: no padding
    assert queue.queued_frames == 3
    out = _drain(queue)
    assert [type(item).__name__ for item in out] == ["ndarray", "ndarray", "str", "ndarray", "str"]
    assert np.array_equal(out[0], _ramp(1, 160))
    padded = np.concatenate([_ramp(161, 80), np.zeros(80, dtype=np.int16)])
    assert np.array_equal(out[1], padded)
    assert out[2] == "a"
    assert np.array_equal(out[3], _ramp(1000, 160))
    assert out[4] == "b"


def test_markers_are_released_only_when_their_frame_is_popped() -> None:
    queue = FrameQueue(8000)
    queue.push(_ramp(0, 320))
    queue.mark("after-two")
    queue.mark("also-after-two")
    assert queue.pop_markers() == []
    assert queue.pop_frame() is not None
    assert queue.pop_markers() == []
    assert queue.pop_frame() is not None
    assert queue.pop_markers() == ["after-two", "also-after-two"]
    assert queue.pop_markers() == []


def test_a_marker_with_nothing_queued_is_reached_at_once() -> None:
    queue = FrameQueue(8000)
    queue.mark("empty")
    assert queue.queued_frames == 0
    assert queue.pop_markers() == ["empty"]
    queue.push(_ramp(0, 160))
    assert queue.pop_frame() is not None
    queue.mark("after-all-played")  # every frame before it is gone already
    assert queue.pop_markers() == ["after-all-played"]


def test_clear_drops_frames_partial_frame_and_markers() -> None:
    queue = FrameQueue(16000)
    queue.push(_ramp(0, 700))  # two frames and 60 samples
    queue.mark("dropped")
    queue.push(_ramp(700, 100))
    queue.clear()
    assert queue.queued_frames == 0
    assert queue.pop_frame() is None and queue.pop_markers() == []
    # What comes after a clear starts a fresh frame and is marked on its own.
    queue.push(_ramp(5000, 330))
    queue.mark("kept")
    first, padded = queue.pop_frame(), queue.pop_frame()
    assert first is not None and padded is not None and queue.pop_frame() is None
    assert queue.pop_markers() == ["kept"]
    assert np.array_equal(first, _ramp(5000, 320))
    assert np.array_equal(padded[:10], _ramp(5320, 10)) and not padded[10:].any()


def test_any_split_of_the_input_gives_the_same_frames() -> None:
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32767, 8000, dtype=np.int16)
    cuts = np.sort(rng.integers(0, pcm.size, 40))
    queue = FrameQueue(8000)
    for chunk in np.split(pcm, cuts):
        queue.push(chunk)
    queue.mark("end")
    out = _drain(queue)
    assert out[-1] == "end"
    frames = [item for item in out if isinstance(item, np.ndarray)]
    assert all(frame.shape == (160,) for frame in frames)
    assert np.array_equal(np.concatenate(frames), pcm)  # 8000 samples: 50 whole frames


def test_chunks_of_whole_frames_in_order() -> None:
    gatherer = ChunkGatherer(8000, chunk_ms=80, sample_bytes=2)
    assert gatherer.chunk_bytes == 1280
    frames = [_ramp(160 * i, 160).tobytes() for i in range(9)]
    chunks = [gatherer.add(frame) for frame in frames]
    assert [c is None for c in chunks] == [True, True, True, False, True, True, True, False, True]
    first, second = (c for c in chunks if c is not None)
    assert first == b"".join(frames[:4])
    assert second == b"".join(frames[4:8])
    assert gatherer.gathered_bytes == 320
    tail = gatherer.flush()  # the end of a turn: what is gathered, however short
    assert tail == frames[8]
    assert gatherer.flush() is None and gatherer.gathered_bytes == 0


def test_chunk_size_between_frames_is_reached_with_whole_frames() -> None:
    gatherer = ChunkGatherer(16000, chunk_ms=70, sample_bytes=2)  # 1 120 samples: 3.5 frames
    frames = (_ramp(320 * i, 320).tobytes() for i in range(8))
    sizes = [len(c) for frame in frames if (c := gatherer.add(frame)) is not None]
    assert sizes == [2560, 2560]


def test_mu_law_chunks_count_one_byte_a_sample() -> None:
    gatherer = ChunkGatherer(8000, chunk_ms=80, sample_bytes=1)
    chunks = [gatherer.add(bytes([i]) * 160) for i in range(4)]
    assert chunks[:3] == [None, None, None]
    assert chunks[3] == b"".join(bytes([i]) * 160 for i in range(4))


def test_quiet_audio_gathers_into_larger_chunks_and_a_heard_frame_sends_them_at_once() -> None:
    gatherer = ChunkGatherer(8000, chunk_ms=100, sample_bytes=1, quiet_chunk_ms=250)
    assert (gatherer.chunk_bytes, gatherer.quiet_chunk_bytes) == (800, 2000)
    frames = [bytes([i]) * 160 for i in range(20)]
    quiet = [gatherer.add(frame, quiet=True) for frame in frames[:17]]
    # 12 quiet frames (240 ms) make a chunk, where 5 would have made one of 100 ms: the
    # 13th would take it past 250 ms, so it goes in the next one.
    assert [i for i, c in enumerate(quiet) if c is not None] == [12]
    assert quiet[12] == b"".join(frames[:12])
    # The first frame heard goes at once, with the quiet ones gathered before it...
    assert gatherer.add(frames[17]) == b"".join(frames[12:18])
    # ... however few they are; the frames heard after it go in chunks of 100 ms.
    assert [gatherer.add(f, quiet=True) for f in frames[18:19]] == [None]
    assert gatherer.add(frames[19]) == frames[18] + frames[19]
    assert [gatherer.add(frames[i % 20]) is None for i in range(5)] == [True] * 4 + [False]


def test_a_quiet_chunk_is_never_smaller_than_a_chunk() -> None:
    gatherer = ChunkGatherer(8000, chunk_ms=100, sample_bytes=1, quiet_chunk_ms=40)
    assert gatherer.quiet_chunk_bytes == gatherer.chunk_bytes == 800
    assert ChunkGatherer(8000, chunk_ms=80, sample_bytes=2).quiet_chunk_bytes == 1280


def test_quiet_chunks_of_40_ms_frames_stay_within_the_quiet_size() -> None:
    gatherer = ChunkGatherer(8000, chunk_ms=100, sample_bytes=1, quiet_chunk_ms=250)
    frames = [bytes([i]) * 320 for i in range(14)]
    chunks = [c for c in (gatherer.add(f, quiet=True) for f in frames) if c is not None]
    assert [len(c) for c in chunks] == [1920, 1920]  # six frames each, not seven (280 ms)
    assert b"".join(chunks) == b"".join(frames[:12])
    assert gatherer.flush() == frames[12] + frames[13]


def test_consecutive_frames_are_joined_in_pairs_at_the_first_ones_stamp() -> None:
    joiner = FrameJoiner(8000, block_ms=40)
    frames = [bytes([i]) * 160 for i in range(5)]
    blocks = [joiner.add(frame, 1000 + 20 * i) for i, frame in enumerate(frames)]
    assert blocks == [
        [],
        [(1000, frames[0] + frames[1])],
        [],
        [(1040, frames[2] + frames[3])],
        [],
    ]
    assert joiner.flush() == (1080, frames[4])
    assert joiner.flush() is None


def test_a_gap_or_a_step_back_in_the_stamps_ends_the_block() -> None:
    joiner = FrameJoiner(8000, block_ms=40)
    a, b, c, d = (bytes([i]) * 160 for i in range(4))
    assert joiner.add(a, 0) == []
    assert joiner.add(b, 60) == [(0, a)]  # 40 ms of the stream's time missing
    assert joiner.add(c, 40) == [(60, b)]  # stamped before the frame held
    assert joiner.add(d, 60) == [(40, c + d)]


def test_a_frame_of_a_block_or_more_goes_out_alone() -> None:
    joiner = FrameJoiner(8000, block_ms=40)
    small, big = b"\x01" * 160, b"\x02" * 480
    assert joiner.add(small, 0) == []
    assert joiner.add(big, 20) == [(0, small + big)]  # it follows on: joined, then out
    assert joiner.add(big, 500) == [(500, big)]
    assert joiner.add(small, 560) == []
    assert joiner.add(big, 100) == [(560, small), (100, big)]


def test_a_frame_not_to_be_joined_goes_out_at_once_after_the_block_begun() -> None:
    joiner = FrameJoiner(8000, block_ms=40)
    a, b, c = (bytes([i]) * 160 for i in range(3))
    assert joiner.add(a, 0) == []
    assert joiner.add(b, 20, join=False) == [(0, a), (20, b)]
    assert joiner.add(c, 40, join=False) == [(40, c)]
    assert joiner.flush() is None
