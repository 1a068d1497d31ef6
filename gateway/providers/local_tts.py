"""Local text-to-speech through libespeak-ng (Debian package espeak-ng): no keys, no network.

The library is called in-process through ctypes, not by spawning `espeak-ng`: a gateway
serving LiveKit rooms has native threads (the WebRTC SDK's), and `fork()` in a threaded
process can leave the child stuck on a lock it inherited, with the parent waiting on it
forever (seen: eight rooms, one sentence, a hung gateway). In-process synthesis also
saves a process start per sentence.

libespeak-ng keeps global state, so one worker thread runs every synthesis in turn; it
runs ~50x faster than real time, and audio is handed to the event loop as it is made.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from gateway.errors import ProviderError
from gateway.providers.sentence_speech import SentenceConnection

log = logging.getLogger(__name__)

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_BUFFER_MS = 100
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """The process-wide libespeak-ng, initialised once, used from one thread."""

    _instance: _Espeak | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as exc:
            raise ProviderError(
                "libespeak-ng is not installed (Debian package espeak-ng)", provider="espeak-ng"
            ) from exc
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, 0)
        if rate <= 0:
            raise ProviderError("libespeak-ng failed to initialise", provider="espeak-ng")
        self.sample_rate = int(rate)
        self._sink: _Sink | None = None
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # kept alive with the instance
        lib.espeak_SetSynthCallback(self._callback)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")

    @classmethod
    def get(cls) -> _Espeak:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: int) -> int:
        sink = self._sink
        if sink is None or sink.cancelled:
            return 1  # abort this synthesis
        if count > 0:
            sink.push(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16))
        return 0

    def synthesize(self, text: str, voice: str, wpm: int, sink: _Sink) -> None:
        """Run one synthesis on the worker thread; audio goes to `sink` as it is made."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ProviderError(f"espeak-ng has no voice {voice!r}", provider="espeak-ng")
        lib.espeak_SetParameter(_ESPEAK_RATE, wpm, 0)
        data = text.encode()
        self._sink = sink
        try:
            status = lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            self._sink = None
        if status != _EE_OK and not sink.cancelled:
            raise ProviderError(f"espeak-ng failed ({status})", provider="espeak-ng")


class _Sink:
    """Hands chunks from the synthesis thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[npt.NDArray[np.int16] | None] = asyncio.Queue()
        self.cancelled = False

    def push(self, chunk: npt.NDArray[np.int16] | None) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, chunk)


class EspeakTTS:
    """Streams libespeak-ng's 22.05 kHz PCM as it is synthesised."""

    name = "espeak-ng"
    sample_rate = 22050

    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 175) -> None:
        self._engine = _Espeak.get()
        self.sample_rate = self._engine.sample_rate
        self._voice = voice
        self._wpm = words_per_minute

    def output_rate(self, transport_rate: int) -> int:
        """espeak-ng always makes 22.05 kHz."""
        return self.sample_rate

    async def open(self, *, call_id: str, sample_rate: int) -> SentenceConnection:
        return SentenceConnection(lambda text: self.synthesize(text, call_id=call_id))

    async def synthesize(self, text: str, *, call_id: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        """Stream mono PCM16 chunks of `text` at 22.05 kHz."""
        loop = asyncio.get_running_loop()
        sink = _Sink(loop)

        def run() -> None:
            try:
                self._engine.synthesize(text, self._voice, self._wpm, sink)
            finally:
                sink.push(None)

        job = loop.run_in_executor(self._engine.worker, run)
        produced = False
        try:
            while (chunk := await sink.queue.get()) is not None:
                produced = True
                yield chunk
            await job  # raises what the synthesis raised
        finally:
            sink.cancelled = True
            if not job.done():
                await asyncio.shield(job)
        if not produced and text.strip():
            raise ProviderError("espeak-ng produced no audio", provider=self.name)
