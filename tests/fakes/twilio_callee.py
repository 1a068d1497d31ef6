"""The scripted callee of the Twilio REST fake: what answers a number the fake was told about
(`POST /control/numbers`), played the way Twilio would report and stream it.

After `create_call` to such a number the callee, by itself: `initiated`, `ringing`, then
either a final `busy` / `no-answer` / `failed` callback, or `in-progress` and a Media
Streams leg to the gateway (the call's inline TwiML names its `<Stream url>` and
`<Parameter>`s), spoken by `gateway.demo.simulated_twilio.SimulatedTwilioCall` exactly as
Twilio speaks it (connected, start with customParameters and the CallSid, 20 ms mu-law
media in real time, marks echoed, stop). A person says "Hello?" (then `replies`, one each
time the agent has spoken and gone quiet); a machine plays a greeting of several seconds,
then a beep. With answering-machine detection asked for (`MachineDetection`, `AsyncAmd`,
`AsyncAmdStatusCallback`), the verdict is POSTed signed when Twilio would post it:
`human` once the person's first words are followed by MachineDetectionSpeechEndThreshold of
silence; `machine_start` after MachineDetectionSpeechThreshold of greeting (`Enable`);
`machine_end_beep` just after the beep, or `machine_end_silence` after a greeting with no
beep (`DetectMessageEnd`). The call ends `completed` when the gateway closes the stream, a
REST update sets `Status=completed`, or the callee hangs up after `talk_s`.

Its record (`GET /control/calls/{sid}`) says what the callee said and heard, in ms from
the moment it answered: its speech spans, the AMD verdict it sent, the spans of agent audio
it played out, and how the call ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from twilio.request_validator import RequestValidator

from audio.codec import ULAW_SILENCE, ulaw_decode, ulaw_encode
from audio.resample import StreamResampler
from gateway.demo.simulated_twilio import (
    FRAME_BYTES,
    FRAME_S,
    RATE,
    SimulatedTwilioCall,
    espeak_mulaw,
)

Answer = Literal["human", "busy", "no-answer", "failed", "machine"]
_ANSWERS = ("human", "busy", "no-answer", "failed", "machine")
DEFAULT_GREETING = (
    "Hi, you've reached Sam. I can't take your call right now. "
    "Please leave a message after the tone."
)
_LOUD = 500  # an agent frame louder than this (peak, 16-bit) is agent audio


@dataclass(frozen=True, slots=True)
class CalleeScript:
    """How one number answers (the options of `POST /control/numbers`)."""

    answer: Answer
    ring_s: float = 0.3  # from `ringing` to the answer (or to the final status)
    pickup_s: float = 0.3  # silence after answering before the callee speaks
    talk_s: float = 30.0  # the callee hangs up this long after answering, at the latest
    say: str = "Hello?"  # a person's first words
    replies: tuple[str, ...] = ()  # a person's next lines, one after each agent turn
    greeting: str = DEFAULT_GREETING  # a machine's
    wav: str | None = None  # a WAV file spoken instead of `say` / `greeting`
    beep_hz: float = 1000.0
    beep_ms: int = 500  # 0: a machine without a beep
    # Twilio's AMD tuning defaults (MachineDetectionSpeechEndThreshold, ...SpeechThreshold).
    amd_speech_end_ms: int = 1200
    amd_speech_ms: int = 2400
    amd_beep_ms: int = 150  # the beep heard, then reported
    amd_silence_ms: int = 1500  # a greeting with no beep: its end after this much silence
    # Open the stream at this gateway instead of the TwiML's host (as a balancer would
    # route it); the URL signed is still the TwiML's.
    stream_via: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> CalleeScript:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown callee options: {sorted(unknown)}")
        if raw.get("answer") not in _ANSWERS:
            raise ValueError(f"answer must be one of {_ANSWERS}")
        values = dict(raw)
        if "replies" in values:
            values["replies"] = tuple(values["replies"])
        return cls(**values)


@dataclass(slots=True)
class CalleeRecord:
    """What the callee did and heard; times in ms from its answer."""

    sid: str
    to: str
    answer: str
    machine_detection: str | None
    statuses: list[dict[str, Any]] = field(default_factory=list)
    speech: list[dict[str, Any]] = field(default_factory=list)  # {what, text, start_ms, end_ms}
    # {answered_by, sent_ms, at_ms (answered), duration_ms, callback_status}
    amd: dict[str, Any] | None = None
    agent_audio: list[list[float]] = field(default_factory=list)  # [start_ms, end_ms]
    ended_ms: float | None = None
    ended_by: str | None = None  # gateway | rest | callee
    close_code: int | None = None
    done: bool = False
    error: str | None = None


SendStatus = Callable[[str, str], Awaitable[int | None]]


class ScriptedCallee:
    """One call to a scripted number, from `initiated` to its final status."""

    def __init__(
        self,
        *,
        sid: str,
        account_sid: str,
        form: dict[str, str],
        script: CalleeScript,
        auth_token: str,
        send_status: SendStatus,
    ) -> None:
        self.script = script
        self._sid = sid
        self._account_sid = account_sid
        self._form = form
        self._auth_token = auth_token
        self._send_status = send_status
        amd = form.get("MachineDetection")
        self.record = CalleeRecord(
            sid=sid, to=form.get("To", ""), answer=script.answer, machine_detection=amd
        )
        self.hangup = asyncio.Event()  # a REST update ended the call
        self._call: SimulatedTwilioCall | None = None
        self._answered_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        """The record now (the agent audio played so far included)."""
        if self._call is not None and self._answered_at is not None:
            self.record.agent_audio = self._agent_spans()
        return asdict(self.record)

    def _ms(self, at: float) -> float:
        assert self._answered_at is not None
        return round((at - self._answered_at) * 1000.0, 1)

    async def _status(self, status: str) -> None:
        code = await self._send_status(self._sid, status)
        at = self._ms(time.monotonic()) if self._answered_at is not None else None
        self.record.statuses.append({"status": status, "at_ms": at, "callback_status": code})

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # the fake's task ends here: the record says why
            self.record.error = repr(exc)
            raise
        finally:
            if self._call is not None:
                await self._call.aclose()
            self.record.done = True

    async def _run(self) -> None:
        script = self.script
        await asyncio.sleep(0.05)
        await self._status("initiated")
        await asyncio.sleep(0.05)
        await self._status("ringing")
        await self._wait(script.ring_s)
        if script.answer in ("busy", "no-answer", "failed"):
            await self._status(script.answer)
            return
        stream_url, params = _stream_of(self._form.get("Twiml", ""))
        await self._status("in-progress")
        origin = _http_origin(stream_url)
        call = SimulatedTwilioCall(
            base_url=script.stream_via or origin,
            public_url=origin,
            auth_token=self._auth_token,
            from_number=self._form.get("From", ""),
            to_number=self._form.get("To", ""),
            record_audio=True,
        )
        call.call_sid, call.account_sid = self._sid, self._account_sid
        self._call = call
        await call.connect(stream_url, params)
        self._answered_at = time.monotonic()  # the callee's clock starts with its stream
        talk = asyncio.create_task(self._talk(call))
        try:
            await self._until_end(call)
        finally:
            talk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talk
        self.record.agent_audio = self._agent_spans()
        await self._status("completed")

    async def _until_end(self, call: SimulatedTwilioCall) -> None:
        """Wait for the gateway to close the stream, a REST hang-up, or `talk_s`."""
        assert self._answered_at is not None
        deadline = self._answered_at + self.script.talk_s
        while call.log.closed_at is None and not self.hangup.is_set():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        now = time.monotonic()
        if call.log.closed_at is not None:
            self.record.ended_by = "gateway"
            now = call.log.closed_at
        else:
            self.record.ended_by = "rest" if self.hangup.is_set() else "callee"
            with contextlib.suppress(TimeoutError, OSError):
                await call.stop()  # Twilio's `stop`; the gateway closes the socket
        self.record.ended_ms = self._ms(now)
        self.record.close_code = call.log.close_code

    async def _talk(self, call: SimulatedTwilioCall) -> None:
        script = self.script
        await self._wait(script.pickup_s)
        if script.answer == "human":
            words = await self._speech(script.say)
            start, end = self._say(call, "words", script.say, words)
            await self._amd_at(end + script.amd_speech_end_ms / 1000.0, "human")
            for line in script.replies:
                try:
                    await call.wait_agent_audio(within_s=60)
                    await call.wait_agent_silent(within_s=120)
                except TimeoutError:
                    return  # the agent said nothing more, or the call ended
                self._say(call, "words", line, await self._speech(line))
            return
        greeting = await self._speech(script.greeting)
        start, end = self._say(call, "greeting", script.greeting, greeting)
        if script.beep_ms > 0:
            _, beep_end = self._say(call, "beep", f"{script.beep_hz:g} Hz", _beep(script))
        mode = self.record.machine_detection
        if mode == "Enable":
            speech_s = min(script.amd_speech_ms / 1000.0, end - start)
            await self._amd_at(start + speech_s, "machine_start")
        elif mode == "DetectMessageEnd":
            if script.beep_ms > 0:
                await self._amd_at(beep_end + script.amd_beep_ms / 1000.0, "machine_end_beep")
            else:
                at = end + script.amd_silence_ms / 1000.0
                await self._amd_at(at, "machine_end_silence")

    async def _speech(self, text: str) -> bytes:
        if self.script.wav is not None:
            return await asyncio.to_thread(_wav_mulaw, self.script.wav)
        return await asyncio.to_thread(espeak_mulaw, text)

    def _say(
        self, call: SimulatedTwilioCall, what: str, text: str, mulaw: bytes
    ) -> tuple[float, float]:
        """Queue `mulaw` on the microphone; when it will start and end (monotonic)."""
        start = time.monotonic() + call.mic_backlog_s  # queued speech plays first
        end = start + len(mulaw) / RATE
        call.say(mulaw)
        span = {"what": what, "text": text, "start_ms": self._ms(start), "end_ms": self._ms(end)}
        self.record.speech.append(span)
        return start, end

    async def _amd_at(self, at: float, answered_by: str) -> None:
        """POST the AMD verdict at `at` (monotonic), signed as Twilio signs it."""
        url = self._form.get("AsyncAmdStatusCallback")
        if not url or not self._form.get("MachineDetection"):
            return
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        call = self._call
        if self.hangup.is_set() or (call is not None and call.log.closed_at is not None):
            return  # the call ended before the detection did
        sent_ms = self._ms(time.monotonic())
        duration_ms = round(sent_ms)
        form = {
            "AccountSid": self._account_sid,
            "CallSid": self._sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(duration_ms),
        }
        signature = RequestValidator(self._auth_token).compute_signature(url, form)
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
        self.record.amd = {
            "answered_by": answered_by,
            "sent_ms": sent_ms,
            "at_ms": self._ms(time.monotonic()),  # its answer came back
            "duration_ms": duration_ms,
            "callback_status": response.status_code,
        }

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the call is hung up through REST meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hangup.wait(), seconds)

    def _agent_spans(self) -> list[list[float]]:
        """The spans (ms) in which the callee played audible agent audio."""
        assert self._call is not None
        spans: list[list[float]] = []
        for at, frame in list(self._call.log.played):
            if int(np.abs(ulaw_decode(frame).astype(np.int32)).max(initial=0)) < _LOUD:
                continue
            start, end = self._ms(at), self._ms(at + FRAME_S)
            if spans and start - spans[-1][1] <= 100.0:
                spans[-1][1] = end
            else:
                spans.append([start, end])
        return spans


def _stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The `<Connect><Stream>` URL and parameters of a call's inline TwiML."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None:
        raise ValueError(f"no <Connect><Stream> in the call's TwiML: {twiml}")
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


def _http_origin(stream_url: str) -> str:
    parts = urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def _beep(script: CalleeScript) -> bytes:
    samples = int(RATE * script.beep_ms / 1000)
    t = np.arange(samples) / RATE
    pcm = (0.5 * 32767 * np.sin(2 * np.pi * script.beep_hz * t)).astype(np.int16)
    data = ulaw_encode(pcm)
    return data + ULAW_SILENCE * (-len(data) % FRAME_BYTES)


def _wav_mulaw(path: str) -> bytes:
    """A mono 16-bit WAV file as 8 kHz mu-law, whole 20 ms frames."""
    with open(path, "rb") as file, wave.open(io.BytesIO(file.read())) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        if reader.getnchannels() == 2:
            pcm = pcm[::2]
    resampler = StreamResampler(rate, RATE)
    out = np.concatenate([resampler.process(pcm.astype(np.int16)), resampler.flush()])
    data = ulaw_encode(out.astype(np.int16))
    return data + ULAW_SILENCE * (-len(data) % FRAME_BYTES)
