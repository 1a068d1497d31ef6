"""The Media Streams protocol as a sans-I/O state machine.

Order of calls, for the driver that owns the socket:

1. for every text frame received: `receive_text(text)`, then drain `events()` and act on
   each typed event (`StreamStarted`, `AudioReceived`, `MarkPlayed`, `DtmfReceived`,
   `StreamStopped`);
2. to talk to the caller: `send_audio()`, `send_mark()`, `send_clear()`;
3. after either step: write every string from `data_to_send()` to the socket, in order.

States: AWAITING_START (a `connected` message may come first) -> STREAMING -> STOPPED.
Bad input raises `ProtocolError` carrying the close code and reason to send.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from telephony.errors import ProtocolError
from telephony.twilio.messages import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    StreamSid,
    Unknown,
    parse_message,
)

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
MULAW_SILENCE = b"\xff"
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008


class StreamState(enum.Enum):
    AWAITING_START = "awaiting-start"
    STREAMING = "streaming"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StreamStarted:
    start: Start


@dataclass(frozen=True, slots=True)
class AudioReceived:
    payload: bytes  # 8 kHz mu-law
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    name: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    stop: Stop


StreamEvent = StreamStarted | AudioReceived | MarkPlayed | DtmfReceived | StreamStopped


class MediaStreamProtocol:
    """One Media Stream between Twilio and the gateway, with no I/O."""

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        self.stream_sid: StreamSid | None = None
        self._events: list[StreamEvent] = []
        self._outgoing: list[str] = []
        self._partial = b""
        self.pending_marks: list[str] = []

    # ------------------------------------------------------------------ input

    def receive_text(self, text: str) -> None:
        """Parse one text frame from Twilio and queue the events it carries."""
        if self.state is StreamState.STOPPED:
            return  # anything after `stop` is ignored
        message = parse_message(text)
        if isinstance(message, Connected):
            return
        if isinstance(message, Unknown):
            log.info("unknown media stream event ignored", extra={"event": message.event})
            return
        if isinstance(message, Start):
            self._on_start(message)
            return
        if self.state is not StreamState.STREAMING:
            raise ProtocolError(POLICY_VIOLATION, f"{type(message).__name__.lower()} before start")
        if isinstance(message, Media):
            if message.track in ("inbound", "inbound_track"):
                self._events.append(AudioReceived(message.payload, message.timestamp_ms))
        elif isinstance(message, Mark):
            if message.name in self.pending_marks:
                self.pending_marks.remove(message.name)
            self._events.append(MarkPlayed(message.name))
        elif isinstance(message, Dtmf):
            self._events.append(DtmfReceived(message.digit))
        elif isinstance(message, Stop):
            self.state = StreamState.STOPPED
            self._events.append(StreamStopped(message))

    def _on_start(self, start: Start) -> None:
        if self.state is not StreamState.AWAITING_START:
            raise ProtocolError(PROTOCOL_ERROR, "second start message")
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != ("audio/x-mulaw", 8000, 1):
            raise ProtocolError(UNSUPPORTED_DATA, "only audio/x-mulaw 8000 Hz mono is supported")
        self.state = StreamState.STREAMING
        self.stream_sid = start.stream_sid
        self._events.append(StreamStarted(start))

    def events(self) -> list[StreamEvent]:
        """Return and forget the events parsed since the last call."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ output

    def _require_streaming(self) -> StreamSid:
        if self.state is not StreamState.STREAMING or self.stream_sid is None:
            raise ProtocolError(PROTOCOL_ERROR, "stream is not streaming")
        return self.stream_sid

    def send_audio(self, mulaw: bytes) -> None:
        """Queue agent audio as 20 ms media messages; a partial frame waits for more."""
        stream_sid = self._require_streaming()
        data = self._partial + mulaw
        whole = len(data) - len(data) % FRAME_BYTES
        for offset in range(0, whole, FRAME_BYTES):
            payload = data[offset : offset + FRAME_BYTES]
            self._outgoing.append(OutboundMedia(stream_sid, payload).serialize())
        self._partial = data[whole:]

    def flush_audio(self) -> None:
        """Send a waiting partial frame, padded with silence to 20 ms."""
        if self._partial:
            self.send_audio(MULAW_SILENCE * (FRAME_BYTES - len(self._partial)))

    def send_mark(self, name: str) -> None:
        """Queue a mark; Twilio echoes it once the audio sent before it has played."""
        stream_sid = self._require_streaming()
        self.flush_audio()
        self.pending_marks.append(name)
        self._outgoing.append(OutboundMark(stream_sid, name).serialize())

    def send_clear(self) -> None:
        """Ask Twilio to drop the audio it has buffered (barge-in)."""
        stream_sid = self._require_streaming()
        self._partial = b""
        self._outgoing.append(Clear(stream_sid).serialize())

    def data_to_send(self) -> list[str]:
        """Return and forget the text frames to write, in order."""
        out, self._outgoing = self._outgoing, []
        return out
