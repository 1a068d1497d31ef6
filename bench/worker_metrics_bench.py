"""What `serve --workers N` pays for a gateway-wide `/metrics` (gateway/worker_metrics.py): a
worker's publication (its snapshot written, every second) and a scrape (its snapshot written,
the others' read and combined, the text rendered), at 2, 4, 16 and 64 workers' files.

    python bench/worker_metrics_bench.py [--rounds 500]

Both run on a worker's event loop, so their time is lag its live calls see."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gateway.metrics import GatewayMetrics
from gateway.worker_metrics import SharedMetrics


def _busy_metrics() -> GatewayMetrics:
    """Metrics with every labelled family filled, as a worker's after a day of calls."""
    m = GatewayMetrics()
    m.calls_started_total = 12_345
    m.outbound_frames_total = 98_765_432
    for arrival in ("twilio", "livekit", "outbound", "web"):
        for cause in ("live-calls", "loop-lag"):
            for _ in range(3):
                m.call_refused(arrival, cause)
    for provider in ("deepgram", "openai", "cartesia"):
        m.provider_failed(provider)
    for value in range(0, 5000, 37):
        m.observe_turn({"stt_final": value, "llm_first_token": value, "first_frame_out": value})
    return m


def _timed(fn: object, rounds: int) -> tuple[float, float]:
    assert callable(fn)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    print(f"temporary directory: {tempfile.gettempdir()}; times in microseconds")
    print(f"{'workers':>7} {'publish p50':>12} {'p95':>8} {'scrape p50':>11} {'p95':>8}")
    for count in (2, 4, 16, 64):
        with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
            workers = [
                SharedMetrics(Path(directory), worker=i, metrics=_busy_metrics(), stale_s=10)
                for i in range(count)
            ]
            for w in workers:
                w.start()
            pub = _timed(workers[0].publish, args.rounds)
            scrape = _timed(workers[0].render, args.rounds)
        print(f"{count:>7} {pub[0]:>12.0f} {pub[1]:>8.0f} {scrape[0]:>11.0f} {scrape[1]:>8.0f}")


if __name__ == "__main__":
    main()
