"""How an outbound Twilio call asks for answering-machine detection, as the `twilio` SDK
sends it to the Twilio REST fake: an assistant's voicemail plan asks for Twilio's
asynchronous detection (its verdict to `/twilio/amd`, for the call's voicemail gate); a bare
`machine_detection` keeps the synchronous `Enable` (the verdict as `AnsweredBy` on the
`in-progress` status callback, as before voicemail); neither asks for none. `dial_twilio`
is handed the plan and reads nothing from the database (a call it has stored cannot be left
`queued` by a failed read)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.settings import Settings
from gateway.twilio.outbound import dial_twilio, machine_detection_for
from storage import CallRecord, CallStatus, Direction, VoicemailPlan
from telephony.twilio import MachineDetection
from telephony.twilio.rest import TwilioCalls
from tests.net import free_port

from .conftest import FakeServer

ACCOUNT = "AC" + "7" * 32
TOKEN = "test-twilio-token"
LEAVE = VoicemailPlan(action="leave_message", message="Hi, call us back.")
HANG_UP = VoicemailPlan(action="hangup")


@pytest.fixture
def settings() -> Settings:
    # Nothing listens there: the fake's progress callbacks are refused, which is no matter.
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=f"http://127.0.0.1:{free_port()}",
        twilio_amd_timeout_s=20,
    )


def test_the_detection_asked_for_follows_the_plan_or_the_request(settings: Settings) -> None:
    amd = f"{settings.public_url}/twilio/amd?call_id=c1"
    assert machine_detection_for(settings, "c1", None, asked=False) is None
    assert machine_detection_for(settings, "c1", None, asked=True) == MachineDetection(
        mode="Enable", callback_url=None, timeout_s=20
    )
    for asked in (False, True):  # a plan screens the call whatever the request says
        assert machine_detection_for(settings, "c1", LEAVE, asked=asked) == MachineDetection(
            mode="DetectMessageEnd", callback_url=amd, timeout_s=20
        )
        assert machine_detection_for(settings, "c1", HANG_UP, asked=asked) == MachineDetection(
            mode="Enable", callback_url=amd, timeout_s=20
        )


def _call(call_id: str, to: str) -> CallRecord:
    return CallRecord(
        id=call_id, org_id="o1", transport="twilio", call_sid="", stream_sid=None,
        from_number="+15557770001", to_number=to, direction=Direction.OUTBOUND,
        assistant_id="a1", metadata={}, status=CallStatus.QUEUED, started_at=datetime.now(UTC),
        ended_at=None, duration_s=None, end_reason=None,
    )  # fmt: skip


def _form(twilio_fake: FakeServer, to: str) -> dict[str, str]:
    creates: list[Any] = [
        e for e in twilio_fake.log() if str(e.get("path", "")).endswith("/Calls.json")
    ]
    form: dict[str, str] = next(e["form"] for e in creates if e["form"]["To"] == to)
    return form


async def test_dialled_calls_carry_the_detection_over_the_wire(
    twilio_fake: FakeServer, settings: Settings
) -> None:
    twilio_fake.reset()
    twilio_fake.control(account_sid=ACCOUNT, auth_token=TOKEN)
    rest = TwilioCalls(account_sid=ACCOUNT, auth_token=TOKEN, api_base_url=twilio_fake.url)
    # No database at all: dial_twilio must not read one.
    services: Any = SimpleNamespace(
        settings=settings,
        twilio=SimpleNamespace(rest=rest, stream_token_key=b"k" * 32),
        database=None,
    )
    cases = {
        "+15550200001": (False, None),
        "+15550200002": (True, None),
        "+15550200003": (False, LEAVE),
        "+15550200004": (True, HANG_UP),
    }
    for n, (to, (asked, plan)) in enumerate(cases.items()):
        sid = await dial_twilio(
            services, _call(f"c{n}", to), machine_detection=asked, voicemail=plan
        )
        assert sid.startswith("CA")

    plain = _form(twilio_fake, "+15550200001")
    assert "MachineDetection" not in plain and "AsyncAmd" not in plain
    # A bare request: synchronous, as before voicemail (AnsweredBy on the status callback).
    bare = _form(twilio_fake, "+15550200002")
    assert bare["MachineDetection"] == "Enable" and bare["MachineDetectionTimeout"] == "20"
    assert "AsyncAmd" not in bare and "AsyncAmdStatusCallback" not in bare
    # A voicemail plan: asynchronous, its verdict to /twilio/amd for the call's gate.
    for to, mode, call_id in (
        ("+15550200003", "DetectMessageEnd", "c2"),
        ("+15550200004", "Enable", "c3"),
    ):
        form = _form(twilio_fake, to)
        assert form["MachineDetection"] == mode and form["AsyncAmd"] == "true", form
        callback = urlsplit(form["AsyncAmdStatusCallback"])
        assert callback.path == "/twilio/amd"
        assert parse_qs(callback.query)["call_id"] == [call_id]
        assert form["AsyncAmdStatusCallbackMethod"] == "POST"
