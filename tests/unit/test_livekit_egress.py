"""Egress requests and `egress_ended` payloads, read and written without a server."""

from __future__ import annotations

import pytest
from livekit import api
from pydantic import SecretStr

from gateway.errors import ConfigError
from gateway.livekit.egress import ended_state, room_recording_request
from gateway.recording.bucket import recording_key
from gateway.settings import Settings
from storage import RecordingState


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "s3_bucket": "calls",
        "s3_region": "eu-west-1",
        "s3_endpoint_url": "http://127.0.0.1:9000",
        "s3_access_key_id": "AKIA-test",
        "s3_secret_access_key": SecretStr("s3-secret"),
        "recording_prefix": "rec/",
        **overrides,
    }
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    return base.model_copy(update=values)


def test_the_request_records_the_room_audio_only_to_the_call_key() -> None:
    settings = _settings()
    key = recording_key(settings.recording_prefix, org_id="org1", call_id="c1", extension="ogg")
    assert key == "rec/org1/c1.ogg"
    assert recording_key("rec/", org_id=None, call_id="c2", extension="ogg") == "rec/default/c2.ogg"

    request = room_recording_request(settings, room_name="call-1", key=key)

    assert request.room_name == "call-1" and request.audio_only
    [output] = request.file_outputs
    assert output.file_type == api.EncodedFileType.OGG and output.filepath == key
    assert output.s3 == api.S3Upload(
        access_key="AKIA-test",
        secret="s3-secret",
        region="eu-west-1",
        endpoint="http://127.0.0.1:9000",
        bucket="calls",
        force_path_style=True,
    )


def test_aws_s3_keeps_virtual_host_addressing_and_the_worker_credentials() -> None:
    settings = _settings(s3_endpoint_url=None, s3_access_key_id=None, s3_secret_access_key=None)
    [output] = room_recording_request(settings, room_name="r", key="k").file_outputs
    assert output.s3 == api.S3Upload(region="eu-west-1", bucket="calls")


def test_no_bucket_no_request() -> None:
    with pytest.raises(ConfigError):
        room_recording_request(_settings(s3_bucket=None), room_name="r", key="k")


_RECORDING = RecordingState(
    kind="egress", status="recording", bucket="calls", key="rec/o/c.ogg", egress_id="EG_1"
)


def test_a_complete_egress_gives_the_file_location_size_and_duration() -> None:
    info = api.EgressInfo(
        egress_id="EG_1",
        status=api.EgressStatus.EGRESS_COMPLETE,
        file_results=[
            api.FileInfo(
                filename="rec/o/c.ogg",
                location="https://calls.s3.amazonaws.com/rec/o/c.ogg",
                size=48_000,
                duration=12_500_000_000,
            )
        ],
    )
    assert ended_state(_RECORDING, info) == RecordingState(
        kind="egress",
        status="complete",
        bucket="calls",
        key="rec/o/c.ogg",
        egress_id="EG_1",
        location="https://calls.s3.amazonaws.com/rec/o/c.ogg",
        size_bytes=48_000,
        duration_s=12.5,
    )


def test_older_servers_report_the_file_in_the_deprecated_field() -> None:
    info = api.EgressInfo(
        egress_id="EG_1",
        status=api.EgressStatus.EGRESS_COMPLETE,
        file=api.FileInfo(filename="", location="s3://calls/rec/o/c.ogg", size=1, duration=0),
    )
    state = ended_state(_RECORDING, info)
    assert state is not None and state.status == "complete"
    assert state.location == "s3://calls/rec/o/c.ogg" and state.key == "rec/o/c.ogg"


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (api.EgressStatus.EGRESS_FAILED, "upload failed: 403", "upload failed: 403"),
        (api.EgressStatus.EGRESS_ABORTED, "", "EGRESS_ABORTED without a file"),
        (api.EgressStatus.EGRESS_COMPLETE, "", "EGRESS_COMPLETE without a file"),
    ],
)
def test_failed_or_empty_egresses_fail_the_recording(
    status: api.EgressStatus, error: str, expected: str
) -> None:
    info = api.EgressInfo(egress_id="EG_1", status=status, error=error)
    assert ended_state(_RECORDING, info) == RecordingState(
        kind="egress",
        status="failed",
        bucket="calls",
        key="rec/o/c.ogg",
        egress_id="EG_1",
        error=expected,
    )


def test_an_egress_still_running_has_not_ended() -> None:
    info = api.EgressInfo(egress_id="EG_1", status=api.EgressStatus.EGRESS_ACTIVE)
    assert ended_state(_RECORDING, info) is None
