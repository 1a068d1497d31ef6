"""Recordings of Twilio streams, made by the gateway and streamed to S3 while the call runs.

`CallRecorder` places both legs of one call on a `StereoTimeline` (caller left, agent
right), cuts the agent where a barge-in silenced it, and hands full parts to a multipart
upload as it goes: memory stays at about one part per call, and a crash loses at most the
part being filled. `RecordingBucket` is the S3 side (boto3, in worker threads): parts,
completion, the WAV header fixed once the length is known, salvage of a crashed gateway's
upload, and presigned links.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from audio.frames import PCM16
from audio.recorder import StereoTimeline, WavEncoding, WavFormat, WavFormatError, parse_wav_header
from gateway.settings import Settings
from storage import CallRecord, CallStore, RecordingState, RecordingStatus

log = logging.getLogger(__name__)

_UPLOAD_TRIES = 4
# The caller's audio drives commits; past this much silence from the caller the agent's
# side is committed anyway (Twilio sends media continuously, so this is a lost stream).
_MAX_HOLD_S = 1.0


def recording_key(prefix: str, *, org_id: str | None, call_id: str, extension: str) -> str:
    """The object key of a call's recording (the same scheme for both recording paths)."""
    return f"{prefix}{org_id or 'default'}/{call_id}.{extension}"


class RecordingError(Exception):
    """The S3 store refused or could not be reached."""


class RecordingBucket:
    """S3 (or any S3-compatible store) holding recordings; every call is a thread hop."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        prefix: str,
        url_ttl_s: int,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._url_ttl_s = url_ttl_s
        self._s3: Any = boto3.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def key_for(self, org_id: str | None, call_id: str, extension: str) -> str:
        return recording_key(self.prefix, org_id=org_id, call_id=call_id, extension=extension)

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(getattr(self._s3, operation), **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise RecordingError(f"S3 {operation} failed: {exc}") from exc

    async def begin_upload(self, key: str) -> str:
        out = await self._call(
            "create_multipart_upload", Bucket=self.bucket, Key=key, ContentType="audio/wav"
        )
        return str(out["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        out = await self._call(
            "upload_part",
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
        )  # fmt: skip
        return str(out["ETag"])

    async def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        await self._call(
            "complete_multipart_upload",
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
        )  # fmt: skip

    async def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(RecordingError):
            await self._call(
                "abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    async def put(self, key: str, data: bytes) -> None:
        await self._call(
            "put_object", Bucket=self.bucket, Key=key, Body=data, ContentType="audio/wav"
        )

    async def write_final_header(self, key: str, size: int, head_bytes: int) -> WavFormat:
        """Give a completed streaming WAV object its real sizes: its first `head_bytes` are
        uploaded again with the header patched, the rest copied inside S3 (no download).
        Returns the file's format, read from its header."""
        head_bytes = min(head_bytes, size)
        out = await self._call(
            "get_object", Bucket=self.bucket, Key=key, Range=f"bytes=0-{head_bytes - 1}"
        )
        head = await asyncio.to_thread(out["Body"].read)
        try:
            wav = parse_wav_header(head)
        except WavFormatError as exc:
            raise RecordingError(f"{key} is not a recording of ours: {exc}") from exc
        head = wav.header(size - wav.header_bytes) + head[wav.header_bytes :]
        if size == head_bytes:
            await self.put(key, head)
            return wav
        upload_id = await self.begin_upload(key)
        try:
            first = await self.upload_part(key, upload_id, 1, head)
            copied = await self._call(
                "upload_part_copy",
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=2,
                CopySource={"Bucket": self.bucket, "Key": key},
                CopySourceRange=f"bytes={head_bytes}-{size - 1}",
            )  # fmt: skip
            await self.complete_upload(key, upload_id, [first, copied["CopyPartResult"]["ETag"]])
        except RecordingError:
            await self.abort_upload(key, upload_id)
            raise
        return wav

    async def salvage(self, call: CallRecord) -> RecordingState | None:
        """The recording of `call` completed from the parts its stopped gateway had uploaded;
        None if the store cannot be reached now (the outbox asks again)."""
        state = call.recording
        assert state is not None
        try:
            return await self._complete_open_upload(state)
        except RecordingError as exc:
            log.warning("salvaging the recording failed: %s", exc, extra={"call_id": call.id})
            return None

    def url(self, state: RecordingState) -> str | None:
        """A presigned link to a complete recording in this bucket."""
        if state.status != "complete" or state.key is None or state.bucket != self.bucket:
            return None
        return self.presigned_url(state.key)

    async def _complete_open_upload(self, state: RecordingState) -> RecordingState:
        assert state.key is not None and state.upload_id is not None
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = await self._call(
                "list_parts",
                Bucket=self.bucket, Key=state.key, UploadId=state.upload_id,
                PartNumberMarker=marker,
            )  # fmt: skip
            parts.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        parts.sort(key=lambda p: int(p["PartNumber"]))
        if not parts:
            await self.abort_upload(state.key, state.upload_id)
            return dataclasses.replace(
                state, status="failed", upload_id=None, error="no part was uploaded"
            )
        await self._call(
            "complete_multipart_upload",
            Bucket=self.bucket, Key=state.key, UploadId=state.upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
            },
        )  # fmt: skip
        size = sum(int(p["Size"]) for p in parts)
        wav = await self.write_final_header(state.key, size, int(parts[0]["Size"]))
        return dataclasses.replace(
            state,
            status="complete",
            upload_id=None,
            size_bytes=size,
            duration_s=round(wav.duration_s(size), 3),
            salvaged=True,
        )

    def presigned_url(self, key: str) -> str:
        """A time-limited GET link to `key` (signed locally: no request is made)."""
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self._url_ttl_s
        )
        return url


