"""Process metrics exported at `GET /metrics` in the Prometheus text format.

One `GatewayMetrics` lives in each gateway process. Alone (`serve --workers 1`, the
in-process app of the tests) a process exports its own values. Under `serve --workers N`
each worker publishes them to a directory its supervisor made for the run
(`gateway/worker_metrics.py`: a file per worker, replaced atomically every second, at each
scrape it answers and at its exit), and the worker that answers a scrape exports the
gateway's:
- counters and histograms are the sum over every worker's file, the dead ones' included:
  a worker started in a dead one's place takes its last counters over as a retired total
  and adds its own, so no counter goes backwards when a worker dies (as in Prometheus
  client_python's multiprocess mode). A dead worker's counts since its last publication
  (at most a second's) are lost;
- gauges come from the live workers only (their process exists, their file is fresher
  than METRICS_STALE_S): `calls_active` and `event_streams_active` summed,
  `event_loop_lag_ms` and `write_backlog_ms` the highest, and each worker's lag and live
  calls also per worker (`voice_gateway_worker_event_loop_lag_ms{worker="0"}`,
  `..._worker_calls_active`);
- `voice_gateway_workers` says how many workers are live (1 for a single process).
The scraping worker publishes its own file before it reads the others', so two scrapes
that two workers answer one after the other never see a counter go down.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from gateway.call.latency import STAGES

_GAUGES = ("calls_active", "event_streams_active", "event_loop_lag_ms", "write_backlog_ms")
# Upper bounds (ms) of the per-turn latency histogram buckets.
LATENCY_BUCKETS_MS = (25, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000)

# How a caller lookup ended: its answer used; no answer in time; a failed exchange or a
# non-2xx status; an answer not JSON, too large or wrongly shaped (or naming an assistant
# not of the organisation, or metadata over the limits); a URL the SSRF guard refused.
LookupOutcome = Literal["ok", "timeout", "error", "invalid", "refused"]
LOOKUP_OUTCOMES: tuple[LookupOutcome, ...] = get_args(LookupOutcome)


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value)] += 1
        self.total += value
        self.n += 1

    def add(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.n += other.n


@dataclass(frozen=True, slots=True)
class WorkerGauges:
    """The gauges of one live worker of `serve --workers N`, exported per worker."""

    worker: int
    calls_active: int
    event_loop_lag_ms: float


@dataclass(slots=True)
class GatewayMetrics:
    """Counters of this gateway process; one instance lives in the app's context."""

    calls_started_total: int = 0
    calls_active: int = 0
    outbound_frames_total: int = 0
    outbound_frames_late_total: int = 0  # sent more than 20 ms after they were due to play
    outbound_underruns_total: int = 0  # agent audio ran out mid-speech (producer too slow)
    inbound_frames_total: int = 0
    # agent audio, marks and clears the session asked for after the stream stopped or closed
    outbound_dropped_after_stop_total: int = 0
    protocol_errors_total: int = 0
    unknown_events_total: int = 0  # Media Streams events of names this gateway ignores
    streams_without_start_total: int = 0  # sockets closed for sending no `start` in time
    streams_idle_total: int = 0  # started streams closed for sending nothing in time
    lost_call_sweeps_total: int = 0  # rounds of this gateway's lost-call sweeper
    calls_lost_total: int = 0  # calls of stopped gateways this gateway finished
    campaign_rounds_total: int = 0  # rounds of this gateway's campaign dialer
    campaign_attempts_total: int = 0  # campaign attempts this gateway claimed and placed
    stt_reconnects_total: int = 0
    # Turn-taking: caller sound over the agent paused it; caller speech over it was an
    # interruption (the reply cancelled) or not (the agent played on); pauses judged, and
    # those the audio model and the words both judged complete when first judged.
    agent_pauses_total: int = 0
    agent_interruptions_total: int = 0
    agent_resumes_total: int = 0
    turns_judged_total: int = 0
    turns_judged_complete_total: int = 0
    caller_idle_prompts_total: int = 0  # reprompts and idle goodbyes said
    # Outbound calls screened for an answering machine (gateway/call/voicemail.py): a person
    # (or no verdict in time) greeted, a machine hung up on, a message left on a machine.
    screened_greeted_total: int = 0
    screened_hung_up_total: int = 0
    screened_messages_left_total: int = 0
    keypad_entries_total: int = 0
    event_streams_active: int = 0  # GET /events clients connected to this process
    event_streams_dropped_total: int = 0  # clients dropped for not reading (buffer full)
    # Admission (gateway/call/admission.py): the loop's lag as admission judges it (90th
    # percentile over its window); stream sockets refused for the pending-start bound; refused
    # calls not stored because too many refusals were being stored at once.
    event_loop_lag_ms: float = 0.0
    # How long the oldest of its calls' writes has waited to be stored (admission judges it).
    write_backlog_ms: float = 0.0
    streams_refused_total: int = 0
    refused_calls_unstored_total: int = 0
    # New calls refused because this process was full, by arrival and cause.
    calls_refused: dict[tuple[str, str], int] = field(default_factory=dict)
    provider_failures: dict[str, int] = field(default_factory=dict)
    inbound_lookups: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(LOOKUP_OUTCOMES, 0)
    )
    turn_latency: dict[str, _Histogram] = field(
        default_factory=lambda: {stage: _Histogram() for stage in STAGES}
    )

    def provider_failed(self, provider: str) -> None:
        """Count one failure of `provider` (a dropped socket, an error answer, a timeout)."""
        self.provider_failures[provider] = self.provider_failures.get(provider, 0) + 1

    def call_refused(self, arrival: str, cause: str) -> None:
        """Count one call refused by admission (`arrival`: twilio, livekit, outbound, web)."""
        key = (arrival, cause)
        self.calls_refused[key] = self.calls_refused.get(key, 0) + 1

    def loop_lag(self, lag_ms: float) -> None:
        self.event_loop_lag_ms = lag_ms

    def inbound_lookup(self, outcome: LookupOutcome) -> None:
        """Count one caller lookup by how it ended."""
        self.inbound_lookups[outcome] = self.inbound_lookups.get(outcome, 0) + 1

    def event_stream_dropped(self) -> None:
        self.event_streams_dropped_total += 1

    def stt_reconnected(self) -> None:
        self.stt_reconnects_total += 1

    def observe_turn(self, latency_ms: Mapping[str, float]) -> None:
        """Add one agent turn's latency (ms after the caller's end of speech) per stage."""
        for stage, value in latency_ms.items():
            self.turn_latency.setdefault(stage, _Histogram()).observe(value)

    def add_counters(self, other: GatewayMetrics) -> None:
        """Add `other`'s counters and histograms to these (its gauges are not added)."""
        for name in _SCALARS:
            if name not in _GAUGES:
                setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, count in other.calls_refused.items():
            self.calls_refused[key] = self.calls_refused.get(key, 0) + count
        for provider, count in other.provider_failures.items():
            self.provider_failures[provider] = self.provider_failures.get(provider, 0) + count
        for outcome, count in other.inbound_lookups.items():
            self.inbound_lookups[outcome] = self.inbound_lookups.get(outcome, 0) + count
        for stage, hist in other.turn_latency.items():
            self.turn_latency.setdefault(stage, _Histogram()).add(hist)

    def to_json(self) -> dict[str, Any]:
        """Every value, JSON-ready; `from_json` reads it back."""
        return {
            **{name: getattr(self, name) for name in _SCALARS},
            "calls_refused": [[a, c, n] for (a, c), n in self.calls_refused.items()],
            "provider_failures": dict(self.provider_failures),
            "inbound_lookups": dict(self.inbound_lookups),
            "turn_latency": {
                stage: {"counts": list(h.counts), "total": h.total, "n": h.n}
                for stage, h in self.turn_latency.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatewayMetrics:
        """The metrics `to_json` wrote (a value it names not is 0); ValueError for any other
        shape."""
        metrics = cls()
        try:
            for name in _SCALARS:
                value = data.get(name, 0)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name}: not a number")
                setattr(metrics, name, type(getattr(metrics, name))(value))
            for arrival, cause, count in data.get("calls_refused", []):
                metrics.calls_refused[(str(arrival), str(cause))] = int(count)
            for provider, count in dict(data.get("provider_failures", {})).items():
                metrics.provider_failures[str(provider)] = int(count)
            for outcome, count in dict(data.get("inbound_lookups", {})).items():
                metrics.inbound_lookups[str(outcome)] = int(count)
            for stage, hist in dict(data.get("turn_latency", {})).items():
                counts = [int(c) for c in hist["counts"]]
                if len(counts) != len(LATENCY_BUCKETS_MS) + 1:
                    raise ValueError(f"turn_latency {stage}: {len(counts)} buckets")
                metrics.turn_latency[str(stage)] = _Histogram(
                    counts, float(hist["total"]), int(hist["n"])
                )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a metrics snapshot: {exc!r}") from exc
        return metrics

    def render(self, *, workers: Sequence[WorkerGauges] | None = None) -> str:
        """The metrics in the Prometheus text exposition format: this process's, or (with
        `workers`, the live workers' gauges) a whole `serve --workers N` gateway's once
        combined (`gateway/worker_metrics.py`)."""
        lines = []
        for name in _SCALARS:
            value = getattr(self, name)
            kind = "gauge" if name in _GAUGES else "counter"
            lines.append(f"# TYPE voice_gateway_{name} {kind}")
            text = f"{value:.1f}" if isinstance(value, float) else str(value)
            lines.append(f"voice_gateway_{name} {text}")
        lines.append("# TYPE voice_gateway_workers gauge")
        lines.append(f"voice_gateway_workers {1 if workers is None else len(workers)}")
        if workers is not None:
            ordered = sorted(workers, key=lambda w: w.worker)
            lines.append("# TYPE voice_gateway_worker_calls_active gauge")
            for w in ordered:
                lines.append(
                    f'voice_gateway_worker_calls_active{{worker="{w.worker}"}} {w.calls_active}'
                )
            lines.append("# TYPE voice_gateway_worker_event_loop_lag_ms gauge")
            for w in ordered:
                lag = f"{w.event_loop_lag_ms:.1f}"
                lines.append(f'voice_gateway_worker_event_loop_lag_ms{{worker="{w.worker}"}} {lag}')
        lines.append("# TYPE voice_gateway_calls_refused_total counter")
        for (arrival, cause), count in sorted(self.calls_refused.items()):
            labels = f'arrival="{arrival}",cause="{cause}"'
            lines.append(f"voice_gateway_calls_refused_total{{{labels}}} {count}")
        lines.append("# TYPE voice_gateway_provider_failures_total counter")
        for provider, count in sorted(self.provider_failures.items()):
            lines.append(f'voice_gateway_provider_failures_total{{provider="{provider}"}} {count}')
        lines.append("# TYPE voice_gateway_inbound_lookups_total counter")
        for outcome, count in self.inbound_lookups.items():
            lines.append(f'voice_gateway_inbound_lookups_total{{outcome="{outcome}"}} {count}')
        name = "voice_gateway_turn_latency_ms"
        lines.append(f"# HELP {name} Caller end of speech to each stage of the agent's answer.")
        lines.append(f"# TYPE {name} histogram")
        for stage, hist in self.turn_latency.items():
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), hist.counts, strict=True):
                cumulative += count
                lines.append(f'{name}_bucket{{stage="{stage}",le="{bound}"}} {cumulative}')
            lines.append(f'{name}_sum{{stage="{stage}"}} {hist.total:.1f}')
            lines.append(f'{name}_count{{stage="{stage}"}} {hist.n}')
        return "\n".join(lines) + "\n"


# The plain counters and gauges (not the labelled families), in the order they are exported.
_SCALARS = tuple(f.name for f in fields(GatewayMetrics) if isinstance(f.default, int | float))
