"""Media Streams messages and the sans-I/O protocol: strings in, typed events and strings out."""

import base64
import json
import random

import numpy as np
import pytest

from audio.codec import ulaw_decode, ulaw_encode
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
    UnknownReceived,
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


def test_outbound_media_is_the_compact_json_of_its_fields() -> None:
    """The media message is written without a dict; it must still be that dict's JSON,
    a stream sid that needs escaping included."""
    for sid in ("MZ" + "a" * 32, 'M"Z\\1', "MZ\u00e9\n"):
        payload = bytes(range(256))
        expected = {
            "event": "media",
            "streamSid": sid,
            "media": {"payload": base64.b64encode(payload).decode()},
        }
        text = OutboundMedia(StreamSid(sid), payload).serialize()
        assert json.loads(text) == expected
        assert text == json.dumps(expected, separators=(",", ":"))


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
        ('{"event": "media", "media": {"payload": "AA==AA=="}}', 1007),  # data after padding
        ('{"event": "media", "media": {"payload": "AA\\nA"}}', 1007),  # not the alphabet
        ('{"event": "media", "media": {"payload": "AAA"}}', 1007),  # padding missing
        ('{"event": "media", "media": {"payload": 5}}', 1007),
        ('{"event": "media", "media": []}', 1007),
        ('{"event": "media", "n": ' + "[" * 2000 + "]" * 2000 + "}", 1007),  # too deep
        ('{"event": "media", "n": 1' + "0" * 40 + "}", 1007),  # a number past 64 bits
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
        UnknownReceived,
        StreamStopped,
    ]
    assert events[5] == UnknownReceived("brand-new", first=True)
    assert events[0] == AudioReceived(PAYLOAD, 5)
    assert protocol.state is StreamState.STOPPED
    protocol.receive_text(MEDIA)  # ignored after stop
    protocol.receive_text("garbage after stop")
    assert protocol.events() == []


SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
SILENT_MEDIA = (
    '{"event":"media","streamSid":"' + SID + '","media":{"payload":"' + "/" * 212 + '/w=="}}'
)  # 160 bytes of 0xff, the mu-law code of zero


def _mark_text(name: str) -> str:
    return '{"event":"mark","streamSid":"' + SID + '","mark":{"name":"' + name + '"}}'


def _media_text(mulaw: bytes) -> str:
    return OutboundMedia(StreamSid(SID), mulaw).serialize()


def _payloads(texts: list[str]) -> list[bytes]:
    return [base64.b64decode(json.loads(t)["media"]["payload"]) for t in texts]


def test_send_audio_cuts_20ms_frames_and_keeps_the_remainder() -> None:
    protocol = _started()
    pcm = ulaw_decode(b"\x01" * 400)  # PCM whose every sample encodes to 0x01
    protocol.send_audio(pcm)
    assert protocol.data_to_send() == []  # queued: nothing goes out before it is released
    assert protocol.queued_frames == 2
    released = [protocol.release_frame(), protocol.release_frame()]
    assert protocol.release_frame() is None  # the 80-sample remainder waits for more
    out = protocol.data_to_send()
    assert len(out) == 2
    frames = _payloads(out)
    assert frames == [b"\x01" * 160, b"\x01" * 160]
    assert all(r is not None and np.array_equal(r, pcm[:160]) for r in released)
    protocol.send_mark("end")  # pads the 80-sample remainder with silence; the mark waits
    assert protocol.data_to_send() == []
    padded = protocol.release_frame()
    assert padded is not None
    assert np.array_equal(padded, np.concatenate([pcm[:80], np.zeros(80, dtype=np.int16)]))
    out = protocol.data_to_send()
    assert len(out) == 2
    assert base64.b64decode(json.loads(out[0])["media"]["payload"]) == b"\x01" * 80 + b"\xff" * 80
    assert json.loads(out[1]) == {
        "event": "mark",
        "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "mark": {"name": "end"},
    }
    assert protocol.data_to_send() == []


def test_released_frames_are_exact_media_messages() -> None:
    protocol = _started()
    protocol.send_audio(np.zeros(100, dtype=np.int16))
    protocol.send_audio(np.zeros(60, dtype=np.int16))  # completes one frame across two calls
    frame = protocol.release_frame()
    assert frame is not None and frame.shape == (160,) and not frame.any()
    assert protocol.data_to_send() == [SILENT_MEDIA]
    pcm = np.arange(-160, 160, 2, dtype=np.int16)
    protocol.send_audio(pcm)
    assert protocol.data_to_send() == []
    frame = protocol.release_frame()
    assert frame is not None and np.array_equal(frame, pcm)
    assert protocol.data_to_send() == [_media_text(ulaw_encode(pcm))]


