#!/usr/bin/env bash
# HTTP reads against a static file server (BENCHMARKS.md, issue "Speed"): for each endpoint,
# nginx serves a file holding the exact body our endpoint answers, and `wrk -t2 -c64` runs
# against both in the same run, alternating, ROUNDS times. Two modes: embedded (SQLite, one
# instance) and fleet (PostgreSQL + Redis). Both servers get the same bearer header; nginx
# ignores it. Prints req/s per run and `ratio=<ours/nginx>` per endpoint and mode; the last
# line is the smallest of those ratios (goal >= 1.0). Unpinned, throughput on two shared cores
# swings +-15 % between runs with where the scheduler puts the four busy threads (two servers',
# two wrk's), so by default each server under test (all its threads, or nginx's master and
# workers) is pinned to the CPUs in BENCH_SERVER_CPUS (0) and wrk to BENCH_CLIENT_CPUS (the
# others): the same for both servers, and the client no longer competes with the server it
# measures. BENCH_PIN=0 turns that off. Each run also reports the server's CPU time per
# request (user + system, from /proc, all its threads or worker processes):
# `cpu_ratio=<nginx/ours>` (> 1: we spend less per request).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR=$(mktemp -d -t copilot-bench-http.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
source scripts/services.sh
trap 'status=$?; stop_all; rm -rf "$WORK_DIR"; exit $status' EXIT INT TERM

ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-6s}
BENCH_PIN=${BENCH_PIN:-1}
BENCH_SERVER_CPUS=${BENCH_SERVER_CPUS:-0} BENCH_CLIENT_CPUS=${BENCH_CLIENT_CPUS:-1-$(($(nproc) - 1))}
[ "$(nproc)" -ge 2 ] || BENCH_PIN=0
# Pins every thread of the given processes to the server CPUs.
pin_server() {
  local pid
  [ "$BENCH_PIN" = 1 ] || return 0
  for pid in "$@"; do taskset -a -p -c "$BENCH_SERVER_CPUS" "$pid" >/dev/null; done
}
client() { if [ "$BENCH_PIN" = 1 ]; then taskset -c "$BENCH_CLIENT_CPUS" "$@"; else "$@"; fi; }
install_missing curl:curl redis-server:redis-server wrk:wrk nginx:nginx
find_postgres
log "build (release)"
cargo build --release -q --bin copilot-state
BIN=$PWD/target/release/copilot-state
export COPILOT_JWT_SECRET=bench-secret-of-enough-length-0123456789

# nginx: one server block per file, two workers (this machine's cores), no access log.
start_nginx() {
  local port=$1 root=$2
  mkdir -p "$WORK_DIR/nginx"
  cat >"$WORK_DIR/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $WORK_DIR/nginx/nginx.pid;
error_log $WORK_DIR/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    root $root;
    location / { try_files \$uri =404; }
  }
}
CONF
  nginx -c "$WORK_DIR/nginx/nginx.conf"
  wait_for_port "$port" 10
  PIDS+=("$(cat "$WORK_DIR/nginx/nginx.pid")")
  # shellcheck disable=SC2046 # the master and one pid per worker
  pin_server "$(cat "$WORK_DIR/nginx/nginx.pid")" $(pgrep -P "$(cat "$WORK_DIR/nginx/nginx.pid")")
}

