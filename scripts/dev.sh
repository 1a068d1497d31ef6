#!/usr/bin/env bash
# One entry point for people and CI: installs what is missing, then runs a command.
#   scripts/dev.sh demo     install everything, start the gateway, place a simulated call
#   scripts/dev.sh test     install everything, lint, run the whole test suite
#   scripts/dev.sh serve    install everything, run the gateway
#   scripts/dev.sh bench    install everything, run the benchmarks
# Built tools live in a per-user cache outside the clone, keyed by version:
#   ${VOICE_GATEWAY_CACHE:-~/.cache/voice-gateway}/{venv-<hash>,ferretdb-<v>,livekit-server-<v>,models-<v>,
#   web-assets-<hash>}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VOICE_GATEWAY_CACHE:-$HOME/.cache/voice-gateway}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

log() { echo "[dev.sh] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

ensure_debian_packages() {
  local missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v go >/dev/null || missing+=(golang-go)
  command -v redis-server >/dev/null || missing+=(redis-server)  # livekit-server's SIP APIs
  command -v npm >/dev/null || missing+=(npm)  # the browser packages (ensure-web-assets.sh)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2
  fi
}

ensure_venv() {
  local key
  key="$( (cat "$ROOT/pyproject.toml"; "$PYTHON" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
  VENV="$CACHE/venv-$key"
  if [ ! -x "$VENV/bin/voice-gateway" ] || [ ! -f "$VENV/.complete" ]; then
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip "setuptools>=77" wheel >&2
    "$VENV/bin/pip" install -q -e "$ROOT[test]" >&2
    touch "$VENV/.complete"
  fi
  # The venv is shared by clones: point its editable install at this one (no downloads).
  if ! "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null 2>&1; then
    "$VENV/bin/pip" install --no-deps --no-build-isolation -e "$ROOT" >&2
  fi
}

ensure_ferretdb() {
  FERRETDB_BIN="$(bash "$ROOT/scripts/ensure-ferretdb.sh")"
  export FERRETDB_BIN
}

ensure_models() {
  TURN_MODELS_DIR="$(VENV="$VENV" bash "$ROOT/scripts/ensure-models.sh")"
  export TURN_MODELS_DIR
}

ensure_web_assets() {
  WEB_ASSETS_DIR="$(bash "$ROOT/scripts/ensure-web-assets.sh")"
  export WEB_ASSETS_DIR
}

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
ensure_browser() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian packages: chromium chromium-driver"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium chromium-driver >&2
  fi
}

# The balancer tests and bench put Debian's HAProxy in front of two gateways.
ensure_haproxy() {
  if [ ! -x /usr/sbin/haproxy ]; then
    log "installing Debian package: haproxy"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq haproxy >&2
  fi
}

ensure_livekit_server() {
  LIVEKIT_SERVER_BIN="$(bash "$ROOT/scripts/ensure-livekit-server.sh")"
  export LIVEKIT_SERVER_BIN
}

ensure_all() {
  ensure_debian_packages
  ensure_venv
  ensure_ferretdb
  ensure_models
  ensure_web_assets
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    ensure_all
    cd "$ROOT" && exec "$VENV/bin/voice-gateway" demo "$@" ;;
  serve)
    ensure_all
    cd "$ROOT" && exec "$VENV/bin/voice-gateway" serve "$@" ;;
  test)
    ensure_all
    ensure_livekit_server
    ensure_browser
    ensure_haproxy
    cd "$ROOT"
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    # Two test processes (TEST_WORKERS), each test file whole in one of them (its servers
    # and module fixtures with it): most of a test's time is real-time audio and waiting on
    # servers, so two halve the run without loading the cores much. The slowest tests are
    # listed after the run, to keep CI within its time.
    exec "$VENV/bin/pytest" -q -n "${TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@" ;;
  bench)
    ensure_all
    ensure_livekit_server  # the room and web-call benches
    ensure_browser         # the dashboard bench
    ensure_haproxy         # the balancer bench
    if ! command -v opusenc >/dev/null; then  # the recording bench compares Ogg/Opus
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq opus-tools >&2
    fi
    cd "$ROOT"
    for b in bench/audio_bench.py bench/vad_bench.py bench/stt_wer.py bench/provider_latency_bench.py bench/load_bench.py \
             bench/api_bench.py bench/recording_bench.py bench/webhook_bench.py \
             bench/dashboard_bench.py bench/web_call_bench.py; do
      log "running $b"; "$VENV/bin/python" "$b"
    done ;;
  *)
    echo "usage: scripts/dev.sh demo|serve|test|bench" >&2; exit 2 ;;
esac