def test_releasing_frame_by_frame_sends_each_mark_right_after_its_audio() -> None:
    protocol = _started()
    protocol.send_audio(np.zeros(320, dtype=np.int16))
    protocol.send_mark("seg-1")
    protocol.send_audio(np.zeros(100, dtype=np.int16))
    protocol.send_mark("seg-2")  # pads 100 samples to a frame
    protocol.send_mark("seg-3")  # right behind seg-2: no audio between them
    assert protocol.queued_frames == 3 and protocol.data_to_send() == []
    assert protocol.pending_marks == []  # queued marks are not on the wire yet
    assert protocol.release_frame() is not None
    assert protocol.data_to_send() == [SILENT_MEDIA]
    assert protocol.release_frame() is not None
    assert protocol.data_to_send() == [SILENT_MEDIA, _mark_text("seg-1")]
    assert protocol.pending_marks == ["seg-1"]
    assert protocol.release_frame() is not None
    assert protocol.data_to_send() == [SILENT_MEDIA, _mark_text("seg-2"), _mark_text("seg-3")]
    assert protocol.release_frame() is None and protocol.data_to_send() == []
    assert protocol.pending_marks == ["seg-1", "seg-2", "seg-3"]
    protocol.receive_text(MARK.replace("my label", "seg-2"))
    assert protocol.events() == [MarkPlayed("seg-2")]
    assert protocol.pending_marks == ["seg-1", "seg-3"]


def test_a_mark_with_nothing_queued_goes_out_at_once() -> None:
    protocol = _started()
    protocol.send_mark("now")
    assert protocol.data_to_send() == [_mark_text("now")]
    assert protocol.pending_marks == ["now"]
    protocol.send_audio(np.zeros(160, dtype=np.int16))
    assert protocol.release_frame() is not None
    protocol.send_mark("after-played")  # its audio has all been released already
    assert protocol.data_to_send() == [SILENT_MEDIA, _mark_text("after-played")]


def test_clear_drops_the_unsent_remainder() -> None:
    protocol = _started()
    protocol.send_audio(np.full(100, 1000, dtype=np.int16))
    protocol.send_clear()
    protocol.send_mark("m")  # no remainder left to pad: the mark goes out at once
    assert protocol.data_to_send() == [
        '{"event":"clear","streamSid":"MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}',
        _mark_text("m"),
    ]


def test_clear_drops_queued_audio_and_marks() -> None:
    protocol = _started()
    protocol.send_audio(np.zeros(160, dtype=np.int16))
    protocol.send_mark("sent")
    protocol.send_audio(np.zeros(480, dtype=np.int16))
    protocol.send_mark("dropped")
    protocol.send_audio(np.zeros(50, dtype=np.int16))
    assert protocol.release_frame() is not None
    protocol.send_clear()
    assert protocol.queued_frames == 0
    assert protocol.release_frame() is None
    assert protocol.data_to_send() == [
        SILENT_MEDIA,
        _mark_text("sent"),
        '{"event":"clear","streamSid":"' + SID + '"}',
    ]
    # The mark on the wire stays pending until Twilio echoes it; the queued one never left.
    assert protocol.pending_marks == ["sent"]
    protocol.receive_text(MARK.replace("my label", "sent"))
    assert protocol.pending_marks == []
    # What is sent after the clear starts afresh.
    protocol.send_audio(np.zeros(160, dtype=np.int16))
    protocol.send_mark("next")
    assert protocol.release_frame() is not None
    assert protocol.data_to_send() == [SILENT_MEDIA, _mark_text("next")]


def test_sending_after_stop_is_dropped() -> None:
    protocol = _started()
    protocol.send_audio(np.zeros(400, dtype=np.int16))
    protocol.send_mark("never")
    protocol.receive_text(STOP)
    assert protocol.state is StreamState.STOPPED
    assert protocol.queued_frames == 0 and protocol.release_frame() is None
    protocol.send_audio(np.zeros(160, dtype=np.int16))
    protocol.send_mark("late")
    protocol.send_clear()
    assert protocol.queued_frames == 0 and protocol.release_frame() is None
    assert protocol.data_to_send() == []
    assert protocol.pending_marks == []


