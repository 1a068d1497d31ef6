"""Process counters exported at `GET /metrics` in the Prometheus text format."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class GatewayMetrics:
    """Counters of this gateway process; one instance lives in the app's context."""

    calls_started_total: int = 0
    calls_active: int = 0
    outbound_frames_total: int = 0
    outbound_frames_late_total: int = 0  # sent more than 20 ms after they were due to play
    outbound_underruns_total: int = 0  # agent audio ran out mid-speech (producer too slow)
    inbound_frames_total: int = 0
    protocol_errors_total: int = 0

    def render(self) -> str:
        """The counters in the Prometheus text exposition format."""
        lines = []
        for f in fields(self):
            kind = "gauge" if f.name == "calls_active" else "counter"
            lines.append(f"# TYPE voice_gateway_{f.name} {kind}")
            lines.append(f"voice_gateway_{f.name} {getattr(self, f.name)}")
        return "\n".join(lines) + "\n"
