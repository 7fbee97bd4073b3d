#!/usr/bin/env bash
# A Redis outage under load (BENCHMARKS.md, issue "Speed"): a fleet of two `copilot-state serve`
# (release) over one PostgreSQL and one Redis; steady `wrk -t1 -c4 --latency` reads of
# `GET /v1/tenants/demo/config/effective` on A while B writes another user's config every 100 ms
# (so both invalidation paths carry traffic). Three phases of $PHASE each: Redis healthy, Redis
# SIGSTOPped (the pause starts with the phase, so the ~1 s before the bus is declared dead is
# included), Redis resumed. Prints median, p99, throughput and failed requests per phase; the last
# line is the judged ratio: paused median / healthy median (goal <= 1.2).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=$(mktemp -d -t copilot-bench-outage.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
source scripts/services.sh
trap 'status=$?; stop_all; rm -rf "$WORK_DIR"; exit $status' EXIT INT TERM

PHASE=${PHASE:-10s}
install_missing curl:curl redis-server:redis-server wrk:wrk
find_postgres
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

start_instance() {
  start_copilot DATABASE_URL="$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    COPILOT_REQUIRE_MEMBERSHIP=false COPILOT_RATE_LIMIT=off
}
read -r PORT_A PID_A < <(start_instance)
read -r PORT_B PID_B < <(start_instance)
PIDS+=("$PID_A" "$PID_B")
ALICE=$("$BIN" token --tenant demo --user alice --database-url "$DB")
SERVICE=$("$BIN" token --tenant demo --role service --database-url "$DB")
put() { curl -fsS -X PUT "http://127.0.0.1:$1$2" -H "Authorization: Bearer $SERVICE" \
  -H 'Content-Type: application/json' -d "$3" >/dev/null; }
put "$PORT_A" /v1/config/global '{"mergeMaxMessages": 80}'
put "$PORT_A" /v1/tenants/demo/config '{"pathMaxMessages": 300}'
put "$PORT_A" /v1/tenants/demo/users/alice/config '{"mergeMaxMessages": 40}'
PATH_UNDER_TEST=/v1/tenants/demo/config/effective
for port in "$PORT_A" "$PORT_B"; do
  until curl -fsS "http://127.0.0.1:$port/readyz" | grep -q '"redis":"ok"'; do sleep 0.1; done
done

# The writer on B: one write every 100 ms for the whole run; it counts its failures.
(
  failures=0 n=0
  while [ ! -f "$WORK_DIR/stop-writer" ]; do
    n=$((n + 1))
    curl -fsS -m 5 -X PUT "http://127.0.0.1:$PORT_B/v1/tenants/demo/users/bob/config" \
      -H "Authorization: Bearer $SERVICE" -H 'Content-Type: application/json' \
      -d "{\"mergeMaxMessages\": $((n % 100 + 1))}" >/dev/null 2>&1 || failures=$((failures + 1))
    sleep 0.1
  done
  echo "$n $failures" >"$WORK_DIR/writer"
) &
WRITER_PID=$!
PIDS+=("$WRITER_PID")

# Runs one phase; prints "median_us p99_us req_per_s failed".
phase() {
  wrk -t1 -c4 -d"$PHASE" --latency -H "Authorization: Bearer $ALICE" \
    "http://127.0.0.1:$PORT_A$PATH_UNDER_TEST" | python3 -c '
import re, sys
text = sys.stdin.read()
def us(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
p50 = us(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = us(re.search(r"\s99%\s+(\S+)", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
failed = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", text))
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if errors:
    failed += sum(int(x) for x in errors.groups())
print("%.1f %.1f %.0f %d" % (p50, p99, rps, failed))
'
}
echo "machine: $(nproc) cores; $(date -u +%F); wrk -t1 -c4 -d$PHASE --latency, GET $PATH_UNDER_TEST on A; B writes every 100 ms"
read -r H50 H99 HRPS HFAIL < <(phase)
echo "healthy: median ${H50} us, p99 ${H99} us, ${HRPS} req/s, ${HFAIL} failed"
kill -STOP "$REDIS_PID"
read -r P50 P99 PRPS PFAIL < <(phase)
kill -CONT "$REDIS_PID"
echo "paused:  median ${P50} us, p99 ${P99} us, ${PRPS} req/s, ${PFAIL} failed"
read -r R50 R99 RRPS RFAIL < <(phase)
echo "resumed: median ${R50} us, p99 ${R99} us, ${RRPS} req/s, ${RFAIL} failed"
touch "$WORK_DIR/stop-writer"
wait "$WRITER_PID" 2>/dev/null || true
read -r WRITES WFAIL <"$WORK_DIR/writer"
echo "writer on B: $WRITES writes, $WFAIL failed"
python3 -c "print('throughput paused/healthy=%.3f' % ($PRPS / $HRPS))"
python3 -c "print('ratio=%.3f' % ($P50 / $H50))"