def recording_bucket(settings: Settings) -> RecordingBucket | None:
    """The recordings bucket from settings, or None when S3_BUCKET is unset."""
    if settings.s3_bucket is None:
        return None
    secret = settings.s3_secret_access_key
    return RecordingBucket(
        bucket=settings.s3_bucket,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        prefix=settings.recording_prefix,
        url_ttl_s=settings.recording_url_ttl_s,
    )


class CallRecorder:
    """Records one Twilio stream: caller left, agent right, on the call's timeline.

    Order of calls: `start()` once (it opens the upload in the background), then
    `caller_audio` / `agent_audio` / `agent_cleared` as the call runs (synchronous: they
    never wait for S3), then `finish()` once. Times are `clock()` readings (the transport's
    monotonic clock); the caller's position comes from Twilio's media timestamps.
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

    def _position(self, at: float) -> int:
        return max(0, round((at - self._origin) * self._rate))

    def start(self) -> None:
        self._uploader = asyncio.create_task(self._upload_parts(), name="recording-upload")

    def caller_audio(self, timestamp_ms: int, pcm: PCM16) -> None:
        """A caller frame that Twilio stamped `timestamp_ms` after the stream started."""
        position = timestamp_ms * self._rate // 1000
        self._timeline.write_caller(position, pcm)
        self._caller_end = max(self._caller_end, position + int(pcm.shape[0]))
        now = self._position(self._clock())
        # Before `now` the agent's side is final (it is written ahead of when it plays).
        upto = max(min(self._caller_end, now), now - int(_MAX_HOLD_S * self._rate))
        self._append(self._wav.encode(self._timeline.take(upto)))

    def agent_audio(self, due: float, pcm: PCM16) -> None:
        """Agent audio due to play at `due` (the pacer's schedule)."""
        self._timeline.write_agent(self._position(due), pcm)

    def agent_cleared(self, at: float) -> None:
        """A barge-in cleared the agent at `at`: nothing it sent for later was heard."""
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
            await self._store.set_recording(self.call_id, self._state("recording"))
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
