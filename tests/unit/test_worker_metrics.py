"""`/metrics` of `serve --workers N` combined from the workers' snapshots: counters and
histograms summed, gauges of the live workers only, a dead worker's counters carried over
by the worker started in its place, a stale or dead worker left out of the gauges, and the
snapshot files read back whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.metrics import GatewayMetrics
from gateway.worker_metrics import SharedMetrics, WorkerSnapshot, combine


def _line(text: str, name: str) -> str:
    [value] = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return value


def _worker_metrics(started: int, refused: int, active: int, lag: float) -> GatewayMetrics:
    m = GatewayMetrics()
    m.calls_started_total = started
    m.calls_active = active
    m.event_streams_active = 1
    m.event_loop_lag_ms = lag
    for _ in range(refused):
        m.call_refused("twilio", "live-calls")
    m.provider_failed("deepgram")
    m.inbound_lookup("timeout")
    m.observe_turn({"stt_final": 120.0, "first_frame_out": 900.0})
    return m


def test_counters_and_histograms_are_summed_and_gauges_combined() -> None:
    snaps = [
        WorkerSnapshot(0, 100, 50.0, _worker_metrics(3, 2, active=2, lag=4.0)),
        WorkerSnapshot(1, 101, 50.5, _worker_metrics(5, 1, active=7, lag=31.5)),
    ]
    total, live = combine(snaps, now=51.0, stale_s=10, alive=lambda pid: True)
    text = total.render(workers=live)

    assert _line(text, "voice_gateway_calls_started_total") == "8"
    refused = 'voice_gateway_calls_refused_total{arrival="twilio",cause="live-calls"}'
    assert _line(text, refused) == "3"
    assert _line(text, 'voice_gateway_provider_failures_total{provider="deepgram"}') == "2"
    assert _line(text, 'voice_gateway_inbound_lookups_total{outcome="timeout"}') == "2"
    assert _line(text, 'voice_gateway_inbound_lookups_total{outcome="ok"}') == "0"
    # 120 ms is in the 200 ms bucket (cumulative), 900 ms in the 1000 ms one.
    hist = "voice_gateway_turn_latency_ms"
    assert _line(text, f'{hist}_bucket{{stage="stt_final",le="100"}}') == "0"
    assert _line(text, f'{hist}_bucket{{stage="stt_final",le="200"}}') == "2"
    assert _line(text, f'{hist}_bucket{{stage="first_frame_out",le="+Inf"}}') == "2"
    assert _line(text, f'{hist}_sum{{stage="stt_final"}}') == "240.0"
    assert _line(text, f'{hist}_count{{stage="first_frame_out"}}') == "2"
    assert _line(text, f'{hist}_count{{stage="llm_first_token"}}') == "0"

    assert _line(text, "voice_gateway_calls_active") == "9"
    assert _line(text, "voice_gateway_event_streams_active") == "2"
    assert _line(text, "voice_gateway_event_loop_lag_ms") == "31.5"  # the worst worker's
    assert _line(text, 'voice_gateway_worker_event_loop_lag_ms{worker="0"}') == "4.0"
    assert _line(text, 'voice_gateway_worker_event_loop_lag_ms{worker="1"}') == "31.5"
    assert _line(text, 'voice_gateway_worker_calls_active{worker="1"}') == "7"
    assert _line(text, "voice_gateway_workers") == "2"
    assert "# TYPE voice_gateway_workers gauge" in text


def test_a_dead_or_stale_worker_keeps_its_counters_but_leaves_the_gauges() -> None:
    snaps = [
        WorkerSnapshot(0, 100, 50.0, _worker_metrics(3, 2, active=2, lag=4.0)),
        WorkerSnapshot(1, 101, 38.0, _worker_metrics(5, 1, active=7, lag=900.0)),  # stale
        WorkerSnapshot(2, 102, 50.0, _worker_metrics(4, 0, active=5, lag=80.0)),  # dead
    ]
    total, live = combine(snaps, now=50.5, stale_s=10, alive=lambda pid: pid != 102)
    text = total.render(workers=live)
    assert _line(text, "voice_gateway_calls_started_total") == "12"
    assert _line(text, 'voice_gateway_provider_failures_total{provider="deepgram"}') == "3"
    assert _line(text, "voice_gateway_calls_active") == "2"
    assert _line(text, "voice_gateway_event_loop_lag_ms") == "4.0"
    assert _line(text, "voice_gateway_workers") == "1"
    assert 'worker="1"' not in text and 'worker="2"' not in text


def test_a_single_process_exports_its_own_values_as_one_worker() -> None:
    m = _worker_metrics(2, 1, active=1, lag=3.0)
    text = m.render()
    assert _line(text, "voice_gateway_workers") == "1"
    assert _line(text, "voice_gateway_calls_started_total") == "2"
    assert "voice_gateway_worker_event_loop_lag_ms" not in text


def test_snapshots_read_back_whole_and_bad_ones_are_refused() -> None:
    m = _worker_metrics(3, 2, active=2, lag=4.25)
    snap = WorkerSnapshot(1, 4242, 12.5, m)
    back = WorkerSnapshot.parse(snap.serialize())
    assert (back.worker, back.pid, back.written_at) == (1, 4242, 12.5)
    assert back.metrics.render() == m.render()
    assert back.metrics.turn_latency["stt_final"].counts == m.turn_latency["stt_final"].counts
    for bad in ("", "[]", '{"worker": 1}', snap.serialize().replace('"counts":[', '"counts":[1,')):
        with pytest.raises(ValueError):
            WorkerSnapshot.parse(bad)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _scrape(shared: SharedMetrics, name: str) -> int:
    return int(_line(shared.render(), name))


def test_workers_sharing_a_directory_see_the_same_totals_and_never_go_backwards(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    alive = {1000, 1001}
    own = [GatewayMetrics(), GatewayMetrics()]
    workers = [
        SharedMetrics(
            tmp_path,
            worker=i,
            metrics=own[i],
            stale_s=10,
            clock=clock,
            pid=1000 + i,
            alive=alive.__contains__,
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    name = "voice_gateway_calls_started_total"
    own[0].calls_started_total = 4
    own[1].calls_started_total = 6
    own[1].calls_active = 3
    # Worker 1 has not published its 6 yet: worker 0's scrape sees its own 4 only...
    assert _scrape(workers[0], name) == 4
    # ...worker 1's sees both (its own live, worker 0's file); worker 0 then reads it back.
    assert _scrape(workers[1], name) == 10
    own[1].calls_started_total = 7  # counted after worker 1's last publication
    assert _scrape(workers[0], name) == 10
    assert _line(workers[0].render(), "voice_gateway_calls_active") == "3"
    assert _line(workers[0].render(), "voice_gateway_workers") == "2"

    # Worker 1 is killed (its 7th call never published); until a new one starts, its file
    # counts for its counters but not for the gauges.
    alive.discard(1001)
    assert _scrape(workers[0], name) == 10
    assert _line(workers[0].render(), "voice_gateway_calls_active") == "0"
    assert _line(workers[0].render(), "voice_gateway_workers") == "1"

    # Its successor carries its counters over and adds its own.
    successor_metrics = GatewayMetrics()
    alive.add(1002)
    successor = SharedMetrics(
        tmp_path,
        worker=1,
        metrics=successor_metrics,
        stale_s=10,
        clock=clock,
        pid=1002,
        alive=alive.__contains__,
    )
    (tmp_path / ".worker-1.1001.tmp").write_text("half a snapshot")  # its killed write
    successor.start()
    assert not (tmp_path / ".worker-1.1001.tmp").exists()
    assert _scrape(workers[0], name) == 10
    successor_metrics.calls_started_total = 2
    assert _scrape(successor, name) == 12
    assert _scrape(workers[0], name) == 12

    # Worker 0 stops answering (stuck): its counters stay, its gauges go once stale.
    own[0].calls_active = 5
    workers[0].publish()
    assert _line(successor.render(), "voice_gateway_calls_active") == "5"
    clock.now += 11
    assert _line(successor.render(), "voice_gateway_calls_active") == "0"
    assert _scrape(successor, name) == 12


def test_a_worker_without_a_predecessor_starts_from_zero_and_an_unreadable_file_is_left_out(
    tmp_path: Path,
) -> None:
    (tmp_path / "worker-1.json").write_text("{not json")
    m = GatewayMetrics()
    m.calls_started_total = 1
    shared = SharedMetrics(tmp_path, worker=0, metrics=m, stale_s=10, pid=1, alive=bool)
    shared.start()
    assert _line(shared.render(), "voice_gateway_calls_started_total") == "1"
    assert _line(shared.render(), "voice_gateway_workers") == "1"
    shared.stop()
    assert WorkerSnapshot.parse((tmp_path / "worker-0.json").read_text()).pid == 1


async def test_a_scrape_publishes_on_the_loop_and_combines_in_a_thread(tmp_path: Path) -> None:
    mine, theirs = GatewayMetrics(), GatewayMetrics()
    mine.calls_started_total, theirs.calls_started_total = 2, 3
    other = SharedMetrics(tmp_path, worker=1, metrics=theirs, stale_s=10)
    other.start()
    shared = SharedMetrics(tmp_path, worker=0, metrics=mine, stale_s=10)
    shared.start()
    mine.calls_started_total = 4
    text = await shared.scrape()
    assert _line(text, "voice_gateway_calls_started_total") == "7"
    assert _line(text, "voice_gateway_workers") == "2"  # both of this process: both exist
    published = WorkerSnapshot.parse((tmp_path / "worker-0.json").read_text())
    assert published.metrics.calls_started_total == 4
