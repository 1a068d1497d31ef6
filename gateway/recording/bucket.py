"""The S3 side of recordings (boto3, in worker threads): multipart parts, completion, the
WAV header fixed once the length is known, salvage of a stopped gateway's upload, and
presigned links. Both recording paths (the gateway's own recorder and LiveKit Egress)
name their objects with `recording_key`.

Salvage is idempotent: an upload that is no longer open (`NoSuchUpload`) was completed
already, by its recorder or an earlier salvage whose state was never stored; the object
then is the recording, and only its state is written again. An open upload with no parts
is likewise done when its object is there (a short call is stored whole by one `put`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from audio.stereo import WavFormat, WavFormatError, parse_wav_header
from gateway.errors import RecordingError
from storage import CallRecord, RecordingState

log = logging.getLogger(__name__)


def _s3_code(exc: RecordingError) -> str | None:
    """The S3 error code behind `exc` (e.g. `NoSuchUpload`, `404`), if S3 answered one."""
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code", "")) or None
    return None


def recording_key(prefix: str, *, org_id: str | None, call_id: str, extension: str) -> str:
    """The object key of a call's recording (the same scheme for both recording paths)."""
    return f"{prefix}{org_id or 'default'}/{call_id}.{extension}"


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

    def close(self) -> None:
        """Close the S3 client's pooled connections (at the end of the gateway's life)."""
        self._s3.close()

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
        """The recording of `call` completed from the parts its stopped gateway had uploaded
        (or, if that upload was completed already, the object it made); None if the store
        cannot be reached now (the outbox asks again)."""
        state = call.recording
        assert state is not None
        try:
            try:
                return await self._complete_open_upload(state)
            except RecordingError as exc:
                if _s3_code(exc) != "NoSuchUpload":
                    raise
            return await self._completed_object(state)
        except RecordingError as exc:
            log.warning("salvaging the recording failed: %s", exc, extra={"call_id": call.id})
            return None

    async def _completed_object(self, state: RecordingState) -> RecordingState:
        """The state of a recording whose upload is gone: complete if its object is there
        (its WAV header given its final sizes if it still has the streaming one), failed
        if there is no object."""
        assert state.key is not None
        try:
            head = await self._call("head_object", Bucket=self.bucket, Key=state.key)
        except RecordingError as exc:
            if _s3_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            return state.model_copy(
                update={"status": "failed", "upload_id": None, "error": "the upload is gone"}
            )
        size = int(head["ContentLength"])
        out = await self._call(
            "get_object", Bucket=self.bucket, Key=state.key, Range=f"bytes=0-{min(size, 64) - 1}"
        )
        first = await asyncio.to_thread(out["Body"].read)
        try:
            wav = parse_wav_header(first)
        except WavFormatError as exc:
            raise RecordingError(f"{state.key} is not a recording of ours: {exc}") from exc
        if first[: wav.header_bytes] != wav.header(size - wav.header_bytes):
            # Completed, but the recorder stopped before its final header: write it now.
            part = await self._call("head_object", Bucket=self.bucket, Key=state.key, PartNumber=1)
            wav = await self.write_final_header(state.key, size, int(part["ContentLength"]))
        log.info("recording found complete in the store", extra={"key": state.key, "bytes": size})
        return state.model_copy(
            update={
                "status": "complete",
                "upload_id": None,
                "size_bytes": size,
                "duration_s": round(wav.duration_s(size), 3),
                "error": None,
            }
        )

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
            # A call shorter than one part is stored whole by `put`, and that put may land
            # after its recorder was given up on (S3 stalled at hang-up): the upload is then
            # left open with no parts although the recording is complete.
            await self.abort_upload(state.key, state.upload_id)
            found = await self._completed_object(state)
            if found.status == "complete":
                return found
            return found.model_copy(update={"error": "no part was uploaded"})
        await self._call(
            "complete_multipart_upload",
            Bucket=self.bucket, Key=state.key, UploadId=state.upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
            },
        )  # fmt: skip
        size = sum(int(p["Size"]) for p in parts)
        wav = await self.write_final_header(state.key, size, int(parts[0]["Size"]))
        return state.model_copy(
            update={
                "status": "complete",
                "upload_id": None,
                "size_bytes": size,
                "duration_s": round(wav.duration_s(size), 3),
                "salvaged": True,
            }
        )

    def presigned_url(self, key: str) -> str:
        """A time-limited GET link to `key` (signed locally: no request is made)."""
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self._url_ttl_s
        )
        return url
