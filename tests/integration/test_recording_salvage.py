"""Salvage of recordings by the webhook outbox, against the real moto S3 server and the
real database: a salvage that keeps failing is retried with a per-call backoff (not at
every poll), an upload completed already (`NoSuchUpload`) counts as done when its object
is in the store, and a recording whose final state could not be stored ends `complete`
with its report carrying the recording link."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from audio.stereo import WavFormat, read_wav
from gateway.errors import RecordingError
from gateway.recording.bucket import RecordingBucket
from gateway.recording.recorder import CallRecorder
from storage import CallRecord, CallStore, Database, RecordingState, StorageError
from tests.integration.test_recording import FakeClock, _bucket, _run_call
from tests.integration.test_webhook_outbox import FAST, finished_call, receiver
from tests.s3_server import TEST_PART_MIN_BYTES, S3Server
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard

pytestmark = pytest.mark.timeout(120)


async def _holds(outcome: object | Awaitable[object]) -> bool:
    return bool(await outcome if inspect.isawaitable(outcome) else outcome)


class CountedSalvage:
    """The real bucket, with every salvage the outbox asks for counted."""

    def __init__(self, bucket: RecordingBucket) -> None:
        self.bucket = bucket
        self.calls: list[float] = []

    async def salvage(self, call: CallRecord) -> RecordingState | None:
        self.calls.append(time.monotonic())
        return await self.bucket.salvage(call)

    def url(self, state: RecordingState) -> str | None:
        return self.bucket.url(state)


class FinalStateLost:
    """The call store, except that storing a recording's final state fails (the database
    went away between the upload's completion and its state write)."""

    def __init__(self, store: CallStore) -> None:
        self._store = store

    async def set_recording(self, call_id: str, state: RecordingState) -> None:
        if state.status != "recording":
            raise StorageError("the database is unavailable")
        await self._store.set_recording(call_id, state)


def _outbox(database: Database, recordings: CountedSalvage, policy: RetryPolicy) -> WebhookOutbox:
    """An outbox that polls every 20 ms, salvages at once after the call (no grace) and
    backs salvage off by `policy`."""
    return WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]),
        policy=FAST,
        timeout_s=2.0,
        poll_s=0.02,
        recordings=recordings,
        recording_grace_s=0.0,
        salvage_policy=policy,
    )


async def _run_until(outbox: WebhookOutbox, done: Callable[[], object | Awaitable[object]]) -> None:
    """Run the outbox until `done()` (e.g. the report reached the receiver), 60 s at most."""
    task = asyncio.create_task(outbox.run(), name="outbox")
    try:
        deadline = time.monotonic() + 60
        while not await _holds(done()):
            assert time.monotonic() < deadline, "the outbox never got there"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.aclose()


async def test_a_failing_salvage_backs_off_per_call(
    database: Database, s3_server: S3Server
) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        call_id = await finished_call(database, org.id, rx.url)
        # The call's bucket is not there (yet): every salvage fails, as with S3 away.
        bucket = _bucket(s3_server, "missing-" + uuid.uuid4().hex[:8])
        await database.calls.set_recording(
            call_id,
            RecordingState(
                kind="gateway",
                status="recording",
                bucket=bucket.bucket,
                key=bucket.key_for(org.id, call_id, "wav"),
                upload_id="upload-of-a-stopped-gateway",
            ),
        )
        counted = CountedSalvage(bucket)
        policy = RetryPolicy(base_s=0.4, cap_s=2.0)
        outbox = _outbox(database, counted, policy)

        async def five_stored() -> bool:
            recording = (await database.calls.get_call(call_id, with_turns=False)).recording
            return recording is not None and recording.salvage_attempts >= 5

        await _run_until(outbox, five_stored)
        assert rx.requests == []  # the report still waits for its recording

    # Polled every 20 ms, yet each salvage waited at least the lower half of its backoff
    # (equal jitter) after the one before it: 0.2, 0.4, 0.8, 1.0 s at the least. A busy
    # machine only makes the waits longer.
    attempts = counted.calls
    for k in range(1, len(attempts)):
        least = min(policy.cap_s, policy.base_s * 2.0 ** (k - 1)) / 2
        assert attempts[k] - attempts[k - 1] >= least - 0.05, (k, attempts)
    stored = (await database.calls.get_call(call_id, with_turns=False)).recording
    assert stored is not None and stored.status == "recording"
    # Every salvage begun was stored, but for one the outbox may have begun as it stopped.
    assert stored.salvage_attempts >= 5
    assert len(attempts) - stored.salvage_attempts in (0, 1), (stored, attempts)
    assert stored.salvage_next_at is not None and stored.salvage_next_at > datetime.now(UTC)


class NoFinalHeader(RecordingBucket):
    """The real bucket, except that the recorder's final WAV header never gets written (the
    gateway stopped right after completing the upload)."""

    async def write_final_header(self, key: str, size: int, head_bytes: int) -> WavFormat:
        raise RecordingError("S3 put_object failed: the gateway stopped")


