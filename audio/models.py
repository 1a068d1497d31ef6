"""Where the turn-taking models live and how a copy is trusted: file names, pinned sha256
hashes and `ModelMissing`, the error that says how to install them.

The weights are not in this repository: `scripts/ensure-models.sh` extracts them at install
time from the PyPI wheel of pipecat-ai (BSD-2; Silero VAD is MIT) into the per-user cache.
Keep the constants here in step with that script's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# The pipecat-ai release whose wheel carries both files; names the cache directory.
MODELS_VERSION = "1.14.0"
SILERO_FILE = "silero_vad.onnx"
SILERO_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"

INSTALL_HINT = "install them with `bash scripts/ensure-models.sh` (scripts/dev.sh runs it)"


class ModelMissing(Exception):
    """A turn-taking model file that is absent or fails its hash check."""


def models_dir(cache_dir: Path) -> Path:
    """The directory under the per-user cache where the script installs this version."""
    return cache_dir / f"models-{MODELS_VERSION}"


@dataclass(frozen=True, slots=True)
class TurnModelPaths:
    """The two verified model files."""

    silero: Path
    smart_turn: Path


def check_model(path: Path, sha256: str) -> None:
    """Raise `ModelMissing` unless `path` exists and its content has the pinned hash."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelMissing(f"turn model {path} cannot be read ({exc}); {INSTALL_HINT}") from exc
    if digest != sha256:
        raise ModelMissing(
            f"turn model {path} failed its hash check (sha256 {digest}, expected {sha256}); "
            f"reinstall with `bash scripts/ensure-models.sh`"
        )


def locate_models(directory: Path) -> TurnModelPaths:
    """The model files in `directory`, each checked against its hash."""
    paths = TurnModelPaths(silero=directory / SILERO_FILE, smart_turn=directory / SMART_TURN_FILE)
    check_model(paths.silero, SILERO_SHA256)
    check_model(paths.smart_turn, SMART_TURN_SHA256)
    return paths
