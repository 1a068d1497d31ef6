#!/usr/bin/env bash
# Builds FerretDB (MongoDB wire protocol on SQLite) from the Go module proxy into a per-user
# cache, once per version, and prints the binary's path. Build logs go to stderr.
set -euo pipefail

VERSION="v1.24.2"   # keep in step with tools/ferretdb/go.mod
# Bumped whenever tools/ferretdb/main.go changes, so that an older build is not reused
# (keep in step with FERRETDB_BUILD in storage/embedded.py). r2: -listen-unix, private files.
BUILD="r2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
OUT="$CACHE/ferretdb-$VERSION-$BUILD/ferretdb"

if [ ! -x "$OUT" ]; then
  command -v go >/dev/null || { echo "ensure-ferretdb: Go is required (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$(dirname "$OUT")"
  echo "ensure-ferretdb: building FerretDB $VERSION into $OUT (first time only)" >&2
  tmp="$(mktemp "$OUT.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  (cd "$ROOT/tools/ferretdb" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -buildvcs=false -o "$tmp" .) >&2
  chmod +x "$tmp"
  mv "$tmp" "$OUT"
  trap - EXIT
fi
echo "$OUT"
