"""Word error rate of the offline recognisers on phone-quality speech.

    python bench/stt_wer.py

Utterances are synthesised with espeak-ng in several voices and speeds, put through the
telephone path (22.05 kHz -> 8 kHz, mu-law encode/decode, -> 16 kHz) and decoded one
utterance at a time. Candidates are recognisers whose model installs from a package
registry: PocketSphinx 5 (PyPI wheel with the en-us model), with its general English
language model and with the gateway's domain bigram model. (Vosk and Whisper models come
from their own download hosts, not from a registry, so they cannot be candidates here.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
from pocketsphinx import Config, Decoder

from audio.codec import ulaw_decode, ulaw_encode
from audio.resample import StreamResampler
from gateway.providers.domain_lm import default_dict_file, default_lm_file

# Held-out phrasings: none of these lines is in the domain corpus verbatim.
UTTERANCES = [
    "What are your opening hours?",
    "I would like to book an appointment.",
    "Yes please.",
    "Thank you, goodbye.",
    "Can I speak to a person",
    "How much does it cost",
    "When do you open on Monday",
    "I need to cancel my appointment",
    "No thanks, that is all",
    "Can you call me back tomorrow",
    "Is there a free slot on Friday afternoon",
    "What is your address",
]
VOICES = [("en-us+f3", 140), ("en-us+f3", 165), ("en-us", 140), ("en-us+m3", 150), ("en", 160)]


def phone_audio(text: str, voice: str, wpm: int) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm), "--", text],
        check=True,
        capture_output=True,
    ).stdout
    pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.int16)
    down = StreamResampler(22050, 8000)
    narrow = ulaw_decode(ulaw_encode(np.concatenate([down.process(pcm), down.flush()])))
    up = StreamResampler(8000, 16000)
    return np.concatenate([up.process(narrow), up.flush()])


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref = re.findall(r"[a-z']+", reference.lower())
    hyp = hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row = row, [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[len(hyp)], len(ref)


def main() -> int:
    candidates = {
        "pocketsphinx en-us, general LM": Decoder(Config(loglevel="FATAL")),
        "pocketsphinx en-us, domain LM": Decoder(
            Config(loglevel="FATAL", lm=str(default_lm_file()), dict=str(default_dict_file()))
        ),
    }
    audio = {(t, v, s): phone_audio(t, v, s) for t in UTTERANCES for v, s in VOICES}
    seconds = sum(len(a) for a in audio.values()) / 16000
    out = sys.stdout.write
    out(
        f"{len(UTTERANCES)} utterances x {len(VOICES)} espeak-ng voices, {seconds:.0f} s of audio\n"
    )
    out(f"{'recogniser':<34} {'WER all':>8} {'WER en-us+f3 140':>17} {'RTF':>6}\n")
    for name, decoder in candidates.items():
        errors = words = best_errors = best_words = 0
        started = time.perf_counter()
        for (text, voice, wpm), pcm in audio.items():
            decoder.start_utt()
            decoder.process_raw(pcm.tobytes(), False, True)
            decoder.end_utt()
            hyp = decoder.hyp()
            e, n = word_errors(text, hyp.hypstr if hyp is not None else "")
            errors, words = errors + e, words + n
            if (voice, wpm) == ("en-us+f3", 140):
                best_errors, best_words = best_errors + e, best_words + n
        rtf = (time.perf_counter() - started) / seconds
        out(f"{name:<34} {errors / words:>8.1%} {best_errors / best_words:>17.1%} {rtf:>6.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
