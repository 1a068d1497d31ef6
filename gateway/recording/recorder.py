"""The gateway's own recorder of Twilio streams, streamed to S3 while the call runs.

`CallRecorder` places both legs of one call on a `StereoTimeline` (caller left, agent
right), cuts the agent where a barge-in silenced it, and hands full parts to a multipart
upload as it goes: memory stays at about one part per call, and a crash loses at most the
part being filled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from audio.frames import PCM16
from audio.stereo import StereoTimeline, WavEncoding, WavFormat
from gateway.errors import RecordingError
from gateway.recording.bucket import RecordingBucket
from storage import CallStore, RecordingState, RecordingStatus, StorageError

log = logging.getLogger(__name__)

_UPLOAD_TRIES = 4
# The caller's audio drives commits; past this much silence from the caller the agent's
# side is committed anyway (Twilio sends media continuously, so this is a lost stream).
_MAX_HOLD_S = 1.0
# Caller audio is never placed further than this past the real clock, whatever its media
# timestamp says (the stream driver refuses such a stream; this is defence in depth).
_MAX_AHEAD_S = 3.0


class CallRecorder:
    """Records one Twilio stream: caller left, agent right, on the call's timeline.

    Order of calls: `start()` once (it opens the upload in the background), then
    `caller_audio` / `agent_audio` / `agent_cleared` as the call runs (synchronous: they
    never wait for S3), `started()` before the call's final write, then `finish()` once;
    audio that arrives once `finish()` has begun is ignored (the recording ends there, and
    a part cut then would come after the upload's last).
    Times are `clock()` readings (the transport's monotonic clock); the caller's position
    comes from Twilio's media timestamps.
    """

    def __init__(
        self,
        *,
        call_id: str,
        key: str,
        bucket: RecordingBucket,
        store: CallStore,
        rate: int = 8000,
        encoding: WavEncoding = "pcm16",
        part_bytes: int = 5 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        origin: float | None = None,
    ) -> None:
        self.call_id = call_id
        self.key = key
        self._bucket = bucket
        self._store = store
        self._rate = rate
        self._wav = WavFormat(encoding, rate)
        self._part_bytes = part_bytes - part_bytes % self._wav.frame_bytes
        self._clock = clock
        self._origin = clock() if origin is None else origin  # when the stream started
        self._timeline = StereoTimeline()
        self._caller_end = 0
        self._buffer = bytearray(self._wav.header(None))
        self._size = 0  # bytes handed to the upload so far, header included
        self._parts: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._etags: list[str] = []
        self._upload_id: str | None = None
        self._failed: str | None = None
        self._uploader: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()  # the open upload is stored (or never will be)
        self._finishing = False  # `finish()` has begun: no more audio

    def _position(self, at: float) -> int:
        return max(0, round((at - self._origin) * self._rate))

    def start(self) -> None:
        self._uploader = asyncio.create_task(self._upload_parts(), name="recording-upload")

    async def started(self) -> None:
        """Wait until the open upload is stored on the call (so the call's report waits for
        the recording), or the upload could not begin."""
        await self._registered.wait()

    def caller_audio(self, timestamp_ms: int, pcm: PCM16) -> None:
        """A caller frame that Twilio stamped `timestamp_ms` after the stream started; placed
        there, but never more than a few seconds past the real clock."""
        if self._finishing:
            return
        now = self._position(self._clock())
        position = min(timestamp_ms * self._rate // 1000, now + int(_MAX_AHEAD_S * self._rate))
        self._timeline.write_caller(position, pcm)
        self._caller_end = max(self._caller_end, position + int(pcm.shape[0]))
        # Before `now` the agent's side is final (it is written ahead of when it plays).
        upto = max(min(self._caller_end, now), now - int(_MAX_HOLD_S * self._rate))
        self._append(self._wav.encode(self._timeline.take(upto)))

    def agent_audio(self, due: float, pcm: PCM16) -> None:
        """Agent audio due to play at `due` (the pacer's schedule)."""
        if not self._finishing:
            self._timeline.write_agent(self._position(due), pcm)

    def agent_cleared(self, at: float) -> None:
        """A barge-in cleared the agent at `at`: nothing it sent for later was heard."""
        if not self._finishing:
            self._timeline.cut_agent(self._position(at))

    def _append(self, data: bytes) -> None:
        if not data or self._failed:
            return
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            self._size += len(part)
            self._parts.put_nowait(part)

    async def _retrying(self, what: str, action: Callable[[], Any]) -> Any:
        for attempt in range(1, _UPLOAD_TRIES + 1):
            try:
                return await action()
            except RecordingError as exc:
                if attempt == _UPLOAD_TRIES:
                    raise
                log.warning("recording %s failed, retrying: %s", what, exc)
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def _upload_parts(self) -> None:
        """The upload task: open the multipart upload, store where it is, send parts in order."""
        try:
            upload_id = await self._retrying("start", lambda: self._bucket.begin_upload(self.key))
            self._upload_id = upload_id
            try:
                await self._store.set_recording(self.call_id, self._state("recording"))
            except StorageError as exc:  # the parts go on; `finish` stores the final state
                log.warning("storing the open recording failed: %s", exc)
            self._registered.set()
            while (part := await self._parts.get()) is not None:
                number = len(self._etags) + 1
                etag = await self._retrying(
                    f"part {number}",
                    functools.partial(self._bucket.upload_part, self.key, upload_id, number, part),
                )
                self._etags.append(etag)
        except RecordingError as exc:
            self._failed = str(exc)
            log.error("recording stopped: %s", exc, extra={"call_id": self.call_id})
        finally:
            self._registered.set()

    def _state(self, status: RecordingStatus, **fields: Any) -> RecordingState:
        return RecordingState(
            kind="gateway",
            status=status,
            bucket=self._bucket.bucket,
            key=self.key,
            upload_id=self._upload_id if status == "recording" else None,
            **fields,
        )

    async def finish(self) -> RecordingState:
        """Flush what is left, complete the object and store the final state."""
        self._finishing = True
        end = max(self._timeline.end, self._timeline.committed)
        self._append(self._wav.encode(self._timeline.take(end)))
        self._parts.put_nowait(None)
        if self._uploader is not None:
            await self._uploader
        state = await self._complete()
        try:
            await self._store.set_recording(self.call_id, state)
        except Exception:  # the call's own finalisation goes on; salvage covers the rest
            log.exception("storing the recording state failed")
        log.info(
            "recording finished",
            extra={"status": state.status, "bytes": state.size_bytes, "key": self.key},
        )
        return state

    async def _complete(self) -> RecordingState:
        last = bytes(self._buffer)
        self._buffer.clear()
        upload_id = self._upload_id
        if upload_id is None:
            return self._state("failed", error=self._failed or "the upload never started")
        # After a failed part only the parts before it are kept (all full parts).
        size = (
            self._size + len(last) if self._failed is None else len(self._etags) * self._part_bytes
        )
        try:
            if self._failed is None and not self._etags:
                # The whole call fits one part: one object with its final header.
                header = self._wav.header(size - self._wav.header_bytes)
                whole = header + last[self._wav.header_bytes :]
                await self._bucket.put(self.key, whole)
                await self._bucket.abort_upload(self.key, upload_id)
                return self._complete_state(size)
            if not self._etags:
                await self._bucket.abort_upload(self.key, upload_id)
                return self._state("failed", error=self._failed)
            if self._failed is None and last:
                number = len(self._etags) + 1
                self._etags.append(
                    await self._retrying(
                        "last part",
                        lambda: self._bucket.upload_part(self.key, upload_id, number, last),
                    )
                )
            await self._bucket.complete_upload(self.key, upload_id, self._etags)
        except RecordingError as exc:
            log.error("completing the recording failed: %s", exc)
            # The parts stay with the open upload: the outbox salvages them later.
            return self._state("recording", error=str(exc))
        try:
            await self._bucket.write_final_header(self.key, size, self._part_bytes)
        except RecordingError as exc:  # the object plays as a streaming WAV all the same
            log.warning("the recording keeps its streaming header: %s", exc)
        return self._complete_state(size)

    def _complete_state(self, size: int) -> RecordingState:
        return self._state(
            "complete",
            size_bytes=size,
            duration_s=round(self._wav.duration_s(size), 3),
            error=self._failed,
        )