@pytest.mark.parametrize("header", ["final", "streaming"])
async def test_a_complete_object_with_a_stale_recording_state_ends_complete(
    database: Database, s3_server: S3Server, s3_bucket: str, header: str
) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        call_id = await finished_call(database, org.id, rx.url)
        bucket = _bucket(s3_server, s3_bucket)
        key = bucket.key_for(org.id, call_id, "wav")
        clock = FakeClock()
        recorder_bucket = bucket
        if header == "streaming":
            recorder_bucket = NoFinalHeader(
                bucket=s3_bucket, region=s3_server.region, endpoint_url=s3_server.endpoint_url,
                access_key_id=s3_server.access_key_id,
                secret_access_key=s3_server.secret_access_key, prefix="recordings/",
                url_ttl_s=600,
            )  # fmt: skip
        recorder = CallRecorder(
            call_id=call_id,
            key=key,
            bucket=recorder_bucket,
            store=FinalStateLost(database.calls),  # type: ignore[arg-type]
            part_bytes=TEST_PART_MIN_BYTES,
            clock=clock,
        )
        recorder.start()
        await _run_call(recorder, clock, seconds=2.0, cut_at=1.0)
        finished = await recorder.finish()  # the object is complete in S3 ...
        assert finished.status == "complete" and finished.size_bytes
        stale = (await database.calls.get_call(call_id, with_turns=False)).recording
        assert stale is not None and stale.status == "recording"  # ... but not in the database
        assert stale.upload_id

        counted = CountedSalvage(bucket)
        await _run_until(
            _outbox(database, counted, RetryPolicy(base_s=0.4, cap_s=2.0)), lambda: rx.requests
        )

    stored = (await database.calls.get_call(call_id, with_turns=False)).recording
    assert stored is not None and stored.status == "complete" and stored.upload_id is None
    assert stored.size_bytes == finished.size_bytes
    assert stored.duration_s == finished.duration_s
    assert len(counted.calls) == 1  # found complete at the first salvage
    report = json.loads(rx.requests[0].body)["call"]["recording"]
    assert report["status"] == "complete" and report["size_bytes"] == finished.size_bytes
    assert report["url"] and key in report["url"]
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert len(body) == finished.size_bytes
    wav, samples = read_wav(body)  # the header now declares the real sizes
    assert body[: wav.header_bytes] == wav.header(len(body) - wav.header_bytes)
    assert samples.shape[0] == 2 * 8000


async def test_an_upload_gone_with_no_object_fails_at_once_and_the_report_goes_out(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        call_id = await finished_call(database, org.id, rx.url)
        bucket = _bucket(s3_server, s3_bucket)
        key = bucket.key_for(org.id, call_id, "wav")
        upload_id = await bucket.begin_upload(key)
        await bucket.abort_upload(key, upload_id)  # aborted, nothing was ever completed
        await database.calls.set_recording(
            call_id,
            RecordingState(
                kind="gateway", status="recording", bucket=s3_bucket, key=key, upload_id=upload_id
            ),
        )
        counted = CountedSalvage(bucket)
        await _run_until(
            _outbox(database, counted, RetryPolicy(base_s=0.4, cap_s=2.0)), lambda: rx.requests
        )
    assert len(counted.calls) == 1
    report = json.loads(rx.requests[0].body)["call"]["recording"]
    assert report["status"] == "failed" and report["url"] is None


class PutLandsLate(RecordingBucket):
    """The real bucket, except that a whole-object `put` is held until `release` is set and
    then lands even if its caller was cancelled meanwhile (as a boto3 call in its worker
    thread does when S3 stalls and comes back)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.landing: asyncio.Task[None] | None = None

    async def put(self, key: str, data: bytes) -> None:
        self.landing = asyncio.create_task(self._put_late(key, data), name="late-put")
        await asyncio.shield(self.landing)

    async def _put_late(self, key: str, data: bytes) -> None:
        await self.release.wait()
        await super().put(key, data)


async def test_a_short_call_put_after_its_recorder_was_given_up_on_is_salvaged_complete(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        call_id = await finished_call(database, org.id, rx.url)
        bucket = PutLandsLate(
            bucket=s3_bucket, region=s3_server.region, endpoint_url=s3_server.endpoint_url,
            access_key_id=s3_server.access_key_id,
            secret_access_key=s3_server.secret_access_key, prefix="recordings/",
            url_ttl_s=600,
        )  # fmt: skip
        key = bucket.key_for(org.id, call_id, "wav")
        clock = FakeClock()
        recorder = CallRecorder(
            call_id=call_id,
            key=key,
            bucket=bucket,
            store=database.calls,
            part_bytes=TEST_PART_MIN_BYTES,
            clock=clock,
        )
        recorder.start()
        await recorder.started()
        await _run_call(recorder, clock, seconds=0.5, cut_at=0.2)  # shorter than one part
        # S3 stalls at hang-up: the lifecycle's bound on the recorder cancels `finish()`
        # while its one `put` is in flight; the put lands once S3 answers again.
        finishing = asyncio.create_task(recorder.finish(), name="finish")
        for _ in range(500):
            if bucket.landing is not None:
                break
            await asyncio.sleep(0.01)
        assert bucket.landing is not None
        finishing.cancel()
        await asyncio.gather(finishing, return_exceptions=True)
        bucket.release.set()
        await bucket.landing
        stored = (await database.calls.get_call(call_id, with_turns=False)).recording
        assert stored is not None and stored.status == "recording" and stored.upload_id

        counted = CountedSalvage(_bucket(s3_server, s3_bucket))
        await _run_until(
            _outbox(database, counted, RetryPolicy(base_s=0.4, cap_s=2.0)), lambda: rx.requests
        )

    body = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    final = (await database.calls.get_call(call_id, with_turns=False)).recording
    assert final is not None and final.status == "complete", final
    assert final.size_bytes == len(body) and final.upload_id is None
    report = json.loads(rx.requests[0].body)["call"]["recording"]
    assert report["status"] == "complete" and report["url"] and key in report["url"]
    _, samples = read_wav(body)
    assert samples.shape[0] == 4000  # the whole half second
