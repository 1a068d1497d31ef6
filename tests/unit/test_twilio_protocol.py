"""Media Streams messages and the sans-I/O protocol: strings in, typed events and strings out."""

import base64
import json
import random

import pytest

from telephony.errors import ProtocolError
from telephony.twilio import (
    AudioReceived,
    Clear,
    Connected,
    Dtmf,
    DtmfReceived,
    Mark,
    MarkPlayed,
    Media,
    MediaStreamProtocol,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    StreamSid,
    StreamStarted,
    StreamState,
    StreamStopped,
    Unknown,
    parse_message,
)

# Shapes as in Twilio's "Media Streams - WebSocket Messages" reference.
CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"FirstName": "Jane", "token": "t"},
        },
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    }
)
PAYLOAD = bytes(range(160))
MEDIA = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "3",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "5",
            "payload": base64.b64encode(PAYLOAD).decode(),
        },
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    }
)
MARK = json.dumps(
    {
        "event": "mark",
        "sequenceNumber": "4",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "mark": {"name": "my label"},
    }
)
DTMF = json.dumps(
    {
        "event": "dtmf",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
)
STOP = json.dumps(
    {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "stop": {
            "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        },
    }
)


def test_parse_every_inbound_message() -> None:
    assert parse_message(CONNECTED) == Connected(protocol="Call", version="1.0.0")
    start = parse_message(START)
    assert isinstance(start, Start)
    assert start.call_sid == "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    assert start.stream_sid == "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    assert dict(start.custom_parameters) == {"FirstName": "Jane", "token": "t"}
    assert (start.media_format.encoding, start.media_format.sample_rate) == ("audio/x-mulaw", 8000)
    assert start.tracks == ("inbound",)
    media = parse_message(MEDIA)
    assert isinstance(media, Media)
    assert (media.payload, media.timestamp_ms, media.chunk, media.track) == (
        PAYLOAD,
        5,
        "1",
        "inbound",
    )
    mark = parse_message(MARK)
    assert isinstance(mark, Mark) and mark.name == "my label"
    dtmf = parse_message(DTMF)
    assert isinstance(dtmf, Dtmf) and dtmf.digit == "1"
    stop = parse_message(STOP)
    assert isinstance(stop, Stop) and stop.call_sid == "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    assert parse_message('{"event": "something-new", "x": 1}') == Unknown("something-new")


def test_serialize_outbound_messages_exactly() -> None:
    sid = StreamSid("MZ1")
    assert OutboundMedia(sid, b"\xff\x00").serialize() == (
        '{"event":"media","streamSid":"MZ1","media":{"payload":"/wA="}}'
    )
    assert OutboundMark(sid, "seg-1").serialize() == (
        '{"event":"mark","streamSid":"MZ1","mark":{"name":"seg-1"}}'
    )
    assert Clear(sid).serialize() == '{"event":"clear","streamSid":"MZ1"}'


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", 1007),
        ("[1, 2]", 1007),
        ('{"no": "event"}', 1007),
        ('{"event": "media", "media": {"payload": "!!"}}', 1007),
        ('{"event": "media", "media": {}}', 1007),
        ('{"event": "mark", "mark": {"name": 5}}', 1007),
        ('{"event": "start", "start": {"callSid": "CA1"}}', 1007),
        ('{"event": "media", "media": {"payload": "AA==", "timestamp": "x"}}', 1007),
        ("x" * 70_000, 1009),
    ],
)
def test_bad_input_raises_protocol_error_with_close_code(text: str, code: int) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_message(text)
    assert raised.value.code == code
    assert raised.value.reason


def test_fuzzed_input_only_ever_raises_protocol_error() -> None:
    rng = random.Random(1234)
    seeds = [CONNECTED, START, MEDIA, MARK, DTMF, STOP]
    alphabet = '{}[]":,0123456789abcdefghijklmnopqrstuvwxyz \\/+='
    for _ in range(2000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del text[pos]
            else:
                text.insert(pos, rng.choice(alphabet))
        try:
            parse_message("".join(text))
        except ProtocolError:
            pass


def _started() -> MediaStreamProtocol:
    protocol = MediaStreamProtocol()
    protocol.receive_text(CONNECTED)
    protocol.receive_text(START)
    events = protocol.events()
    assert len(events) == 1 and isinstance(events[0], StreamStarted)
    return protocol


def test_a_whole_stream() -> None:
    protocol = MediaStreamProtocol()
    assert protocol.state is StreamState.AWAITING_START
    protocol = _started()
    assert protocol.state is StreamState.STREAMING
    for _ in range(3):
        protocol.receive_text(MEDIA)
    protocol.receive_text(DTMF)
    protocol.send_mark("my label")
    assert protocol.pending_marks == ["my label"]
    protocol.receive_text(MARK)
    assert protocol.pending_marks == []
    protocol.receive_text('{"event": "brand-new"}')
    protocol.receive_text(STOP)
    events = protocol.events()
    assert [type(e) for e in events] == [
        AudioReceived,
        AudioReceived,
        AudioReceived,
        DtmfReceived,
        MarkPlayed,
        StreamStopped,
    ]
    assert events[0] == AudioReceived(PAYLOAD, 5)
    assert protocol.state is StreamState.STOPPED
    protocol.receive_text(MEDIA)  # ignored after stop
    protocol.receive_text("garbage after stop")
    assert protocol.events() == []


def test_send_audio_cuts_20ms_frames_and_keeps_the_remainder() -> None:
    protocol = _started()
    protocol.send_audio(b"\x01" * 400)
    out = protocol.data_to_send()
    assert len(out) == 2
    frames = [base64.b64decode(json.loads(t)["media"]["payload"]) for t in out]
    assert frames == [b"\x01" * 160, b"\x01" * 160]
    protocol.send_mark("end")  # flushes the 80-byte remainder padded with silence first
    out = protocol.data_to_send()
    assert len(out) == 2
    assert base64.b64decode(json.loads(out[0])["media"]["payload"]) == b"\x01" * 80 + b"\xff" * 80
    assert json.loads(out[1]) == {
        "event": "mark",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "mark": {"name": "end"},
    }
    assert protocol.data_to_send() == []


def test_clear_drops_the_unsent_remainder() -> None:
    protocol = _started()
    protocol.send_audio(b"\x01" * 100)
    protocol.send_clear()
    protocol.flush_audio()
    assert protocol.data_to_send() == [
        '{"event":"clear","streamSid":"MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}'
    ]


@pytest.mark.parametrize("message", [MEDIA, MARK, DTMF, STOP])
def test_messages_before_start_are_refused(message: str) -> None:
    protocol = MediaStreamProtocol()
    protocol.receive_text(CONNECTED)
    with pytest.raises(ProtocolError) as raised:
        protocol.receive_text(message)
    assert raised.value.code == 1008


def test_second_start_and_unsupported_format_are_refused() -> None:
    protocol = _started()
    with pytest.raises(ProtocolError) as raised:
        protocol.receive_text(START)
    assert raised.value.code == 1002
    wideband = json.loads(START)
    wideband["start"]["mediaFormat"]["sampleRate"] = 16000
    with pytest.raises(ProtocolError) as raised:
        MediaStreamProtocol().receive_text(json.dumps(wideband))
    assert raised.value.code == 1003


def test_sending_before_start_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        MediaStreamProtocol().send_audio(b"\x00" * 160)
    with pytest.raises(ProtocolError):
        MediaStreamProtocol().send_clear()
