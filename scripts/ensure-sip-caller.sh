#!/usr/bin/env bash
# Builds tools/sip-caller (the rooms bench's Go SIP callers) into a per-user cache, once per
# change of its source, and prints the binary's path. Build logs go to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tools/sip-caller"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
HASH="$( (cat "$SRC"/*.go "$SRC/go.mod" "$SRC/go.sum"; go version) | sha256sum | cut -c1-12)"
OUT="$CACHE/sip-caller-$HASH/sip-caller"

if [ ! -x "$OUT" ]; then
  command -v go >/dev/null || { echo "ensure-sip-caller: Go is required (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$(dirname "$OUT")"
  echo "ensure-sip-caller: building tools/sip-caller into $OUT (first time only)" >&2
  tmp="$(mktemp "$OUT.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  (cd "$SRC" && CGO_ENABLED=0 go build -trimpath -o "$tmp" . >&2)
  mv "$tmp" "$OUT"
  trap - EXIT
fi
echo "$OUT"
