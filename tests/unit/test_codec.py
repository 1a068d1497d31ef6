"""G.711 mu-law against a scalar transcription of the ITU-T G.191 reference (g711.c)."""

import numpy as np

from audio.codec import ulaw_decode, ulaw_encode


def _ref_compress(sample: int) -> int:
    # ITU-T G.191 STL g711.c, ulaw_compress(), one sample.
    absno = ((~sample) >> 2) + 33 if sample < 0 else (sample >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x0008 - segno
    low_nibble = 0x000F - ((absno >> segno) & 0x000F)
    code = (high_nibble << 4) | low_nibble
    if sample >= 0:
        code |= 0x0080
    return code


def _ref_expand(code: int) -> int:
    # ITU-T G.191 STL g711.c, ulaw_expand(), one sample.
    sign = -1 if code < 0x0080 else 1
    mantissa = ~code & 0xFF
    exponent = (mantissa >> 4) & 0x0007
    segment = exponent + 1
    mantissa &= 0x000F
    step = 4 << segment
    return sign * ((0x0080 << exponent) + step * mantissa + step // 2 - 4 * 33)


def test_decode_matches_reference_for_all_256_codes() -> None:
    decoded = ulaw_decode(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert [int(v) for v in decoded] == [_ref_expand(c) for c in range(256)]


def test_encode_matches_reference_for_all_65536_inputs() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    encoded = ulaw_encode(pcm)
    assert len(encoded) == 65536
    expected = bytes(_ref_compress(int(s)) for s in pcm)
    assert encoded == expected


def test_known_values() -> None:
    assert ulaw_encode(np.array([0], dtype=np.int16)) == b"\xff"
    assert ulaw_decode(b"\x00\x80\xff\x7f").tolist() == [-32124, 32124, 0, 0]


def test_round_trip_error_is_within_half_a_step() -> None:
    pcm = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    back = ulaw_decode(ulaw_encode(pcm)).astype(np.int32)
    error = np.abs(back - pcm.astype(np.int32))
    # The largest mu-law step is 1024 (plus clipping above 32124).
    assert int(error[np.abs(pcm.astype(np.int32)) < 32000].max()) <= 512
