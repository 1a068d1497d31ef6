"""The dashboard's pure parts: session cookies and CSRF tokens, and the latency chart."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.dashboard.charts import HEIGHT, latency_chart
from gateway.dashboard.session import SessionSigner
from storage import TurnRecord

SECRET = b"0123456789abcdef0123456789abcdef"


def test_a_session_reads_back_until_it_expires() -> None:
    signer = SessionSigner(SECRET)
    cookie, session = signer.issue("key-1", now=1000.0, ttl_s=60)
    assert signer.read(cookie, now=1059.0) == session
    assert signer.read(cookie, now=1060.0) is None
    assert SessionSigner(b"another secret, 32 bytes long!!!").read(cookie, now=1000.0) is None


def test_tampered_or_misused_values_are_refused() -> None:
    signer = SessionSigner(SECRET)
    cookie, session = signer.issue("key-1", now=1000.0, ttl_s=60)
    version, payload, mac = cookie.split(".")
    other, _ = signer.issue("key-2", now=1000.0, ttl_s=60)
    swapped = f"{version}.{other.split('.')[1]}.{mac}"  # key-2's payload under key-1's MAC
    for forged in (swapped, f"v2.{payload}.{mac}", cookie + "x", "", "...", "v1.é.é"):
        assert signer.read(forged, now=1000.0) is None, forged
    # A sign-in cookie is not a session, and a session's CSRF token is its own.
    sign_in, form_token = signer.sign_in_cookie(now=1000.0)
    assert signer.read(sign_in, now=1000.0) is None
    assert signer.sign_in_valid(sign_in, form_token, now=1000.0)
    assert not signer.sign_in_valid(cookie, form_token, now=1000.0)
    assert not signer.sign_in_valid(sign_in, signer.csrf_token(session), now=1000.0)
    assert signer.csrf_valid(session, signer.csrf_token(session))
    _, later = signer.issue("key-1", now=1000.0, ttl_s=60)
    assert not signer.csrf_valid(session, signer.csrf_token(later))
    assert not signer.csrf_valid(session, None) and not signer.csrf_valid(session, "é")


def _turn(index: int, speaker: str, latency: dict[str, float] | None) -> TurnRecord:
    return TurnRecord(
        id=str(index), call_id="c", index=index, speaker=speaker,  # type: ignore[arg-type]
        text="x", start_ms=0.0, end_ms=1.0, interrupted=False,
        created_at=datetime.now(UTC), latency=latency,
    )  # fmt: skip


def test_the_chart_has_one_bar_per_measured_answer() -> None:
    assert latency_chart([_turn(0, "agent", None), _turn(1, "caller", None)]) is None
    chart = latency_chart(
        [
            _turn(0, "agent", None),  # the greeting answers nobody
            _turn(1, "caller", None),
            _turn(2, "agent", {"first_frame_out": 400.0}),
            _turn(3, "caller", None),
            _turn(4, "agent", {"first_frame_out": 800.0, "stt_final": 300.0}),
        ]
    )
    assert chart is not None
    assert [b.turn for b in chart.bars] == [2, 4]
    assert chart.median_ms == 600.0 and chart.max_ms == 800.0
    tall, short = chart.bars[1], chart.bars[0]
    assert tall.y + tall.height == HEIGHT and abs(short.height * 2 - tall.height) < 1e-9
