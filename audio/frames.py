"""Audio frames: the `AudioFrame` value; `FrameQueue`, the one place where agent audio is
cut into whole 20 ms frames and a frame cut short is padded with silence; `FrameJoiner`,
which joins a carrier's consecutive 20 ms caller frames into the 40 ms frames a call takes
while the caller is quiet; and `ChunkGatherer`, which joins caller frames' bytes into larger
chunks for a recogniser."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PCM16 = npt.NDArray[np.int16]

FRAME_MS = 20
# While the caller is quiet (the VAD hears nothing, no utterance under way) their audio
# reaches a call in frames of this length, in FRAME_MS ones otherwise: every step a frame
# takes (decoding, VAD, turn-taking, the recogniser's socket, the recording) costs per frame
# more than per sample, and a quiet line is most of a call. The onset of speech may be heard
# up to 20 ms later; a pause, an end of turn and a barge-in's words are timed as before.
QUIET_FRAME_MS = 40


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono PCM16 audio at a sample rate; the unit every layer above `audio/` passes around.
    `ulaw`: the G.711 mu-law bytes `pcm` was decoded from, when it came off the wire so (a
    Twilio media frame), so that a recogniser taking mu-law sends them as they came instead
    of encoding them again. A frame made from changed audio (resampled) has none."""

    pcm: PCM16
    rate: int
    ulaw: bytes | None = None

    @property
    def samples(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.samples / self.rate


def samples_per_frame(rate: int, frame_ms: int = FRAME_MS) -> int:
    """Number of samples in one frame of `frame_ms` at `rate`."""
    return rate * frame_ms // 1000


class FrameQueue:
    """Agent audio waiting to be played, as whole frames with named markers between them.

    `push()` appends PCM; whatever does not fill a frame waits for the next push. `mark()`
    puts a marker behind the audio pushed so far, padding a waiting partial frame with
    silence first (a marker must not wait for audio that may never come). `pop_frame()`
    takes the next frame; `pop_markers()` then takes the markers it has reached, i.e. those
    with no queued frame before them (a marker pushed onto an empty queue is reached at
    once). `clear()` drops frames, partial frame and markers alike.

    Frames are read-only views of the queue's own copy of the audio: the caller may reuse
    the arrays it pushed, and a frame handed out stays as it was played.
    """

    def __init__(self, rate: int, *, frame_ms: int = FRAME_MS) -> None:
        self.rate = rate
        self.frame_samples = samples_per_frame(rate, frame_ms)
        if self.frame_samples <= 0:
            raise ValueError(f"{frame_ms} ms at {rate} Hz is not a frame")
        self._frames: collections.deque[PCM16] = collections.deque()
        self._partial: PCM16 = np.zeros(0, dtype=np.int16)
        # Each marker with the number of frames, counted from the start, played before it.
        self._markers: collections.deque[tuple[int, str]] = collections.deque()
        self._taken = 0  # frames popped or cleared since the start

    @property
    def queued_frames(self) -> int:
        """Whole frames waiting (a partial frame is not counted until it is completed)."""
        return len(self._frames)

    def push(self, pcm: PCM16) -> None:
        """Append audio at the queue's rate; a partial frame waits for more."""
        data = np.concatenate([self._partial, np.asarray(pcm, dtype=np.int16)])
        data.flags.writeable = False
        size = self.frame_samples
        whole = data.shape[0] - data.shape[0] % size
        self._frames.extend(data[offset : offset + size] for offset in range(0, whole, size))
        self._partial = data[whole:]

    def mark(self, name: str) -> None:
        """Put marker `name` behind the audio pushed so far (a partial frame is padded)."""
        if self._partial.shape[0]:
            padded = np.zeros(self.frame_samples, dtype=np.int16)
            padded[: self._partial.shape[0]] = self._partial
            padded.flags.writeable = False
            self._frames.append(padded)
            self._partial = np.zeros(0, dtype=np.int16)
        self._markers.append((self._taken + len(self._frames), name))

    def pop_frame(self) -> PCM16 | None:
        """Take the next whole frame, or None if none is queued."""
        if not self._frames:
            return None
        self._taken += 1
        return self._frames.popleft()

    @property
    def marker_due(self) -> bool:
        """Whether a marker has every frame before it popped (`pop_markers` would take it)."""
        return bool(self._markers) and self._markers[0][0] <= self._taken

    def pop_markers(self) -> list[str]:
        """Take the markers reached: those with every frame before them popped, in order."""
        reached: list[str] = []
        while self._markers and self._markers[0][0] <= self._taken:
            reached.append(self._markers.popleft()[1])
        return reached

    def clear(self) -> None:
        """Drop every queued frame, the partial frame and every marker."""
        self._taken += len(self._frames)
        self._frames.clear()
        self._partial = np.zeros(0, dtype=np.int16)
        self._markers.clear()


class FrameJoiner:
    """Consecutive frames of stamped bytes (`sample_bytes` a sample at `rate`), joined into
    blocks of at least `block_ms`: `add()` keeps a frame and returns the blocks ready, each
    as (stamp of its first frame in ms, bytes). A frame joins the one before it only if its
    stamp follows on (a gap, or audio stamped out of order, ends the block so far: a block
    is one span of the stream's time); a frame of `block_ms` or more goes out alone, and so
    does one added with `join=False`, after the block begun. `flush()` returns the block
    begun, however short, or None.
    """

    def __init__(self, rate: int, *, block_ms: int, sample_bytes: int = 1) -> None:
        self._bytes_per_ms = rate * sample_bytes / 1000
        self.block_bytes = max(1, rate * block_ms // 1000) * sample_bytes
        self._pieces: list[bytes] = []
        self._size = 0
        self._at_ms = 0  # the block's stamp
        self._next_ms = 0.0  # where a frame that follows on is stamped

    def add(self, data: bytes, at_ms: int, *, join: bool = True) -> list[tuple[int, bytes]]:
        """Keep a frame stamped `at_ms`; return the blocks it completes, in order."""
        ready: list[tuple[int, bytes]] = []
        if self._pieces and (not join or abs(at_ms - self._next_ms) >= 1.0):
            ready.append(self._take())
        if not join:
            ready.append((at_ms, data))
            return ready
        if not self._pieces:
            self._at_ms = at_ms
            self._next_ms = float(at_ms)
        self._pieces.append(data)
        self._size += len(data)
        self._next_ms += len(data) / self._bytes_per_ms
        if self._size >= self.block_bytes:
            ready.append(self._take())
        return ready

    def flush(self) -> tuple[int, bytes] | None:
        """The block begun (at its stamp), however short; None if none is."""
        return self._take() if self._pieces else None

    def _take(self) -> tuple[int, bytes]:
        block = self._at_ms, b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        return block


class ChunkGatherer:
    """Caller audio, as the bytes a recogniser's socket carries (`sample_bytes` a sample),
    gathered into chunks of at least `chunk_ms`, so that the socket carries a few larger
    messages instead of one per caller frame. While the caller is quiet (`add(quiet=True)`)
    a chunk may grow up to `quiet_chunk_ms` (a quiet frame that would take it past goes in
    the next one): no words are on their way then, so fewer messages cost nothing; the first
    frame that is not quiet sends everything gathered with it.

    `add()` keeps a frame's bytes and returns the chunk it completes (the frames gathered so
    far, joined, once they reach the chunk size; frames are never split), else None.
    `flush()` returns whatever is gathered, however short (an end of turn must not wait for
    a chunk to fill), or None if nothing is.
    """

    def __init__(
        self, rate: int, *, chunk_ms: int, sample_bytes: int, quiet_chunk_ms: int | None = None
    ) -> None:
        self.chunk_bytes = max(1, rate * chunk_ms // 1000) * sample_bytes
        quiet_bytes = max(1, rate * (quiet_chunk_ms or chunk_ms) // 1000) * sample_bytes
        self.quiet_chunk_bytes = max(self.chunk_bytes, quiet_bytes)
        self._pieces: list[bytes] = []
        self._size = 0
        self._quiet = False  # the last frame added was quiet

    @property
    def gathered_bytes(self) -> int:
        """Bytes added and not yet handed out."""
        return self._size

    def add(self, data: bytes, *, quiet: bool = False) -> bytes | None:
        """Keep `data`; return the chunk it completes, or None."""
        if (
            quiet
            and self._quiet
            and self._pieces
            and self._size + len(data) > self.quiet_chunk_bytes
        ):
            chunk = self.flush()
            self._pieces.append(data)
            self._size = len(data)
            return chunk
        self._pieces.append(data)
        self._size += len(data)
        heard_after_quiet, self._quiet = self._quiet and not quiet, quiet
        if heard_after_quiet or self._size >= (
            self.quiet_chunk_bytes if quiet else self.chunk_bytes
        ):
            return self.flush()
        return None

    def flush(self) -> bytes | None:
        """Hand out everything gathered (None if nothing is)."""
        if not self._pieces:
            return None
        chunk = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        return chunk