# CPU ticks (user + system) of every thread of the given processes.
cpu_ticks() {
  local pid
  for pid in "$@"; do cat /proc/"$pid"/task/*/stat; done 2>/dev/null | awk '{s += $14 + $15} END {print s + 0}'
}

# $1 URL, then the server's pids: prints "<req/s> <CPU microseconds per request>".
run_wrk() {
  local url=$1 before after out
  shift
  before=$(cpu_ticks "$@")
  out=$(client wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$url")
  after=$(cpu_ticks "$@")
  grep -q Non-2xx <<<"$out" && echo "non2xx: $(grep Non-2xx <<<"$out")" >&2
  awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    '/requests in/ {n = $1} /Requests\/sec/ {rps = $2} END {printf "%s %.2f\n", rps, ticks * 1e6 / hz / n}' <<<"$out"
}

RATIOS=()
# $1 mode name, $2 our port. Captures each endpoint's body into the nginx root, then compares.
compare() {
  local mode=$1 port=$2 root="$WORK_DIR/static-$1" path
  mkdir -p "$root"
  for path in /v1/tenants/demo/config/effective /v1/tenants/demo/llm-policy; do
    mkdir -p "$root$(dirname "$path")"
    curl -fsS "http://127.0.0.1:$port$path" -H "Authorization: Bearer $TOKEN" >"$root$path"
  done
  local nginx_port
  nginx_port=$(free_port)
  start_nginx "$nginx_port" "$root"
  for path in /v1/tenants/demo/config/effective /v1/tenants/demo/llm-policy; do
    cmp -s <(curl -fsS "http://127.0.0.1:$nginx_port$path") <(curl -fsS "http://127.0.0.1:$port$path" -H "Authorization: Bearer $TOKEN") \
      || { echo "bodies differ for $path" >&2; exit 1; }
    local ours_total=0 nginx_total=0 ours_cpu=0 nginx_cpu=0 ours theirs
    for round in $(seq "$ROUNDS"); do
      read -r ours ours_us < <(run_wrk "http://127.0.0.1:$port$path" "$OURS_PID")
      # shellcheck disable=SC2046 # one pid per nginx worker
      read -r theirs theirs_us < <(run_wrk "http://127.0.0.1:$nginx_port$path" $(pgrep -P "$(cat "$WORK_DIR/nginx/nginx.pid")"))
      echo "$mode GET $path round $round: ours ${ours} req/s (${ours_us} us CPU/request), nginx ${theirs} req/s (${theirs_us} us CPU/request) ($(stat -c %s "$root$path") bytes)"
      ours_total=$(python3 -c "print($ours_total + $ours)")
      nginx_total=$(python3 -c "print($nginx_total + $theirs)")
      ours_cpu=$(python3 -c "print($ours_cpu + $ours_us)")
      nginx_cpu=$(python3 -c "print($nginx_cpu + $theirs_us)")
    done
    local ratio
    ratio=$(python3 -c "print('%.3f' % ($ours_total / $nginx_total))")
    echo "$mode GET $path cpu_ratio=$(python3 -c "print('%.3f' % ($nginx_cpu / $ours_cpu))") ratio=$ratio"
    RATIOS+=("$ratio")
  done
  kill "$(cat "$WORK_DIR/nginx/nginx.pid")"
  sleep 0.5
}

seed() {
  local port=$1 service=$2
  put() { curl -fsS -X PUT "http://127.0.0.1:$port$1" -H "Authorization: Bearer $service" \
    -H 'Content-Type: application/json' -d "$2" >/dev/null; }
  put /v1/config/global '{"mergeMaxMessages": 80}'
  put /v1/tenants/demo/config '{"pathMaxMessages": 300}'
  put /v1/tenants/demo/users/alice/config '{"mergeMaxMessages": 40}'
  put /v1/tenants/demo/llm-policy '{"defaultModel": "gpt-4o", "defaultProvider": "openai", "tasks": [{"task": "summarize", "model": "claude", "provider": "anthropic"}]}'
}

echo "machine: $(nproc) cores; $(date -u +%F); wrk -t2 -c64 -d$DURATION, $ROUNDS alternating rounds;" \
  "$([ "$BENCH_PIN" = 1 ] && echo "servers on CPUs $BENCH_SERVER_CPUS, wrk on CPUs $BENCH_CLIENT_CPUS" || echo unpinned)"

log "embedded (SQLite)"
mkdir -p "$WORK_DIR/embedded"
DB="sqlite://$WORK_DIR/embedded/copilot.db"
"$BIN" migrate --database-url "$DB" >/dev/null
read -r PORT PID < <(start_copilot DATABASE_URL="$DB" COPILOT_RATE_LIMIT=off)
PIDS+=("$PID")
OURS_PID=$PID
pin_server "$PID"
TOKEN=$("$BIN" token --tenant demo --user alice --database-url "$DB")
seed "$PORT" "$("$BIN" token --tenant demo --role service --database-url "$DB")"
compare embedded "$PORT"
kill "$PID"

log "fleet (PostgreSQL + Redis)"
start_postgres
read -r REDIS_PORT REDIS_PID < <(start_redis_server bench)
PIDS+=("$REDIS_PID")
"$PG_BIN/psql" -q -d "$PG_URL" -c 'CREATE DATABASE bench'
DB="${PG_URL%/postgres}/bench"
"$BIN" migrate --database-url "$DB" >/dev/null
read -r PORT PID < <(start_copilot DATABASE_URL="$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  COPILOT_REQUIRE_MEMBERSHIP=false COPILOT_RATE_LIMIT=off)
PIDS+=("$PID")
OURS_PID=$PID
pin_server "$PID"
until curl -fsS "http://127.0.0.1:$PORT/readyz" | grep -q '"redis":"ok"'; do sleep 0.1; done
TOKEN=$("$BIN" token --tenant demo --user alice --database-url "$DB")
seed "$PORT" "$("$BIN" token --tenant demo --role service --database-url "$DB")"
compare fleet "$PORT"

python3 -c "import sys; print('ratio=%.3f' % min(float(r) for r in sys.argv[1:]))" "${RATIOS[@]}"
