#!/usr/bin/env bash
# Builds FerretDB (MongoDB wire protocol on SQLite) from the Go module proxy into a per-user
# cache, once per version, and prints the binary's path. Build logs go to stderr.
set -euo pipefail

VERSION="v1.24.2"   # keep in step with tools/ferretdb/go.mod
# Bumped whenever tools/ferretdb/main.go changes, so that an older build is not reused
# (keep in step with FERRETDB_BUILD in storage/embedded.py). r2: -listen-unix, private files.
# r3: `_id` lookups use the `_id` index (the patch below).
BUILD="r3"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
OUT="$CACHE/ferretdb-$VERSION-$BUILD/ferretdb"

if [ ! -x "$OUT" ]; then
  command -v go >/dev/null || { echo "ensure-ferretdb: Go is required (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$(dirname "$OUT")"
  echo "ensure-ferretdb: building FerretDB $VERSION into $OUT (first time only)" >&2
  tmp="$(mktemp "$OUT.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  work="$(mktemp -d "$CACHE/ferretdb-build.XXXXXX")"
  trap 'rm -f "$tmp"; chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  # FerretDB's SQLite backend creates the `_id` index on `_ferretdb_sjson->"_id"` but looks
  # documents up by `_ferretdb_sjson->'$._id'`: the same value, yet SQLite only uses an
  # index whose expression is written as in the query, so every lookup by `_id` read the
  # whole table. The patch writes the lookup as the index is written (same results, the
  # index used; `EXPLAIN QUERY PLAN` says SEARCH instead of SCAN).
  src="$(cd "$ROOT/tools/ferretdb" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$src" ] || { echo "ensure-ferretdb: FerretDB $VERSION source not found" >&2; exit 1; }
  cp -R "$src" "$work/FerretDB"
  cp "$ROOT/tools/ferretdb/go.mod" "$ROOT/tools/ferretdb/go.sum" "$ROOT/tools/ferretdb/main.go" "$work/"
  chmod -R u+w "$work"
  meta="$work/FerretDB/internal/backends/sqlite/metadata/metadata.go"
  grep -q "IDColumn = DefaultColumn + \"->'\$._id'\"" "$meta" \
    || { echo "ensure-ferretdb: FerretDB $VERSION is not the source the patch expects" >&2; exit 1; }
  sed -i 's|^\(\s*IDColumn = DefaultColumn + \).*$|\1"->\\"_id\\""|' "$meta"
  (cd "$work" && go mod edit -replace "github.com/FerretDB/FerretDB=./FerretDB" \
     && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -buildvcs=false -o "$tmp" .) >&2
  chmod +x "$tmp"
  mv "$tmp" "$OUT"
  chmod -R u+w "$work" && rm -rf "$work"
  trap - EXIT
fi
echo "$OUT"