def test_fuzzed_output_frames_every_sample_and_keeps_marks_in_place() -> None:
    """Random pushes, marks and releases: the frames released are the PCM sent, padded with
    zeros at each mark, and each mark follows the frame that ends its audio."""
    rng = random.Random(99)
    for _ in range(200):
        protocol = _started()
        expected_pcm: list[int] = []  # the whole outgoing stream, padding included
        expected_marks: list[tuple[int, str]] = []  # (frames before the mark, name)
        released: list[np.ndarray] = []
        sent: list[str] = []
        for step in range(rng.randint(1, 40)):
            op = rng.random()
            if op < 0.5:
                chunk = np.array(
                    [rng.randint(-32768, 32767) for _ in range(rng.randint(0, 400))],
                    dtype=np.int16,
                )
                protocol.send_audio(chunk)
                expected_pcm.extend(int(x) for x in chunk)
            elif op < 0.7:
                name = f"m{step}"
                protocol.send_mark(name)
                expected_pcm.extend([0] * (-len(expected_pcm) % 160))
                expected_marks.append((len(expected_pcm) // 160, name))
            else:
                frame = protocol.release_frame()
                if frame is not None:
                    released.append(frame)
            sent.extend(protocol.data_to_send())
        protocol.send_mark("end")
        expected_pcm.extend([0] * (-len(expected_pcm) % 160))
        expected_marks.append((len(expected_pcm) // 160, "end"))
        while (frame := protocol.release_frame()) is not None:
            released.append(frame)
        sent.extend(protocol.data_to_send())

        assert all(frame.shape == (160,) for frame in released)
        stream = np.concatenate(released) if released else np.zeros(0, dtype=np.int16)
        assert stream.tolist() == expected_pcm
        # The wire: each media message is its released frame encoded; marks in their place.
        media_seen = 0
        marks_seen: list[tuple[int, str]] = []
        for text in sent:
            message = json.loads(text)
            if message["event"] == "media":
                payload = base64.b64decode(message["media"]["payload"])
                assert payload == ulaw_encode(released[media_seen])
                media_seen += 1
            else:
                marks_seen.append((media_seen, message["mark"]["name"]))
        assert media_seen == len(released)
        assert marks_seen == expected_marks
        assert protocol.pending_marks == [name for _, name in expected_marks]


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


def test_a_lost_connection_ends_the_stream_like_stop() -> None:
    protocol = _started()
    assert protocol.open
    protocol.send_audio(np.zeros(400, dtype=np.int16))
    protocol.connection_lost()  # the socket went with no `stop`
    assert not protocol.open and protocol.state is StreamState.STOPPED
    assert protocol.queued_frames == 0 and protocol.release_frame() is None
    protocol.send_audio(np.zeros(160, dtype=np.int16))
    protocol.send_mark("late")
    protocol.send_clear()
    assert protocol.data_to_send() == [] and protocol.events() == []
    protocol.receive_text(STOP)  # anything read after that is ignored
    assert protocol.events() == []


def test_sending_before_start_is_an_error() -> None:
    assert MediaStreamProtocol().open  # not over yet: sending now is the driver's mistake
    with pytest.raises(ProtocolError):
        MediaStreamProtocol().send_audio(np.zeros(160, dtype=np.int16))
    with pytest.raises(ProtocolError):
        MediaStreamProtocol().send_clear()
    with pytest.raises(ProtocolError):
        MediaStreamProtocol().send_mark("early")
    assert MediaStreamProtocol().release_frame() is None


def _media(payload: bytes, timestamp_ms: int = 0) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": SID,
            "media": {
                "track": "inbound",
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def test_media_payloads_over_a_few_frames_close_1008() -> None:
    protocol = _started()
    protocol.receive_text(_media(b"\xff" * 5 * 160))  # five frames: still accepted
    assert [type(e) for e in protocol.events()] == [AudioReceived]
    with pytest.raises(ProtocolError) as refused:
        protocol.receive_text(_media(b"\xff" * (5 * 160 + 1)))
    assert refused.value.code == 1008
    assert "frames" in refused.value.reason


def test_unknown_events_are_reported_first_once_per_name_truncated() -> None:
    protocol = _started()
    long_name = "x" * 10_000
    for name in ("a", "b", "a", long_name, long_name):
        protocol.receive_text(json.dumps({"event": name}))
    events = protocol.events()
    assert events == [
        UnknownReceived("a", first=True),
        UnknownReceived("b", first=True),
        UnknownReceived("a", first=False),
        UnknownReceived("x" * 64, first=True),
        UnknownReceived("x" * 64, first=False),
    ]
    # Past 32 names none is new any more: a flood of distinct names logs nothing more.
    for n in range(100):
        protocol.receive_text(json.dumps({"event": f"name-{n}"}))
    firsts = [e for e in protocol.events() if isinstance(e, UnknownReceived) and e.first]
    assert len(firsts) == 32 - 3
