#!/usr/bin/env bash
# Event stream benchmarks (BENCHMARKS.md): two `copilot-state serve` (release) over one
# PostgreSQL and one Redis on this machine; then
#   1. cross-instance delay over 1,000 events (custom events, then message appends);
#   2. one write fanned out to 1,000 subscribers of one conversation (delivery p50/p99);
#   3. server memory per idle SSE subscriber with 5,000 open on one instance.
# The last line is the judged ratio: cross-instance p99 / 10 ms (goal <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=$(mktemp -d -t copilot-bench-events.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
source scripts/services.sh
trap 'status=$?; stop_all; rm -rf "$WORK_DIR"; exit $status' EXIT INT TERM

EVENTS=${EVENTS:-1000} FANOUT=${FANOUT:-1000} IDLE=${IDLE:-5000}
# Each idle subscriber is a socket on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
install_missing curl:curl redis-server:redis-server
log "build (release)"
cargo build --release -q --bin copilot-state --example events_load
BIN=target/release/copilot-state
LOAD=target/release/examples/events_load

start_postgres
read -r REDIS_PORT REDIS_PID < <(start_redis_server bench)
PIDS+=("$REDIS_PID")
"$PG_BIN/psql" -q -d "$PG_URL" -c 'CREATE DATABASE bench'
DB="${PG_URL%/postgres}/bench"
export COPILOT_JWT_SECRET=bench-secret-of-enough-length-0123456789
"$BIN" migrate --database-url "$DB" >/dev/null

start_instance() {
  start_copilot DATABASE_URL="$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    COPILOT_REQUIRE_MEMBERSHIP=false COPILOT_RATE_LIMIT=off
}
read -r PORT_A PID_A < <(start_instance)
read -r PORT_B PID_B < <(start_instance)
PIDS+=("$PID_A" "$PID_B")
A="http://127.0.0.1:$PORT_A" B="http://127.0.0.1:$PORT_B"
until curl -fsS "$B/readyz" | grep -q '"redis":"ok"'; do sleep 0.1; done
ALICE=$("$BIN" token --tenant demo --user alice --database-url "$DB")
SERVICE=$("$BIN" token --tenant demo --role service --database-url "$DB")
new_conversation() {
  curl -fsS -X POST "$A/v1/tenants/demo/conversations" -H "Authorization: Bearer $ALICE" \
    -H 'Content-Type: application/json' -d '{}' | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4
}
echo "machine: $(nproc) cores; $(date -u +%F)"

log "fan-out: one write to $FANOUT subscribers of one conversation on B, posted on A"
"$LOAD" fanout "$A" "$B" "/v1/tenants/demo/conversations/$(new_conversation)" "$ALICE" "$SERVICE" "$FANOUT" 20 | grep -v '^ratio='

log "memory: $IDLE idle subscribers on B"
"$LOAD" idle "$B" "/v1/tenants/demo/conversations/$(new_conversation)" "$ALICE" "$PID_B" "$IDLE"

log "cross-instance delay: $EVENTS events posted on A, read on B"
"$LOAD" delay "$A" "$B" "/v1/tenants/demo/conversations/$(new_conversation)" "$ALICE" "$SERVICE" "$EVENTS"
