"""The gateway's recorder against a real S3-compatible server (moto's server mode, boto3
unchanged) and the real database: parts go up while the call runs, the object is a stereo
WAV with both legs aligned and the agent cut at the barge-in, and an upload left open by a
stopped gateway is salvaged up to its last part."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import pytest

from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import samples_per_frame
from audio.stereo import WavEncoding, WavFormat, read_wav
from gateway.recording.bucket import RecordingBucket
from gateway.recording.recorder import CallRecorder
from storage import CallRecord, Database, Direction, NewCall, RecordingState
from tests.s3_server import TEST_PART_MIN_BYTES, S3Server

RATE = 8000
FRAME = samples_per_frame(RATE)
PART_BYTES = TEST_PART_MIN_BYTES  # 16 KiB: a part every 0.512 s of stereo audio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bucket(s3: S3Server, bucket: str) -> RecordingBucket:
    """A recordings bucket on `s3`, closed with the server."""
    made = RecordingBucket(
        bucket=bucket,
        region=s3.region,
        endpoint_url=s3.endpoint_url,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        prefix="recordings/",
        url_ttl_s=600,
    )
    s3.closes(made)
    return made


async def _call(database: Database) -> CallRecord:
    return await database.calls.create_call(
        NewCall(
            org_id="org-1",
            transport="twilio",
            call_sid="CA" + "0" * 32,
            from_number="+15550001111",
            to_number="+15550002222",
            direction=Direction.INBOUND,
        ),
        started_at=datetime.now(UTC),
    )


async def _open_upload(database: Database, call_id: str) -> RecordingState:
    """The stored state once the recorder has opened its upload (it does so in the background)."""
    for _ in range(250):
        state = (await database.calls.get_call(call_id, with_turns=False)).recording
        if state is not None:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError("the recorder never stored its upload")


async def _recorder(
    database: Database,
    s3: S3Server,
    bucket_name: str,
    *,
    part_bytes: int = PART_BYTES,
    encoding: WavEncoding = "pcm16",
) -> tuple[CallRecorder, RecordingBucket, FakeClock, str]:
    """A started recorder of a new call: (recorder, bucket, its clock, the object key)."""
    call = await _call(database)
    bucket = _bucket(s3, bucket_name)
    clock = FakeClock()
    key = bucket.key_for(call.org_id, call.id, "wav")
    recorder = CallRecorder(
        call_id=call.id,
        key=key,
        bucket=bucket,
        store=database.calls,
        part_bytes=part_bytes,
        clock=clock,
        encoding=encoding,
    )
    recorder.start()
    return recorder, bucket, clock, key


def _caller_frame(index: int) -> np.ndarray:
    # A distinct value per frame, so that misplacement by even one frame shows.
    return np.full(FRAME, (index % 500) + 1, dtype=np.int16)


def _agent_frame(index: int) -> np.ndarray:
    return np.full(FRAME, -((index % 500) + 1), dtype=np.int16)


def _stereo(wav_bytes: bytes, encoding: str = "pcm16") -> np.ndarray:
    wav, samples = read_wav(wav_bytes)
    assert (wav.encoding, wav.rate) == (encoding, RATE)
    return samples


async def _run_call(recorder: CallRecorder, clock: FakeClock, *, seconds: float, cut_at: float):
    """Feed `seconds` of call: caller frames on Twilio's timestamps, agent frames sent 60 ms
    ahead of their play time, and a barge-in clear at `cut_at` s. Returns how many agent
    frames were sent (the pacer sends nothing after the clear)."""
    origin = clock.now
    sent = 0
    for k in range(int(seconds * 50)):
        clock.now = origin + k * 0.020
        # The pacer sends agent frame j at (due - lead); due = origin + 0.1 + j * 20 ms.
        while clock.now - origin < cut_at and origin + 0.1 + sent * 0.020 - 0.060 <= clock.now:
            recorder.agent_audio(origin + 0.1 + sent * 0.020, _agent_frame(sent))
            sent += 1
        if abs((clock.now - origin) - cut_at) < 1e-9:
            recorder.agent_cleared(clock.now)
        recorder.caller_audio(k * 20, _caller_frame(k))
        await asyncio.sleep(0)  # the upload task runs between frames
    clock.now = origin + seconds
    return sent


@pytest.mark.parametrize("encoding", ["pcm16", "mulaw"])
async def test_recorder_streams_parts_and_keeps_both_legs_aligned(
    database: Database, s3_server: S3Server, s3_bucket: str, encoding: WavEncoding
) -> None:
    recorder, _, clock, key = await _recorder(database, s3_server, s3_bucket, encoding=encoding)
    # What a frame sounds like stored: exact in PCM, through G.711 in mu-law.
    stored_as = (lambda f: f) if encoding == "pcm16" else (lambda f: ulaw_decode(ulaw_encode(f)))
    await _run_call(recorder, clock, seconds=3.0, cut_at=2.0)

    # Parts went up while the call ran, before any hang-up.
    opened = await _open_upload(database, recorder.call_id)
    assert opened.status == "recording" and opened.upload_id and opened.key == key
    s3 = s3_server.client()
    wav = WavFormat(encoding)
    full_parts = (wav.header_bytes + 3 * RATE * wav.frame_bytes) // PART_BYTES  # 5 or 2
    for _ in range(200):
        parts = s3.list_parts(Bucket=s3_bucket, Key=key, UploadId=opened.upload_id)
        if len(parts.get("Parts", [])) >= full_parts:
            break
        await asyncio.sleep(0.02)
    assert len(parts["Parts"]) == full_parts, "every full part is uploaded as the call goes"

    state = await recorder.finish()
    assert state.status == "complete" and state.upload_id is None
    data = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert len(data) == state.size_bytes
    pcm = _stereo(data, encoding)
    assert pcm.shape[0] == 3 * RATE
    assert state.duration_s == 3.0
    assert len(data) == WavFormat(encoding).header_bytes + 3 * RATE * (
        4 if encoding == "pcm16" else 2
    )
    # Caller left, exactly on Twilio's timestamps.
    for k in range(150):
        assert (pcm[k * FRAME : (k + 1) * FRAME, 0] == stored_as(_caller_frame(k))).all(), k
    # Agent right: silent before its first frame's play time (100 ms) ...
    agent = pcm[:, 1]
    assert (agent[:800] == 0).all()
    # ... each frame where it played ...
    heard = (2.0 - 0.1) / 0.020
    for j in range(int(heard)):
        start = 800 + j * FRAME
        assert (agent[start : start + FRAME] == stored_as(_agent_frame(j))).all(), j
    # ... and nothing from the barge-in on, although 60 ms more had been sent ahead.
    assert (agent[2 * RATE :] == 0).all()
    assert (await database.calls.get_call(recorder.call_id, with_turns=False)).recording == state


async def test_a_short_call_is_one_object_with_its_final_header(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    recorder, bucket, clock, key = await _recorder(
        database, s3_server, s3_bucket, part_bytes=5 * 1024 * 1024
    )
    await _run_call(recorder, clock, seconds=1.0, cut_at=0.5)
    state = await recorder.finish()
    assert state.status == "complete"
    pcm = _stereo(s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert pcm.shape[0] == RATE and (pcm[:FRAME, 0] == _caller_frame(0)).all()
    assert not s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert bucket.url(state) is not None


async def test_an_abandoned_upload_is_salvaged_up_to_its_last_part(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    recorder, bucket, clock, key = await _recorder(database, s3_server, s3_bucket)
    await _run_call(recorder, clock, seconds=2.2, cut_at=1.0)
    opened = await _open_upload(database, recorder.call_id)
    assert opened.upload_id
    s3 = s3_server.client()
    for _ in range(200):  # let the parts already cut reach S3, then "crash"
        uploaded = s3.list_parts(Bucket=s3_bucket, Key=key, UploadId=opened.upload_id)
        if len(uploaded.get("Parts", [])) == 4:
            break
        await asyncio.sleep(0.02)
    assert recorder._uploader is not None
    recorder._uploader.cancel()  # the gateway dies: no finish, no last part
    with pytest.raises(asyncio.CancelledError):
        await recorder._uploader

    salvaged = await bucket.salvage(
        await database.calls.get_call(recorder.call_id, with_turns=False)
    )
    assert salvaged is not None and salvaged.status == "complete" and salvaged.salvaged
    data = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert len(data) == 4 * PART_BYTES == salvaged.size_bytes
    pcm = _stereo(data)  # a valid header: exactly the uploaded audio
    assert pcm.shape[0] == (4 * PART_BYTES - 44) // 4
    whole_frames = pcm.shape[0] // FRAME
    for k in range(whole_frames):
        assert (pcm[k * FRAME : (k + 1) * FRAME, 0] == _caller_frame(k)).all(), k
    assert salvaged.duration_s == round(pcm.shape[0] / RATE, 3)
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


async def test_a_frame_stamped_far_ahead_is_placed_at_the_real_clock(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    """Defence in depth behind the stream's own check: one frame stamped 30 minutes into a
    2 s call used to make a 1 800 s, 57.6 MB recording; it is placed at most 3 s ahead."""
    recorder, _, clock, key = await _recorder(database, s3_server, s3_bucket)
    await _run_call(recorder, clock, seconds=2.0, cut_at=5.0)
    recorder.caller_audio(30 * 60 * 1000, _caller_frame(7))
    state = await recorder.finish()
    print(f"recorded {state.duration_s} s, {state.size_bytes} bytes for a 2 s call")
    assert state.status == "complete"
    assert state.duration_s is not None and state.duration_s <= 2.0 + 3.0 + 0.02
    pcm = _stereo(s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert pcm.shape[0] <= (2.0 + 3.0 + 0.02) * RATE
    assert np.array_equal(pcm[-FRAME:, 0], _caller_frame(7))  # kept, at the clock's bound


class _HeldParts(RecordingBucket):
    """The real bucket, except that each part waits until `release` is set (S3 slow)."""

    def __init__(self, s3: S3Server, bucket: str) -> None:
        super().__init__(
            bucket=bucket,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            prefix="recordings/",
            url_ttl_s=600,
        )
        self.release = asyncio.Event()
        self.part_waiting = asyncio.Event()

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self.part_waiting.set()
        await self.release.wait()
        return await super().upload_part(key, upload_id, number, data)


async def test_audio_after_finish_began_is_not_recorded(
    database: Database, s3_server: S3Server, s3_bucket: str
) -> None:
    """The socket stays open while the call's end runs, and caller audio goes on arriving.
    Audio fed once `finish()` began (waiting for the uploader) used to cut a part after the
    upload's last: never uploaded, but counted in the final size and header."""
    call = await _call(database)
    bucket = _HeldParts(s3_server, s3_bucket)
    clock = FakeClock()
    key = bucket.key_for(call.org_id, call.id, "wav")
    recorder = CallRecorder(
        call_id=call.id,
        key=key,
        bucket=bucket,
        store=database.calls,
        part_bytes=PART_BYTES,
        clock=clock,
    )
    recorder.start()
    await _run_call(recorder, clock, seconds=1.0, cut_at=0.5)  # one full part cut
    await bucket.part_waiting.wait()
    finishing = asyncio.create_task(recorder.finish())
    await asyncio.sleep(0)  # `finish` runs until it waits for the uploader
    origin = clock.now
    for k in range(50, 100):  # one more second of caller audio: more than a part
        clock.now = origin + (k - 50) * 0.020
        recorder.caller_audio(k * 20, _caller_frame(k))
    bucket.release.set()
    state = await finishing
    assert state.status == "complete"
    data = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert len(data) == state.size_bytes
    pcm = _stereo(data)
    assert pcm.shape[0] == RATE  # the second before `finish`, nothing after
    assert state.duration_s == 1.0
