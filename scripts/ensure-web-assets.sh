#!/usr/bin/env bash
# Installs the third-party browser code the gateway serves under /static/vendor/ (the LiveKit
# browser SDK, Swagger UI) from the npm registry into a per-user cache, once per set of pins,
# and prints its directory. Nothing is committed and no page loads a CDN at run time.
# The exact versions are in scripts/web-assets.json (keep in step with gateway/web_assets.py's
# allow-list); `${CACHE}/web-assets` is a symlink to the installed set, which is where the
# gateway looks by default (WEB_ASSETS_DIR). npm logs go to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
PINS="$ROOT/scripts/web-assets.json"
KEY="$(sha256sum "$PINS" | cut -c1-12)"
OUT="$CACHE/web-assets-$KEY"
LINK="$CACHE/web-assets"
# The files the gateway serves (gateway/web_assets.py): all present or the set is rebuilt.
FILES=(
  node_modules/livekit-client/dist/livekit-client.umd.js
  node_modules/swagger-ui-dist/swagger-ui-bundle.js
  node_modules/swagger-ui-dist/swagger-ui.css
  node_modules/swagger-ui-dist/favicon-32x32.png
)

complete() {
  [ -f "$1/.complete" ] || return 1
  local f
  for f in "${FILES[@]}"; do [ -s "$1/$f" ] || return 1; done
}

if ! complete "$OUT"; then
  command -v npm >/dev/null || {
    echo "ensure-web-assets: npm is required (Debian: apt-get install npm)" >&2; exit 1; }
  mkdir -p "$CACHE"
  echo "ensure-web-assets: installing $(tr -d '\n ' <"$PINS" | grep -o '"dependencies":{[^}]*}') into $OUT" >&2
  tmp="$(mktemp -d "$OUT.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  cp "$PINS" "$tmp/package.json"
  # --ignore-scripts: nothing from the registry runs here; the files are only served.
  npm install --no-audit --no-fund --ignore-scripts --no-save --loglevel=error --prefix "$tmp" >&2
  touch "$tmp/.complete"
  complete "$tmp" || { echo "ensure-web-assets: the installed packages lack a served file" >&2; exit 1; }
  rm -rf "$OUT"
  mv "$tmp" "$OUT"
  trap - EXIT
fi
# Point the stable name at this set (replaced in one rename, so a running gateway never
# sees it missing).
if [ "$(readlink "$LINK" 2>/dev/null)" != "$OUT" ]; then
  ln -sfn "$OUT" "$LINK.tmp.$$"
  mv -T "$LINK.tmp.$$" "$LINK"
fi
echo "$OUT"
