"""Pure DSP on numpy arrays: G.711 mu-law, streaming resampling, framing, VAD.

No I/O and no asyncio live here; every stateful object is explicit and synchronous.
"""
