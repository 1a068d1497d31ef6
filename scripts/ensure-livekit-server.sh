#!/usr/bin/env bash
# Builds livekit-server from the Go module proxy into a per-user cache, once per version,
# and prints the binary's path. Build logs go to stderr.
set -euo pipefail

VERSION="v1.13.5"   # a tag whose go.mod has no replace directive, so `go install` works
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
DIR="$CACHE/livekit-server-$VERSION"
OUT="$DIR/livekit-server"

if [ ! -x "$OUT" ]; then
  command -v go >/dev/null || { echo "ensure-livekit-server: Go is required (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$DIR"
  echo "ensure-livekit-server: building livekit-server $VERSION into $OUT (first time only)" >&2
  tmp="$(mktemp -d "$DIR/build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath "github.com/livekit/livekit-server/cmd/server@$VERSION" >&2
  mv "$tmp/server" "$OUT"
  rm -rf "$tmp"
  trap - EXIT
fi
echo "$OUT"
