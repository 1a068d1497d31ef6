"""The Media Streams protocol as a sans-I/O state machine, and the one framer of agent audio
sent to Twilio.

Order of calls, for the driver that owns the socket:

1. for every text frame received: `receive_text(text)`, then drain `events()` and act on
   each typed event (`StreamStarted`, `AudioReceived`, `MarkPlayed`, `DtmfReceived`,
   `StreamStopped`, `UnknownReceived`);
2. to talk to the caller: `send_audio(pcm)` queues 8 kHz PCM16 in 20 ms frames (a partial
   frame waits for more), `send_mark(name)` queues a mark behind the audio queued so far
   (with nothing queued it goes out at once), `send_clear()` drops what is queued and
   asks Twilio to drop what it has buffered;
3. once per 20 ms of audio, on the driver's schedule: `release_frame()` moves the next
   frame (mu-law, as a `media` message) and the marks right behind it into the output,
   and returns that frame's PCM; Twilio plays media as fast as it arrives, so pacing is
   the driver's;
4. after any of these: write every string from `data_to_send()` to the socket, in order;
5. if the socket closes (with or without `stop`): `connection_lost()`.

States: AWAITING_START (a `connected` message may come first) -> STREAMING -> STOPPED.
Bad input raises `ProtocolError` carrying the close code and reason to send, and so does
sending before `start`; a media payload larger than a few frames is bad input (Twilio
sends one 20 ms frame per message). Whether media keeps to the real clock is the
driver's to check (`InboundMediaGuard`): this object has no clock. After `stop` (or
`connection_lost()`) sending does nothing: the queue is dropped and the stream is gone,
and the driver winding down must not fail on audio still in flight; `open` tells the
driver whether anything sent can still go out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from audio.codec import ulaw_encode
from audio.frames import PCM16, FrameQueue
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

SAMPLE_RATE = 8000  # audio/x-mulaw, the one format Media Streams carries both ways
FRAME_BYTES = 160  # Twilio sends 20 ms of mu-law per media message
MAX_MEDIA_FRAMES = 5  # a little slack over the one frame Twilio sends
# Unknown event names are remembered (to report each once) up to this many, this long.
_MAX_UNKNOWN_NAMES = 32
_UNKNOWN_NAME_CHARS = 64
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


@dataclass(frozen=True, slots=True)
class UnknownReceived:
    """An event this protocol does not know (ignored); `first` for the first of its name."""

    event: str  # truncated to 64 characters
    first: bool


StreamEvent = (
    StreamStarted | AudioReceived | MarkPlayed | DtmfReceived | StreamStopped | UnknownReceived
)


class MediaStreamProtocol:
    """One Media Stream between Twilio and the gateway, with no I/O."""

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        self.stream_sid: StreamSid | None = None
        self._events: list[StreamEvent] = []
        self._outgoing: list[str] = []
        self._frames = FrameQueue(SAMPLE_RATE)
        self.pending_marks: list[str] = []  # marks sent and not yet echoed by Twilio
        self._unknown_names: set[str] = set()

    # ------------------------------------------------------------------ input

    def receive_text(self, text: str) -> None:
        """Parse one text frame from Twilio and queue the events it carries."""
        if self.state is StreamState.STOPPED:
            return  # anything after `stop` is ignored
        message = parse_message(text)
        if type(message) is Media and self.state is StreamState.STREAMING:
            self._on_media(message)  # the message of every 20 ms, checked first
            return
        if isinstance(message, Connected):
            return
        if isinstance(message, Unknown):
            self._on_unknown(message.event)
            return
        if isinstance(message, Start):
            self._on_start(message)
            return
        if self.state is not StreamState.STREAMING:
            raise ProtocolError(POLICY_VIOLATION, f"{type(message).__name__.lower()} before start")
        if isinstance(message, Mark):
            if message.name in self.pending_marks:
                self.pending_marks.remove(message.name)
            self._events.append(MarkPlayed(message.name))
        elif isinstance(message, Dtmf):
            self._events.append(DtmfReceived(message.digit))
        elif isinstance(message, Stop):
            self.state = StreamState.STOPPED
            self._frames.clear()
            self._events.append(StreamStopped(message))

    def _on_media(self, message: Media) -> None:
        if len(message.payload) > MAX_MEDIA_FRAMES * FRAME_BYTES:
            raise ProtocolError(
                POLICY_VIOLATION,
                f"media payload of {len(message.payload)} bytes: over {MAX_MEDIA_FRAMES} "
                f"frames of {FRAME_BYTES}",
            )
        if message.track in ("inbound", "inbound_track"):
            self._events.append(AudioReceived(message.payload, message.timestamp_ms))

    def connection_lost(self) -> None:
        """The socket is gone (closed by either side, or dropped): the stream is over."""
        if self.state is not StreamState.STOPPED:
            self.state = StreamState.STOPPED
            self._frames.clear()

    @property
    def open(self) -> bool:
        """Whether the stream can still carry what is sent (false after `stop` or a lost
        connection; true before `start`, when sending is a driver's mistake and raises)."""
        return self.state is not StreamState.STOPPED

    def _on_start(self, start: Start) -> None:
        if self.state is not StreamState.AWAITING_START:
            raise ProtocolError(PROTOCOL_ERROR, "second start message")
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != ("audio/x-mulaw", SAMPLE_RATE, 1):
            raise ProtocolError(UNSUPPORTED_DATA, "only audio/x-mulaw 8000 Hz mono is supported")
        self.state = StreamState.STREAMING
        self.stream_sid = start.stream_sid
        self._events.append(StreamStarted(start))

    def _on_unknown(self, event: str) -> None:
        name = event[:_UNKNOWN_NAME_CHARS]
        first = name not in self._unknown_names and len(self._unknown_names) < _MAX_UNKNOWN_NAMES
        if first:
            self._unknown_names.add(name)
        self._events.append(UnknownReceived(name, first))

    def events(self) -> list[StreamEvent]:
        """Return and forget the events parsed since the last call."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ output

    def _streaming(self) -> StreamSid | None:
        """The stream's sid while it streams; None once it stopped (sending is dropped)."""
        if self.state is StreamState.STOPPED:
            return None
        if self.state is not StreamState.STREAMING or self.stream_sid is None:
            raise ProtocolError(PROTOCOL_ERROR, "stream is not streaming")
        return self.stream_sid

    @property
    def queued_frames(self) -> int:
        """Whole 20 ms frames queued and not yet released."""
        return self._frames.queued_frames

    def send_audio(self, pcm: PCM16) -> None:
        """Queue agent audio (8 kHz PCM16) in 20 ms frames; a partial frame waits for more."""
        if self._streaming() is not None:
            self._frames.push(pcm)

    def send_mark(self, name: str) -> None:
        """Queue a mark behind the audio queued so far, padding a partial frame with silence;
        Twilio echoes it once that audio has played. With nothing queued it goes out now."""
        stream_sid = self._streaming()
        if stream_sid is not None:
            self._frames.mark(name)
            self._send_marks(stream_sid)

    def send_clear(self) -> None:
        """Drop the queued audio and marks, and ask Twilio to drop what it has buffered
        (barge-in). Twilio then echoes the marks it still held."""
        stream_sid = self._streaming()
        if stream_sid is not None:
            self._frames.clear()
            self._outgoing.append(Clear(stream_sid).serialize())

    def release_frame(self) -> PCM16 | None:
        """Move the next 20 ms frame and the marks right behind it into `data_to_send()`;
        return the frame's PCM as it was queued, or None if no whole frame is queued."""
        stream_sid = self.stream_sid
        pcm = self._frames.pop_frame()
        if pcm is None or stream_sid is None:
            return None
        self._outgoing.append(OutboundMedia(stream_sid, ulaw_encode(pcm)).serialize())
        self._send_marks(stream_sid)
        return pcm

    def _send_marks(self, stream_sid: StreamSid) -> None:
        for name in self._frames.pop_markers():
            self.pending_marks.append(name)
            self._outgoing.append(OutboundMark(stream_sid, name).serialize())

    def data_to_send(self) -> list[str]:
        """Return and forget the text frames to write, in order."""
        out, self._outgoing = self._outgoing, []
        return out
