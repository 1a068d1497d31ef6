"""The two legs of a call on one timeline (caller left, agent right), and the WAV framing
that streams them.

Pure and synchronous. Positions are sample indices from the call's origin. Audio is held
only until it can no longer change (`take(upto)`): the agent's audio is written ahead of
the time it plays, so a barge-in (`cut_agent`) can still remove what the caller never
heard. Whatever a leg leaves unwritten is silence, so both legs stay aligned.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import PCM16

CHANNELS = 2
# RIFF and data sizes while the length is unknown (what streaming writers put there);
# readers then read to the end of the file.
UNKNOWN_SIZE = 0xFFFFFFFF
_PCM, _MULAW = 1, 7  # WAVE format tags

WavEncoding = Literal["pcm16", "mulaw"]
Stereo = npt.NDArray[np.int16]  # shape (samples, 2): caller, agent


class WavFormatError(ValueError):
    """Bytes that are not a WAV header this module writes."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    """A stereo WAV layout: 16-bit PCM, or G.711 mu-law (the bytes telephony carries, so
    a mu-law recording is bit-exact to what was on the wire, at half the size)."""

    encoding: WavEncoding = "pcm16"
    rate: int = 8000

    @property
    def frame_bytes(self) -> int:
        """Bytes of one stereo sample."""
        return CHANNELS * (2 if self.encoding == "pcm16" else 1)

    @property
    def header_bytes(self) -> int:
        # Non-PCM WAV carries an 18-byte fmt chunk and a `fact` chunk (the sample count).
        return 44 if self.encoding == "pcm16" else 58

    def header(self, data_bytes: int | None) -> bytes:
        """The header of a file with `data_bytes` of samples (None: not known yet)."""
        known = data_bytes is not None
        data = data_bytes if data_bytes is not None else UNKNOWN_SIZE
        riff = self.header_bytes - 8 + data if known else UNKNOWN_SIZE
        block = self.frame_bytes
        if self.encoding == "pcm16":
            fmt = struct.pack("<HHIIHH", _PCM, CHANNELS, self.rate, self.rate * block, block, 16)
            extra = b""
        else:
            fmt = struct.pack(
                "<HHIIHHH", _MULAW, CHANNELS, self.rate, self.rate * block, block, 8, 0
            )
            frames = data // block if known else UNKNOWN_SIZE
            extra = b"fact" + struct.pack("<II", 4, frames)
        return (
            b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + extra + b"data" + struct.pack("<I", data)
        )  # fmt: skip

    def encode(self, frames: Stereo) -> bytes:
        """Interleaved sample bytes of `frames`."""
        if self.encoding == "pcm16":
            return frames.astype("<i2", copy=False).tobytes()
        return ulaw_encode(frames.reshape(-1))

    def decode(self, data: bytes) -> Stereo:
        """Samples of interleaved sample bytes (a trailing partial sample is dropped)."""
        data = data[: len(data) - len(data) % self.frame_bytes]
        if self.encoding == "pcm16":
            return np.frombuffer(data, dtype="<i2").astype(np.int16).reshape(-1, CHANNELS)
        return ulaw_decode(data).reshape(-1, CHANNELS)

    def duration_s(self, file_bytes: int) -> float:
        return (file_bytes - self.header_bytes) / (self.rate * self.frame_bytes)


def parse_wav_header(head: bytes) -> WavFormat:
    """The format of a stereo WAV file this module wrote, from its first bytes."""
    if len(head) < 44 or head[:4] != b"RIFF" or head[8:16] != b"WAVE" + b"fmt ":
        raise WavFormatError("not a RIFF/WAVE file")
    tag, channels, rate = struct.unpack("<HHI", head[20:28])
    if channels != CHANNELS or tag not in (_PCM, _MULAW):
        raise WavFormatError(f"unexpected WAV format {tag} with {channels} channels")
    return WavFormat("pcm16" if tag == _PCM else "mulaw", rate)


def read_wav(data: bytes) -> tuple[WavFormat, Stereo]:
    """The format and the samples of a whole stereo WAV file this module wrote."""
    wav = parse_wav_header(data)
    (declared,) = struct.unpack("<I", data[wav.header_bytes - 4 : wav.header_bytes])
    body = data[wav.header_bytes :]
    if declared != UNKNOWN_SIZE:
        body = body[:declared]
    return wav, wav.decode(body)


class _Lane:
    """One leg's samples from the committed position on, grown with silence as written."""

    def __init__(self) -> None:
        self.samples: PCM16 = np.zeros(0, dtype=np.int16)

    def write(self, offset: int, pcm: PCM16) -> None:
        if offset < 0:  # before the committed position: that part is out already
            pcm = pcm[-offset:]
            offset = 0
        end = offset + int(pcm.shape[0])
        if end > self.samples.shape[0]:
            grown = np.zeros(max(end, 2 * self.samples.shape[0]), dtype=np.int16)
            grown[: self.samples.shape[0]] = self.samples
            self.samples = grown
        self.samples[offset:end] = pcm

    def cut(self, offset: int) -> None:
        self.samples[max(0, offset) :] = 0

    def take(self, count: int) -> PCM16:
        out = np.zeros(count, dtype=np.int16)
        have = min(count, int(self.samples.shape[0]))
        out[:have] = self.samples[:have]
        self.samples = self.samples[count:] if count < self.samples.shape[0] else self.samples[:0]
        return out


class StereoTimeline:
    """Caller and agent audio placed by position; `take` hands out the final stereo samples.

    Order of calls: `write_caller` / `write_agent` / `cut_agent` in any order, `take(upto)`
    whenever the audio before `upto` is final (it never changes after), `take(end)` last.
    """

    def __init__(self) -> None:
        self._caller = _Lane()
        self._agent = _Lane()
        self.committed = 0  # samples handed out by `take`
        self.end = 0  # one past the last sample written on either leg

    def write_caller(self, position: int, pcm: PCM16) -> None:
        self._caller.write(position - self.committed, pcm)
        self.end = max(self.end, position + int(pcm.shape[0]))

    def write_agent(self, position: int, pcm: PCM16) -> None:
        self._agent.write(position - self.committed, pcm)
        self.end = max(self.end, position + int(pcm.shape[0]))

    def cut_agent(self, position: int) -> None:
        """Silence the agent from `position` on: the caller stopped hearing it there."""
        self._agent.cut(position - self.committed)

    def take(self, upto: int) -> Stereo:
        """The stereo samples from the committed position to `upto`."""
        count = max(0, upto - self.committed)
        frames = np.empty((count, CHANNELS), dtype=np.int16)
        if count:
            frames[:, 0] = self._caller.take(count)
            frames[:, 1] = self._agent.take(count)
            self.committed = upto
        return frames
