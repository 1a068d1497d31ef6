"""The embedded FerretDB for tests, found where the gateway's settings say (FERRETDB_BIN,
VOICE_GATEWAY_CACHE)."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings
from storage import EmbeddedFerretDB, ferretdb_binary


def embedded_ferretdb(data_dir: Path) -> EmbeddedFerretDB:
    """A FerretDB (not started) with its data in `data_dir`."""
    settings = Settings()
    binary = ferretdb_binary(explicit=settings.ferretdb_bin, cache_dir=settings.voice_gateway_cache)
    return EmbeddedFerretDB(binary=binary, data_dir=data_dir)
