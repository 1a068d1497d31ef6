"""How fast the shared machine runs at the moment: a fixed piece of Python and numpy work
(dicts, calls, a JSON parse, table lookups and a dot product, as a gateway does per frame),
timed in its own CPU time every 100 ms while a bench measures something else.

On a host shared with other tenants the same code costs more CPU when the host is busy
(the cores' caches and execution units are shared): on 2026-12-03 one gateway run cost
0.61 % of a core per silent call and the next 0.91 %, same code. Dividing a CPU figure by
the probe's median makes runs taken minutes apart comparable; the probe itself takes about
1 % of a core.

    with speed_probe() as probe:
        ...  # the measured run
    probe.median_ms  # CPU time of one piece of work, median over the run

    python bench/speed_probe.py  # the probe's loop (run by `speed_probe`, stops on EOF)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

PERIOD_S = 0.1


@dataclass
class Probe:
    median_ms: float = float("nan")
    samples: int = 0


def _work() -> int:
    import numpy as np
    import orjson

    table = np.arange(256, dtype=np.int16) * 97
    payload = bytes(range(160))
    message = b'{"event":"media","sequenceNumber":"7","media":{"timestamp":"140","payload":"x"}}'
    acc = 0
    for i in range(1500):
        event = {"event": "media", "n": i, "track": "inbound"}
        acc += len(event) + (i & 7)
    for _ in range(40):
        pcm = table[np.frombuffer(payload, dtype=np.uint8)].astype(np.int64)
        acc += int(np.dot(pcm, pcm)) & 1
        acc += len(orjson.loads(message))
    return acc


def _loop() -> None:
    """Time `_work` every PERIOD_S until stdin closes; print the median ms and the count."""
    times: list[float] = []
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    _work()  # imports, caches
    while not stop.wait(PERIOD_S):
        t0 = time.thread_time()
        _work()
        times.append(1000 * (time.thread_time() - t0))
    median = statistics.median(times) if times else float("nan")
    sys.stdout.write(f"{median:.4f} {len(times)}\n")


@contextlib.contextmanager
def speed_probe() -> Iterator[Probe]:
    """Run the probe's loop in its own process for the length of the block."""
    probe = Probe()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield probe
    finally:
        out, _ = proc.communicate(input="", timeout=30)
        median, count = out.split()
        probe.median_ms, probe.samples = float(median), int(count)


if __name__ == "__main__":
    _loop()
