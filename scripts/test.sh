#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, as CI does (.ci/run calls exactly this).
#
# It installs what is missing, starts every service the tests need on private ports in a
# temporary directory, runs every test once (one build shared by all test binaries), and stops
# what it started, by PID, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

WORK_DIR=$(mktemp -d -t copilot-state-test.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK_DIR"
  exit "$status"
}
trap cleanup EXIT INT TERM

# --- toolchain -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if cargo nextest --version >/dev/null 2>&1; then
  RUNNER=(cargo nextest run --workspace --no-fail-fast)
else
  RUNNER=(cargo test --workspace --no-fail-fast)
fi

# --- tests -----------------------------------------------------------------------------------
log "build"
cargo build --workspace --all-targets

log "tests: ${RUNNER[*]}"
"${RUNNER[@]}"
