"""Recording room calls with LiveKit Egress: an audio-only room composite written to S3.

The gateway only asks: LiveKit's egress worker mixes the room and uploads the file, and
its `egress_ended` webhook says where the file went. `RoomRecording` starts the egress
beside a call (never before the greeting) and stops it at hang-up; `record_egress_ended`
stores the final state from the webhook. Requests are built and webhook payloads read by
pure functions, so tests check them without a server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from livekit import api

from gateway.errors import ConfigError
from gateway.recording.bucket import recording_key
from gateway.settings import Settings
from storage import CallRecord, CallStore, RecordingState, RecordingStatus
from telephony.errors import LiveKitError
from webhooks.call_events import CallEvents

log = logging.getLogger(__name__)

# A worker accepts a start within a few seconds; livekit-server with no worker answers
# 503 only after ~23 s, far too long for a call to wait on.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

_FAILED = (api.EgressStatus.EGRESS_FAILED, api.EgressStatus.EGRESS_ABORTED)
# A time limit stops the egress but the file it wrote up to then is uploaded.
_FINISHED = (api.EgressStatus.EGRESS_COMPLETE, api.EgressStatus.EGRESS_LIMIT_REACHED)


class EgressClient(Protocol):
    """The part of `LiveKitAdmin` a recording needs (errors are `LiveKitError`)."""

    async def start_room_composite_egress(
        self, request: api.RoomCompositeEgressRequest
    ) -> api.EgressInfo: ...

    async def stop_egress(self, egress_id: str) -> None: ...


def room_recording_request(
    settings: Settings, *, room_name: str, key: str
) -> api.RoomCompositeEgressRequest:
    """The StartRoomCompositeEgress request recording `room_name`'s audio to `key` on S3."""
    if not settings.s3_bucket:
        raise ConfigError("recording a room needs S3_BUCKET")
    secret = settings.s3_secret_access_key
    s3 = api.S3Upload(
        access_key=settings.s3_access_key_id or "",  # empty: the worker's own credentials
        secret=secret.get_secret_value() if secret is not None else "",
        region=settings.s3_region,
        endpoint=settings.s3_endpoint_url or "",
        bucket=settings.s3_bucket,
        # S3-compatible stores (MinIO, moto) rarely resolve bucket.host virtual hosts.
        force_path_style=bool(settings.s3_endpoint_url),
    )
    output = api.EncodedFileOutput(file_type=api.EncodedFileType.OGG, filepath=key, s3=s3)
    return api.RoomCompositeEgressRequest(
        room_name=room_name, audio_only=True, file_outputs=[output]
    )


def ended_state(previous: RecordingState, info: api.EgressInfo) -> RecordingState | None:
    """The recording's state once its egress ended as `info` says; None if not ended."""
    files = list(info.file_results) or ([info.file] if info.HasField("file") else [])
    result = files[0] if files else None
    if info.status in _FINISHED and result is not None and result.location:
        return RecordingState(
            kind="egress",
            status="complete",
            bucket=previous.bucket,
            key=result.filename or previous.key,
            egress_id=info.egress_id,
            location=result.location,
            size_bytes=int(result.size),
            duration_s=result.duration / 1e9,  # nanoseconds
        )
    if info.status in _FAILED or info.status in _FINISHED:
        status_name = api.EgressStatus.Name(info.status)
        return RecordingState(
            kind="egress",
            status="failed",
            bucket=previous.bucket,
            key=previous.key,
            egress_id=info.egress_id,
            error=info.error or f"{status_name} without a file",
        )
    return None


