"""Twilio Media Streams messages as typed values: parse what Twilio sends, serialize what we send.

Shapes follow Twilio's "Media Streams - WebSocket Messages" reference. Raw dicts never
leave this module. Unknown extra fields are ignored (Twilio may add some); an unknown
`event` parses to `Unknown` so the protocol can ignore it instead of failing the call.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NewType

import orjson

from telephony.errors import ProtocolError

CallSid = NewType("CallSid", str)
StreamSid = NewType("StreamSid", str)
AccountSid = NewType("AccountSid", str)

MAX_MESSAGE_CHARS = 64 * 1024

INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise ProtocolError(INVALID_PAYLOAD, f"{where}.{key} missing or not {kind.__name__}")
    return value


def _optional_str(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Connected:
        return cls(protocol=_optional_str(obj, "protocol"), version=_optional_str(obj, "version"))


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: StreamSid
    call_sid: CallSid
    account_sid: AccountSid
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    media_format: MediaFormat
    sequence_number: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Start:
        start = _field(obj, "start", dict, "start")
        fmt = _field(start, "mediaFormat", dict, "start")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise ProtocolError(INVALID_PAYLOAD, "start.customParameters must map strings")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError(INVALID_PAYLOAD, "start.tracks must be a list of strings")
        return cls(
            stream_sid=StreamSid(
                _optional_str(start, "streamSid") or _field(obj, "streamSid", str, "start")
            ),
            call_sid=CallSid(_field(start, "callSid", str, "start")),
            account_sid=AccountSid(_optional_str(start, "accountSid")),
            tracks=tuple(tracks),
            custom_parameters=MappingProxyType(dict(params)),
            media_format=MediaFormat(
                encoding=_field(fmt, "encoding", str, "start.mediaFormat"),
                sample_rate=_field(fmt, "sampleRate", int, "start.mediaFormat"),
                channels=_field(fmt, "channels", int, "start.mediaFormat"),
            ),
            sequence_number=_optional_str(obj, "sequenceNumber"),
        )


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: StreamSid
    sequence_number: str
    track: str
    chunk: str
    timestamp_ms: int
    payload: bytes

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Media:
        # Fifty of these a second per call: the checks are written out, not looked up.
        media = obj.get("media")
        if type(media) is not dict:
            raise ProtocolError(INVALID_PAYLOAD, "media.media missing or not dict")
        encoded = media.get("payload")
        if type(encoded) is not str:
            raise ProtocolError(INVALID_PAYLOAD, "media.payload missing or not str")
        try:
            # Strict: only the base64 alphabet, padding only at the end.
            payload = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(INVALID_PAYLOAD, "media.payload is not base64") from exc
        timestamp = media.get("timestamp", "0")
        try:
            timestamp_ms = int(timestamp)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(INVALID_PAYLOAD, "media.timestamp is not a number") from exc
        stream_sid, sequence = obj.get("streamSid", ""), obj.get("sequenceNumber", "")
        track, chunk = media.get("track", "inbound"), media.get("chunk", "")
        return cls(
            stream_sid=StreamSid(stream_sid if type(stream_sid) is str else ""),
            sequence_number=sequence if type(sequence) is str else "",
            track=track if type(track) is str else "inbound",
            chunk=chunk if type(chunk) is str else "",
            timestamp_ms=timestamp_ms,
            payload=payload,
        )


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: StreamSid
    name: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Mark:
        mark = _field(obj, "mark", dict, "mark")
        return cls(
            stream_sid=StreamSid(_optional_str(obj, "streamSid")),
            name=_field(mark, "name", str, "mark"),
        )


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: StreamSid
    digit: str
    track: str

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Dtmf:
        dtmf = _field(obj, "dtmf", dict, "dtmf")
        return cls(
            stream_sid=StreamSid(_optional_str(obj, "streamSid")),
            digit=_field(dtmf, "digit", str, "dtmf"),
            track=_optional_str(dtmf, "track", "inbound_track"),
        )


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: StreamSid
    call_sid: CallSid
    account_sid: AccountSid

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Stop:
        stop = obj.get("stop")
        stop = stop if isinstance(stop, dict) else {}
        return cls(
            stream_sid=StreamSid(_optional_str(obj, "streamSid")),
            call_sid=CallSid(_optional_str(stop, "callSid")),
            account_sid=AccountSid(_optional_str(stop, "accountSid")),
        )


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this gateway does not know; Twilio may add new ones."""

    event: str


InboundMessage = Connected | Start | Media | Mark | Dtmf | Stop | Unknown

_PARSERS: Mapping[str, Any] = {
    "connected": Connected.parse,
    "start": Start.parse,
    "media": Media.parse,
    "mark": Mark.parse,
    "dtmf": Dtmf.parse,
    "stop": Stop.parse,
}


def parse_message(text: str) -> InboundMessage:
    """Parse one text frame from Twilio; raise `ProtocolError` with a close code if bad."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(MESSAGE_TOO_BIG, "message over 64 KiB")
    try:
        obj = orjson.loads(text)  # a third of json's time, fifty messages a second per call
    except orjson.JSONDecodeError as exc:  # nesting past 1024 levels included
        raise ProtocolError(INVALID_PAYLOAD, "message is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_PAYLOAD, "message is not a JSON object")
    event = obj.get("event")
    if not isinstance(event, str):
        raise ProtocolError(INVALID_PAYLOAD, "message has no event")
    parser = _PARSERS.get(event)
    if parser is None:
        return Unknown(event)
    message: InboundMessage = parser(obj)
    return message


def _compact(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    stream_sid: StreamSid
    payload: bytes

    def serialize(self) -> str:
        # What `_compact` writes, fifty times a second per call without building a dict:
        # base64 needs no JSON escaping, the sid does (json.dumps).
        encoded = base64.b64encode(self.payload).decode("ascii")
        sid = json.dumps(self.stream_sid)
        return f'{{"event":"media","streamSid":{sid},"media":{{"payload":"{encoded}"}}}}'


@dataclass(frozen=True, slots=True)
class OutboundMark:
    stream_sid: StreamSid
    name: str

    def serialize(self) -> str:
        return _compact(
            {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": self.name}}
        )


@dataclass(frozen=True, slots=True)
class Clear:
    stream_sid: StreamSid

    def serialize(self) -> str:
        return _compact({"event": "clear", "streamSid": self.stream_sid})
