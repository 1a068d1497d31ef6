#!/usr/bin/env bash
# Installs the turn-taking models (Silero VAD v5, MIT; Smart Turn v3.2, BSD-2) into a per-user
# cache, once per version, and prints their directory. The files come from the PyPI wheel of
# pipecat-ai, which is downloaded (never installed), unpacked for two files, and deleted.
# Keep the constants in step with audio/models.py.
#   VENV: a virtualenv whose pip downloads the wheel (else python3 -m pip).
set -euo pipefail

VERSION="1.14.0"
SILERO_MEMBER="pipecat/audio/vad/data/silero_vad.onnx"
SILERO_SHA256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
SMART_TURN_MEMBER="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
OUT="$CACHE/models-$VERSION"

if [ -n "${VENV:-}" ]; then PY="$VENV/bin/python"; else PY="${PYTHON:-python3}"; fi

verified() {  # <file> <sha256>
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if ! verified "$OUT/$(basename "$SILERO_MEMBER")" "$SILERO_SHA256" \
   || ! verified "$OUT/$(basename "$SMART_TURN_MEMBER")" "$SMART_TURN_SHA256"; then
  echo "ensure-models: fetching pipecat-ai==$VERSION for its model files into $OUT (first time only)" >&2
  mkdir -p "$OUT"
  tmp="$(mktemp -d "$OUT.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "pipecat-ai==$VERSION" >&2
  # The wheel is a zip; Python's zipfile is always there, unzip may not be.
  "$PY" - "$tmp"/pipecat_ai-"$VERSION"-*.whl "$tmp" "$SILERO_MEMBER" "$SMART_TURN_MEMBER" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheel, out, members = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for member in members:
        with z.open(member) as src, open(out / Path(member).name, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  for pair in "$SILERO_MEMBER:$SILERO_SHA256" "$SMART_TURN_MEMBER:$SMART_TURN_SHA256"; do
    name="$(basename "${pair%%:*}")"
    if ! verified "$tmp/$name" "${pair##*:}"; then
      echo "ensure-models: $name from pipecat-ai==$VERSION failed its sha256 check" >&2
      exit 1
    fi
    mv "$tmp/$name" "$OUT/$name"
  done
  rm -rf "$tmp"
  trap - EXIT
fi
echo "$OUT"