async def record_egress_ended(
    store: CallStore, info: api.EgressInfo, *, events: CallEvents | None = None
) -> RecordingState | None:
    """Store where the egress of `info` left its call's recording (the `egress_ended`
    webhook), and publish `recording.ready` if it is complete. An egress no call of ours
    holds is logged and ignored: LiveKit's webhooks go to every URL of the project, and
    other services may record too."""
    call = await store.get_call_by_egress(info.egress_id) if info.egress_id else None
    if call is None or call.recording is None:
        log.warning("egress ended for no known call", extra={"egress_id": info.egress_id})
        return None
    state = ended_state(call.recording, info)
    if state is None:
        log.warning(
            "egress_ended with a status that is not final",
            extra={"call_id": call.id, "egress_id": info.egress_id, "status": info.status},
        )
        return None
    await store.set_recording(call.id, state)
    log.info(
        "room recording %s",
        state.status,
        extra={
            "call_id": call.id,
            "egress_id": info.egress_id,
            "location": state.location,
            "error": state.error,
        },
    )
    if events is not None:
        await events.recording_ready(call, state)
    return state


class RoomRecording:
    """One room call's egress: started beside the call, stopped when it ends.

    Order: `start()` once the caller is there (returns at once; the request runs in a task
    bounded by `start_timeout_s`, so a slow or missing egress worker never delays the
    greeting), then `finish()` at hang-up (waits for that task, then stops the egress if it
    started; its `egress_ended` webhook completes the recording). Neither raises: a
    recording that cannot start is stored as failed and the call goes on.
    """

    def __init__(
        self,
        *,
        egress: EgressClient,
        store: CallStore,
        settings: Settings,
        room_name: str,
        call: CallRecord,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self._egress = egress
        self._store = store
        self._settings = settings
        self._room_name = room_name
        self._call = call
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.egress_id: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._start(), name=f"egress-{self._room_name}")

    async def _start(self) -> None:
        try:
            await self._start_egress()
        except Exception:  # the recording's task ends here; the call goes on without it
            log.exception("starting the room recording failed", extra={"room": self._room_name})

    async def _start_egress(self) -> None:
        key = recording_key(
            self._settings.recording_prefix,
            org_id=self._call.org_id,
            call_id=self._call.id,
            extension="ogg",
        )
        request = room_recording_request(self._settings, room_name=self._room_name, key=key)
        try:
            async with asyncio.timeout(self._start_timeout_s):
                info = await self._egress.start_room_composite_egress(request)
        except LiveKitError as exc:
            await self._failed(key, str(exc))
            return
        except TimeoutError:
            await self._failed(
                key, f"LiveKit Egress did not start within {self._start_timeout_s:g} s"
            )
            return
        if info.status in _FAILED:
            await self._failed(key, info.error or api.EgressStatus.Name(info.status))
            return
        self.egress_id = info.egress_id
        await self._store_state(key, "recording", egress_id=info.egress_id)
        log.info("room recording started", extra={"egress_id": info.egress_id, "key": key})

    async def _failed(self, key: str, error: str) -> None:
        log.warning("room recording did not start: %s", error, extra={"room": self._room_name})
        await self._store_state(key, "failed", error=error)

    async def _store_state(
        self,
        key: str,
        status: RecordingStatus,
        *,
        egress_id: str | None = None,
        error: str | None = None,
    ) -> None:
        state = RecordingState(
            kind="egress", status=status, bucket=self._settings.s3_bucket, key=key,
            egress_id=egress_id, error=error,
        )  # fmt: skip
        await self._store.set_recording(self._call.id, state)

    async def started(self) -> None:
        """Wait until the egress's first state (recording, or failed) is stored."""
        if self._task is not None:
            await asyncio.wait({self._task})  # a caller's timeout leaves the start running

    async def finish(self) -> None:
        """Stop the egress (its `egress_ended` webhook then gives the file's location)."""
        if self._task is None:
            return
        # The start is bounded by its own timeout: waiting keeps its egress id from being lost.
        await asyncio.gather(self._task, return_exceptions=True)
        if self.egress_id is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await self._egress.stop_egress(self.egress_id)
        except (LiveKitError, TimeoutError) as exc:
            log.warning(
                "stopping the room recording failed: %r", exc, extra={"egress_id": self.egress_id}
            )
            return
        log.info("room recording stopped", extra={"egress_id": self.egress_id})
