"""SIP callers for the rooms bench played by `tools/sip-caller` (Go: server-sdk-go and pion,
as LiveKit's SIP bridge joins a room), many in one process, driven over its stdin/stdout.

The Python SDK callers (`tests/livekit_caller.py`) encode and decode Opus in libwebrtc and
take every frame through Python: 16 of them took 71-76 % of a core of the two the gateway
is measured on. These send Opus packets encoded once here (libopus through ctypes) and
tell the agent's voice from its silence by packet size (it publishes with DTX), so their
cost is RTP, SRTP and the Go runtime. `GoRoomCaller` has the bench's side of
`RoomCaller`: join, the agent's audio and silence, say, leave.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from audio.resample import StreamResampler

ROOT = Path(__file__).resolve().parents[1]
OPUS_RATE = 48000
OPUS_FRAME = OPUS_RATE // 50  # 20 ms
OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002


def build_sip_caller() -> Path:
    """The Go caller's binary, built into the per-user cache once per source change."""
    script = ROOT / "scripts" / "ensure-sip-caller.sh"
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip())


def opus_packets(pcm16k: np.ndarray, *, bitrate: int = 32000) -> list[bytes]:
    """`pcm16k` (16 kHz mono int16) as 20 ms Opus packets at 48 kHz, encoded by libopus."""
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    lib = ctypes.CDLL(name)
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.opus_encode.restype = ctypes.c_int
    lib.opus_encode.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int16),
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int32,
    ]
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encoder_destroy.restype = None
    error = ctypes.c_int()
    encoder = lib.opus_encoder_create(OPUS_RATE, 1, OPUS_APPLICATION_VOIP, ctypes.byref(error))
    if not encoder or error.value != 0:
        raise RuntimeError(f"opus_encoder_create failed ({error.value})")
    try:
        lib.opus_encoder_ctl(ctypes.c_void_p(encoder), OPUS_SET_BITRATE, ctypes.c_int(bitrate))
        resampler = StreamResampler(16000, OPUS_RATE)
        pcm = np.concatenate([resampler.process(pcm16k), resampler.flush()]).astype(np.int16)
        pcm = np.concatenate([pcm, np.zeros(-pcm.size % OPUS_FRAME, dtype=np.int16)])
        packets = []
        buffer = ctypes.create_string_buffer(1500)
        for offset in range(0, pcm.size, OPUS_FRAME):
            chunk = np.ascontiguousarray(pcm[offset : offset + OPUS_FRAME])
            samples = chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
            n = lib.opus_encode(encoder, samples, OPUS_FRAME, buffer, len(buffer))
            if n < 0:
                raise RuntimeError(f"opus_encode failed ({n})")
            packets.append(buffer.raw[:n])
        return packets
    finally:
        lib.opus_encoder_destroy(encoder)


def write_clip(path: Path, packets: list[bytes]) -> None:
    """The packet file `tools/sip-caller` reads: each packet after its 16-bit length."""
    with path.open("wb") as out:
        for packet in packets:
            out.write(len(packet).to_bytes(2, "big") + packet)


