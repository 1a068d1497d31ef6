"""`GET /metrics` of `serve --workers N`: each worker publishes its metrics to a file in the
run's metrics directory, and the worker that answers a scrape combines every worker's.

The supervisor (`gateway/workers.py`) makes the directory for the run (METRICS_DIR, under
the system's temporary directory) and removes it when the run ends; a single process has
none and exports its own values (`GatewayMetrics.render()`). Worker i owns one file,
`worker-i.json`, which it replaces atomically (a temporary file renamed over it): every
`PUBLISH_INTERVAL_S`, before it answers a scrape, and as it exits. A reader thus sees a
whole snapshot, never half of one, and each file's counters only grow:
- a worker started in a dead one's place reads its file first and carries its counters
  as a retired total, which it adds to its own in every snapshot it writes (the file
  is replaced only by a snapshot holding at least what it held);
- the worker that answers a scrape writes its own file before it reads the others', so
  what one scrape showed, every later scrape (whichever worker answers) reads back.

Which workers are live (their gauges count; `voice_gateway_workers`): those whose process
exists and whose snapshot is at most `stale_s` old. Times are `time.monotonic()`, one clock
for every process of the machine (Linux CLOCK_MONOTONIC). Reading and writing are a few
small local files. A publication is done on the event loop (a fraction of a millisecond);
a scrape publishes there too, then reads and combines the other files in a thread
(`bench/worker_metrics_bench.py`: about 1 ms at 4 workers, 14 ms at 64, on a loaded
2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.metrics import GatewayMetrics, WorkerGauges

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker's metrics as it published them: its counters hold its predecessors'
    (retired) counters too; `written_at` is its `time.monotonic()` when it wrote them."""

    worker: int
    pid: int
    written_at: float
    metrics: GatewayMetrics

    def serialize(self) -> str:
        return json.dumps(
            {
                "worker": self.worker,
                "pid": self.pid,
                "written_at": self.written_at,
                "metrics": self.metrics.to_json(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: str) -> WorkerSnapshot:
        """The snapshot `serialize` wrote; ValueError for anything else."""
        try:
            data = json.loads(text)
            return cls(
                worker=int(data["worker"]),
                pid=int(data["pid"]),
                written_at=float(data["written_at"]),
                metrics=GatewayMetrics.from_json(data["metrics"]),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not a worker snapshot: {exc!r}") from exc


def process_exists(pid: int) -> bool:
    """Whether process `pid` exists (a dead worker not yet reaped by its supervisor still
    does, for the moment that takes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def combine(
    snapshots: Iterable[WorkerSnapshot],
    *,
    now: float,
    stale_s: float,
    alive: Callable[[int], bool] = process_exists,
) -> tuple[GatewayMetrics, list[WorkerGauges]]:
    """The gateway's metrics from its workers' snapshots, and the live workers' gauges.

    Counters and histograms: summed over every snapshot (a dead worker's stay counted).
    Gauges: of the live workers only (`alive(pid)` and written at most `stale_s` before
    `now`), `calls_active` and `event_streams_active` summed, `event_loop_lag_ms` and
    `write_backlog_ms` the highest."""
    total = GatewayMetrics()
    live: list[WorkerGauges] = []
    for snap in snapshots:
        total.add_counters(snap.metrics)
        if now - snap.written_at > stale_s or not alive(snap.pid):
            continue
        m = snap.metrics
        total.calls_active += m.calls_active
        total.event_streams_active += m.event_streams_active
        total.event_loop_lag_ms = max(total.event_loop_lag_ms, m.event_loop_lag_ms)
        total.write_backlog_ms = max(total.write_backlog_ms, m.write_backlog_ms)
        live.append(WorkerGauges(snap.worker, m.calls_active, m.event_loop_lag_ms))
    return total, live


class SharedMetrics:
    """This worker's side of the metrics directory: `start()` takes a dead predecessor's
    counters over and publishes; `run()` publishes every `PUBLISH_INTERVAL_S` until
    cancelled; `scrape()` answers `GET /metrics` for the whole gateway; `stop()` publishes
    the last snapshot."""

    def __init__(
        self,
        directory: Path,
        *,
        worker: int,
        metrics: GatewayMetrics,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
        pid: int | None = None,
        alive: Callable[[int], bool] = process_exists,
    ) -> None:
        self.directory = directory
        self.worker = worker
        self._metrics = metrics
        self._stale_s = stale_s
        self._clock = clock
        self._alive = alive
        self._pid = os.getpid() if pid is None else pid
        self._retired = GatewayMetrics()  # the counters of the workers this one replaced
        self._path = directory / f"worker-{worker}.json"
        self._tmp = directory / f".worker-{worker}.{self._pid}.tmp"  # not a `worker-*.json`

    def start(self) -> None:
        """Carry the counters of this worker's dead predecessor (its last snapshot) over,
        then publish this worker's first snapshot."""
        try:
            previous = WorkerSnapshot.parse(self._path.read_text())
        except FileNotFoundError:
            previous = None
        except (OSError, ValueError) as exc:  # counted again from 0: said, not hidden
            log.warning(
                "the previous worker's metrics could not be read: its counters are lost",
                extra={"path": str(self._path), "error": str(exc)},
            )
            previous = None
        if previous is not None:
            self._retired.add_counters(previous.metrics)
            log.info(
                "took the counters of the previous worker over",
                extra={"previous_pid": previous.pid},
            )
        for stale in self.directory.glob(f".worker-{self.worker}.*.tmp"):  # a killed writer's
            with contextlib.suppress(OSError):
                stale.unlink()
        self.publish()

    def snapshot(self) -> WorkerSnapshot:
        """This worker's values now, its predecessors' counters added."""
        own = GatewayMetrics()
        own.add_counters(self._retired)
        own.add_counters(self._metrics)
        own.calls_active = self._metrics.calls_active
        own.event_streams_active = self._metrics.event_streams_active
        own.event_loop_lag_ms = self._metrics.event_loop_lag_ms
        own.write_backlog_ms = self._metrics.write_backlog_ms
        return WorkerSnapshot(self.worker, self._pid, self._clock(), own)

    def publish(self) -> WorkerSnapshot:
        """Replace this worker's file with its snapshot now (atomically); the snapshot."""
        snap = self.snapshot()
        try:
            self._tmp.write_text(snap.serialize())
            os.replace(self._tmp, self._path)
        except OSError as exc:  # the directory went (the run is ending), a full disk
            log.warning("could not publish this worker's metrics: %s", exc)
        return snap

    def read_others(self) -> list[WorkerSnapshot]:
        """The other workers' last snapshots (an unreadable one is left out, logged)."""
        found = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self._path:
                continue
            try:
                found.append(WorkerSnapshot.parse(path.read_text()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.warning(
                    "a worker's metrics could not be read: left out",
                    extra={"path": str(path), "error": str(exc)},
                )
        return found

    async def scrape(self) -> str:
        """`GET /metrics` for the whole gateway: this worker's values now (published first,
        on the loop), the others' as last published (read and combined in a thread: at
        many workers that is milliseconds of parsing the loop need not wait for)."""
        return await asyncio.to_thread(self._combined, self.publish())

    def render(self) -> str:
        """`scrape()` done on the calling thread."""
        return self._combined(self.publish())

    def _combined(self, own: WorkerSnapshot) -> str:
        total, live = combine(
            [own, *self.read_others()], now=self._clock(), stale_s=self._stale_s, alive=self._alive
        )
        return total.render(workers=live)

    async def run(self) -> None:
        """Publish every `PUBLISH_INTERVAL_S` until cancelled."""
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            self.publish()

    def stop(self) -> None:
        """The last snapshot, as this worker exits (after its calls ended)."""
        self.publish()
