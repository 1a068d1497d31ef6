"""G.711 mu-law, vectorised with lookup tables; bit-exact with the ITU-T G.191 reference."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _decode_table() -> npt.NDArray[np.int16]:
    # ITU-T G.191 `ulaw_expand`, evaluated once for all 256 codes.
    codes = np.arange(256, dtype=np.int32)
    sign = np.where(codes < 0x80, -1, 1)
    mantissa = ~codes & 0xFF
    exponent = (mantissa >> 4) & 0x07
    step = 4 << (exponent + 1)
    mantissa &= 0x0F
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    table: npt.NDArray[np.int16] = (sign * magnitude).astype(np.int16)
    return table


def _encode_table() -> npt.NDArray[np.uint8]:
    # ITU-T G.191 `ulaw_compress`, evaluated once for all 65536 int16 inputs, indexed by
    # the input's unsigned 16-bit pattern. Negative inputs use the one's complement.
    pcm = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    absno = np.where(pcm < 0, (~pcm) >> 2, pcm >> 2) + 33
    absno = np.minimum(absno, 0x1FFF)
    segno = np.ones_like(absno)
    rest = absno >> 6
    while np.any(rest):
        segno += rest != 0
        rest >>= 1
    high = 0x08 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    code = np.where(pcm >= 0, code | 0x80, code)
    table: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return table


ULAW_DECODE: npt.NDArray[np.int16] = _decode_table()
ULAW_ENCODE: npt.NDArray[np.uint8] = _encode_table()


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """Mu-law bytes to int16 PCM."""
    pcm: npt.NDArray[np.int16] = ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
    return pcm


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Int16 PCM to mu-law bytes."""
    samples = np.ascontiguousarray(pcm, dtype=np.int16)
    codes: npt.NDArray[np.uint8] = ULAW_ENCODE[samples.view(np.uint16)]
    return codes.tobytes()


# The code of a zero sample: what padding, and a silent line, is made of.
ULAW_SILENCE: bytes = ulaw_encode(np.zeros(1, dtype=np.int16))