class GoCallers:
    """One `tools/sip-caller` process and the callers it plays (one per room)."""

    def __init__(self, binary: Path, clips: list[Path], log: Path) -> None:
        """`log`: where the process's own log (pion's, the SDK's) goes."""
        self._binary = binary
        self._clips = clips
        self._log = log
        trace = os.environ.get("BENCH_GO_EVENTS")  # a file for every event, to look into
        self._trace = Path(trace).open("ab") if trace else None
        self._process: asyncio.subprocess.Process | None = None
        self._callers: dict[str, GoRoomCaller] = {}
        self._reader: asyncio.Task[None] | None = None
        self._next = 0

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(self._binary),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        self._reader = asyncio.create_task(self._read())
        self.send({"op": "clips", "paths": [str(p) for p in self._clips]})

    def send(self, command: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")

    def caller(self) -> GoRoomCaller:
        self._next += 1
        caller = GoRoomCaller(self, f"c{self._next}")
        self._callers[caller.id] = caller
        return caller

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            async for line in self._process.stdout:
                if self._trace is not None:
                    self._trace.write(line)
                event = json.loads(line)
                caller = self._callers.get(event.get("id", ""))
                if caller is not None:
                    caller.on_event(event)
        finally:  # the process ended (or spoke nonsense): nobody is in a room any more
            for caller in self._callers.values():
                caller.on_event({"ev": "left"})

    async def aclose(self) -> None:
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._trace is not None:
            self._trace.close()


class GoRoomCaller:
    """One caller of a `GoCallers` process; times are `time.monotonic()` seconds."""

    def __init__(self, callers: GoCallers, caller_id: str) -> None:
        self._callers = callers
        self.id = caller_id
        self.connected_at: float | None = None
        self.left = asyncio.Event()
        self._connected = asyncio.Event()
        self._error: str | None = None
        self._speaking = False
        self._loud_since = float("-inf")
        self._last_voice = float("-inf")
        self._changed = asyncio.Event()  # set by every loud / quiet event
        self._said = asyncio.Event()
        self._said.set()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["ev"]
        if kind == "connected":
            self.connected_at = float(event["t"])
            self._connected.set()
        elif kind == "failed":
            self._error = str(event.get("error"))
            self._connected.set()
        elif kind == "loud":
            self._speaking, self._loud_since = True, float(event["t"])
            self._last_voice = self._loud_since
            self._changed.set()
        elif kind == "quiet":
            self._speaking, self._last_voice = False, float(event["t"])
            self._changed.set()
        elif kind == "said":
            self._said.set()
        elif kind == "left":
            self.left.set()
            self._connected.set()
            self._changed.set()
            self._said.set()

    async def join(self, url: str, token: str) -> None:
        self._callers.send({"op": "join", "id": self.id, "url": url, "token": token})
        try:
            await asyncio.wait_for(self._connected.wait(), 60)
        except TimeoutError:
            self._error = "no answer in 60 s"
        if self._error is not None or self.connected_at is None or self.left.is_set():
            self._callers.send({"op": "leave", "id": self.id})
            raise AssertionError(f"the caller could not join: {self._error}")

    def say(self, clip: int) -> None:
        self._said.clear()
        self._callers.send({"op": "say", "id": self.id, "clip": clip})

    async def wait_said(self) -> None:
        await self._said.wait()
        if self.left.is_set():
            raise AssertionError("the call ended while the caller spoke")

    async def wait_agent_audio(self, within_s: float = 20.0) -> float:
        """Wait until the agent is heard; when its audio began, never earlier than this call."""
        start = time.monotonic()
        deadline = start + within_s
        while not self._speaking:
            if self.left.is_set():
                raise AssertionError("the call ended before the agent spoke")
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the agent did not speak")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                continue
        return max(self._loud_since, start)

    async def wait_agent_silent(self, quiet_s: float = 0.8, within_s: float = 40.0) -> float:
        """Wait until the agent has been quiet for `quiet_s`; returns when its audio stopped."""
        deadline = time.monotonic() + within_s
        while True:
            now = time.monotonic()
            if not self._speaking and now - self._last_voice >= quiet_s:
                return max(self._last_voice, 0.0)
            if now >= deadline:
                raise AssertionError("the agent did not stop speaking")
            if self.left.is_set():
                raise AssertionError("the call ended while the agent spoke")
            self._changed.clear()
            wait = deadline - now
            if not self._speaking:
                wait = min(wait, quiet_s - (now - self._last_voice))
            try:
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.001))
            except TimeoutError:
                pass

    async def leave(self) -> None:
        self._callers.send({"op": "leave", "id": self.id})
        try:
            await asyncio.wait_for(self.left.wait(), 10)
        except TimeoutError:
            pass
