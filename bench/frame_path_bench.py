"""The gateway's own work on one inbound 20 ms frame, without sockets: a Media Streams text
message through the protocol, mu-law decoding, turn-taking (energy VAD, STT at 8 kHz as
Deepgram takes it) and the audio's way to the STT (mu-law chunks where the tree has them, of
the bytes as they came where its frames carry them).

    python bench/frame_path_bench.py [ROOT ...]

Each ROOT is a source tree (default: this one), e.g. an export of the commit before a
change; each runs in its own process, the trees in turn, `--rounds` times, and the best
figure per tree is kept (a shared machine only ever adds time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_MEASURE = """
import base64, json, timeit
import numpy as np
from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import AudioFrame
from gateway.call.turn_taking import EndOfTurn, PushAudio, TurnTaking
from telephony.twilio.protocol import MediaStreamProtocol

class STT:
    name = "deepgram"
    continuous = True
    def input_rate(self, rate):
        return rate

protocol = MediaStreamProtocol()
fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
start = {"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "callSid": "CA1",
         "accountSid": "AC1", "tracks": ["inbound"], "customParameters": {}, "mediaFormat": fmt}}
protocol.receive_text(json.dumps(start))
protocol.events()
turns = TurnTaking(STT(), rate=8000, min_speech_ms=120, end_of_turn=EndOfTurn(pause_ms=300),
                   preroll_ms=200, clock=lambda: 0.0, started_at=0.0)
pcm = (np.random.default_rng(0).standard_normal(160) * 100).astype(np.int16)
payload = base64.b64encode(ulaw_encode(pcm)).decode()
text = json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1", "media": {
    "track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload}})
import inspect
from audio.frames import AudioFrame
CARRIES_ULAW = "ulaw" in getattr(AudioFrame, "__dataclass_fields__", {})
try:
    from audio.frames import ChunkGatherer
    if "sample_bytes" in inspect.signature(ChunkGatherer).parameters:
        # a tree whose frames carry their mu-law bytes: gathered as they came
        gatherer = ChunkGatherer(8000, chunk_ms=80, sample_bytes=1)
        def to_stt(frame):
            gatherer.add(frame.ulaw if frame.ulaw is not None else ulaw_encode(frame.pcm))
    else:  # a tree that gathers PCM and encodes each chunk
        gatherer = ChunkGatherer(8000, chunk_ms=80)
        def to_stt(frame):
            chunk = gatherer.add(frame.pcm)
            if chunk is not None:
                ulaw_encode(chunk)
except ImportError:  # a tree from before chunking: every frame encoded
    def to_stt(frame):
        ulaw_encode(frame.pcm)

def one_frame():
    protocol.receive_text(text)
    for event in protocol.events():
        pcm = ulaw_decode(event.payload)
        frame = AudioFrame(pcm, 8000, event.payload) if CARRIES_ULAW else AudioFrame(pcm, 8000)
        for step in turns.feed(frame):
            if isinstance(step, PushAudio):
                to_stt(step.frame)

n = 20000
print(min(timeit.repeat(one_frame, number=n, repeat=5)) / n * 1e6)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    best: dict[Path, float] = {}
    for _ in range(args.rounds):
        for root in args.roots:
            out = subprocess.run(
                [sys.executable, "-c", _MEASURE], cwd=root, capture_output=True, text=True,
                check=True, env={"PYTHONPATH": str(root)},
            )  # fmt: skip
            us = float(out.stdout.strip())
            best[root] = min(us, best.get(root, us))
    for root, us in best.items():
        sys.stdout.write(f"{us:7.2f} us per inbound frame (best of {args.rounds})  {root}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
