"""Local text-to-speech through espeak-ng (Debian package): no keys, no network."""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from gateway.errors import ProviderError
from gateway.providers.sentence_speech import SentenceConnection

log = logging.getLogger(__name__)

_CHUNK_BYTES = 4096


class EspeakTTS:
    """Streams espeak-ng's 22.05 kHz PCM as the process writes it, one process per text."""

    name = "espeak-ng"
    sample_rate = 22050

    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 175) -> None:
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise ProviderError(
                "espeak-ng is not installed (Debian package espeak-ng)", provider=self.name
            )
        self._binary = binary
        self._voice = voice
        self._wpm = words_per_minute

    def output_rate(self, transport_rate: int) -> int:
        """espeak-ng always writes 22.05 kHz."""
        return self.sample_rate

    async def open(self, *, call_id: str, sample_rate: int) -> SentenceConnection:
        return SentenceConnection(lambda text: self.synthesize(text, call_id=call_id))

    async def synthesize(self, text: str, *, call_id: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        """Stream mono PCM16 chunks of `text` at 22.05 kHz."""
        proc = await asyncio.create_subprocess_exec(
            self._binary,
            "--stdout",
            "-v",
            self._voice,
            "-s",
            str(self._wpm),
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        try:
            header = await proc.stdout.readexactly(44)
            if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                raise ProviderError("espeak-ng wrote no WAV header", provider=self.name)
            (rate,) = struct.unpack("<I", header[24:28])
            if rate != self.sample_rate:
                raise ProviderError(
                    f"espeak-ng rate {rate} != {self.sample_rate}", provider=self.name
                )
            carry = b""
            while True:
                data = await proc.stdout.read(_CHUNK_BYTES)
                if not data:
                    break
                data = carry + data
                usable = len(data) - (len(data) % 2)
                carry = data[usable:]
                if usable:
                    yield np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
            await proc.wait()
        except asyncio.IncompleteReadError as exc:
            raise ProviderError("espeak-ng produced no audio", provider=self.name) from exc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
