#!/usr/bin/env bash
# What the rate limiter costs (BENCHMARKS.md): cached effective-config reads in fleet mode
# (PostgreSQL + Redis, release build), `wrk -t2 -c64`, against an instance with the limiter off
# and one with it on (a limit no run reaches, so every request takes the limiter's full path:
# leases from the shared Redis GCRA), alternating runs in the same session.
# The last line is the judged ratio: throughput on / off (goal >= 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=$(mktemp -d -t copilot-bench-rl.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
source scripts/services.sh
trap 'status=$?; stop_all; rm -rf "$WORK_DIR"; exit $status' EXIT INT TERM

ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s}
install_missing curl:curl redis-server:redis-server wrk:wrk
log "build (release)"
cargo build --release -q --bin copilot-state
BIN=target/release/copilot-state

start_postgres
read -r REDIS_PORT REDIS_PID < <(start_redis_server bench)
PIDS+=("$REDIS_PID")
"$PG_BIN/psql" -q -d "$PG_URL" -c 'CREATE DATABASE bench'
DB="${PG_URL%/postgres}/bench"
export COPILOT_JWT_SECRET=bench-secret-of-enough-length-0123456789
"$BIN" migrate --database-url "$DB" >/dev/null

# $1: COPILOT_RATE_LIMIT. Prints "<port> <pid>".
start_instance() {
  start_copilot DATABASE_URL="$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    COPILOT_REQUIRE_MEMBERSHIP=false COPILOT_RATE_LIMIT="$1"
}
read -r PORT_OFF PID_OFF < <(start_instance off)
read -r PORT_ON PID_ON < <(start_instance 1000000000/min)
PIDS+=("$PID_OFF" "$PID_ON")
ALICE=$("$BIN" token --tenant demo --user alice --database-url "$DB")
SERVICE=$("$BIN" token --tenant demo --role service --database-url "$DB")
curl -fsS -X PUT "http://127.0.0.1:$PORT_OFF/v1/config/global" -H "Authorization: Bearer $SERVICE" \
  -H 'Content-Type: application/json' -d '{"mergeMaxMessages": 80}' >/dev/null
curl -fsS -X PUT "http://127.0.0.1:$PORT_OFF/v1/tenants/demo/config" -H "Authorization: Bearer $SERVICE" \
  -H 'Content-Type: application/json' -d '{"pathMaxMessages": 300}' >/dev/null
PATH_UNDER_TEST=/v1/tenants/demo/config/effective
for port in "$PORT_OFF" "$PORT_ON"; do
  until curl -fsS "http://127.0.0.1:$port/readyz" | grep -q '"redis":"ok"'; do sleep 0.1; done
  curl -fsS -D - -o /dev/null "http://127.0.0.1:$port$PATH_UNDER_TEST" -H "Authorization: Bearer $ALICE" \
    | grep -i '^ratelimit-limit' || echo "(port $port: no RateLimit headers: limiter off)"
done

run_wrk() {
  wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $ALICE" "http://127.0.0.1:$1$PATH_UNDER_TEST" \
    | awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "non2xx " $NF > "/dev/stderr"}'
}
echo "machine: $(nproc) cores; $(date -u +%F); wrk -t2 -c64 -d$DURATION, GET $PATH_UNDER_TEST"
OFF_TOTAL=0 ON_TOTAL=0
for round in $(seq "$ROUNDS"); do
  off=$(run_wrk "$PORT_OFF")
  on=$(run_wrk "$PORT_ON")
  echo "round $round: limiter off ${off} req/s, limiter on ${on} req/s"
  OFF_TOTAL=$(python3 -c "print($OFF_TOTAL + $off)")
  ON_TOTAL=$(python3 -c "print($ON_TOTAL + $on)")
done
python3 -c "print('ratio=%.3f' % ($ON_TOTAL / $OFF_TOTAL))"
