#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, as CI does (.ci/run calls exactly this).
#
# It installs what is missing, starts every service the tests need on private ports in a
# temporary directory, runs every test once (one build shared by all test binaries), and stops
# what it started, by PID, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK_DIR=$(mktemp -d -t copilot-state-test.XXXXXX)
chmod 755 "$WORK_DIR"
# Everything the tests create in a temporary directory goes away with this run.
mkdir -m 755 "$WORK_DIR/tmp"
export TMPDIR="$WORK_DIR/tmp"
PIDS=()
source scripts/services.sh
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    # What a failed run needs to be understood afterwards: a crashed PostgreSQL (a full disk
    # makes it PANIC) fails every later test with the same connection error.
    echo "--- failed (exit $status); free disk:" >&2
    df -h "$WORK_DIR" >&2 || true
    if [ -f "$WORK_DIR/pg/log" ]; then
      echo "--- last lines of the PostgreSQL log:" >&2
      tail -n 40 "$WORK_DIR/pg/log" >&2 || true
    fi
  fi
  stop_all
  rm -rf "$WORK_DIR"
  exit "$status"
}
trap cleanup EXIT INT TERM

# --- toolchain -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# Every pass selects the whole workspace and filters tests, so all passes share the one build
# (selecting a package alone unifies features differently and rebuilds).
RUNNER=(cargo nextest run --workspace --no-fail-fast)

# PostgreSQL (Debian packages; the image may already have the binaries), PgBouncer, Redis.
find_postgres
install_missing pgbouncer:pgbouncer curl:curl redis-server:redis-server

# Schemathesis (from PyPI) fuzzes the HTTP API from its own OpenAPI document.
if ! python3 -c 'import schemathesis' 2>/dev/null; then
  log "installing schemathesis"
  python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

start_redis() {
  local pid
  read -r REDIS_PORT pid < <(start_redis_server main)
  PIDS+=("$pid")
  export COPILOT_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  # A Redis that accepts connections and never answers: started, then paused with SIGSTOP.
  read -r PAUSED_REDIS_PORT PAUSED_REDIS_PID < <(start_redis_server paused)
  PIDS+=("$PAUSED_REDIS_PID")
  kill -STOP "$PAUSED_REDIS_PID"
  export COPILOT_TEST_REDIS_PAUSED_URL="redis://127.0.0.1:$PAUSED_REDIS_PORT"
  # A Redis that speaks TLS only, for the TLS pass.
  local tls_pid
  read -r TLS_REDIS_PORT tls_pid < <(start_tls_redis_server tls)
  PIDS+=("$tls_pid")
  # Fault tests start (and kill, and pause) Redis servers of their own.
  export COPILOT_TEST_REDIS_SERVER
  COPILOT_TEST_REDIS_SERVER=$(command -v redis-server)
}

# --- build (one build shared by every test binary and the fuzz run) --------------------------
# A fresh build needs about 3 GB and PostgreSQL some more; a full disk crashes PostgreSQL.
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ "${free_kb:-0}" -lt $((5 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MiB free here; the build and PostgreSQL need about 5 GB" >&2
fi
log "build"
cargo build --workspace --all-targets

# --- services ---------------------------------------------------------------------------------
log "making a throw-away CA and certificates"
make_test_certificates "$WORK_DIR/tls"
export COPILOT_TEST_TLS_DIR="$TLS_DIR"
log "starting PostgreSQL (TLS on; sslmode decides per client)"
PG_EXTRA_OPTIONS="$(postgres_tls_options)" start_postgres
export COPILOT_TEST_POSTGRES_URL="$PG_URL"
export COPILOT_TEST_PG_BIN="$PG_BIN"
# A migrated template: each test creates its own database from it in ~60 ms.
"$PG_BIN/psql" -q -d "$COPILOT_TEST_POSTGRES_URL" -c 'CREATE DATABASE copilot_template'
./target/debug/copilot-state migrate --database-url "${COPILOT_TEST_POSTGRES_URL%/postgres}/copilot_template" >/dev/null
echo "PostgreSQL on 127.0.0.1:$PG_PORT (pid $PG_PID)"
log "starting Redis"
start_redis
echo "Redis on 127.0.0.1:$REDIS_PORT"
log "starting PgBouncer (transaction mode)"
start_pgbouncer
echo "PgBouncer on 127.0.0.1:$BOUNCER_PORT"

# --- API fuzz: schemathesis against the embedded server ---------------------------------------
log "copilot-state serve on the embedded default"
FUZZ_DIR="$WORK_DIR/fuzz"
mkdir -p "$FUZZ_DIR"
FUZZ_PORT=$(free_port)
BIN="$PWD/target/debug/copilot-state"
(cd "$FUZZ_DIR" && exec env -u DATABASE_URL -u COPILOT_JWT_SECRET -u REDIS_URL COPILOT_RATE_LIMIT=100000/min \
  "$BIN" serve --bind "127.0.0.1:$FUZZ_PORT" >"$FUZZ_DIR/serve.out" 2>"$FUZZ_DIR/serve.err") &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
wait_for_http "http://127.0.0.1:$FUZZ_PORT/healthz" 30
TOKEN=$(sed -n 's/.*export TOKEN=//p' "$FUZZ_DIR/serve.out")
ALICE=$(sed -n 's/.*export ALICE=//p' "$FUZZ_DIR/serve.out")

log "README tour, as printed, against the fresh server"
sed -n '/<!-- tour:begin/,/<!-- tour:end -->/p' README.md | sed '/^```/d; /^<!--/d' >"$FUZZ_DIR/tour.sh"
API="http://127.0.0.1:$FUZZ_PORT" TOKEN="$TOKEN" ALICE="$ALICE" bash -euo pipefail "$FUZZ_DIR/tour.sh" >"$FUZZ_DIR/tour.out"
echo "tour: every command answered 2xx"

log "TypeScript client: types from /openapi.json, tsc --strict, the tour through it"
install_missing node:nodejs npm:npm
TS_DIR="$WORK_DIR/ts-client"
mkdir -p "$TS_DIR"
cp -r clients/typescript/package.json clients/typescript/package-lock.json clients/typescript/tsconfig.json clients/typescript/src "$TS_DIR/"
(
  cd "$TS_DIR"
  npm ci --no-audit --no-fund --silent
  npx openapi-typescript "http://127.0.0.1:$FUZZ_PORT/openapi.json" -o "$TS_DIR/generated.d.ts" >/dev/null
  if ! diff -u src/schema.d.ts generated.d.ts >"$TS_DIR/schema.diff"; then
    head -40 "$TS_DIR/schema.diff"
    echo "clients/typescript/src/schema.d.ts differs from the live document: run 'npm run generate' there" >&2
    exit 1
  fi
  npx tsc -p . --strict
  API="http://127.0.0.1:$FUZZ_PORT" TOKEN="$TOKEN" ALICE="$ALICE" node dist/tour.js
)
# The fuzz runs as a service, a tenant admin and a plain member: every status, body and header
# each of them can get must be the documented one.
MEMBER=$(cd "$FUZZ_DIR" && "$BIN" token --tenant demo --user bob)
fuzz_as() {
  local who=$1 token=$2
  log "API fuzz (schemathesis) from /openapi.json as $who"
  set +e
  # Run from the temporary directory: schemathesis keeps a cache where it runs.
  (cd "$FUZZ_DIR" && python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = "schemathesis"; sys.exit(schemathesis())' \
    run "http://127.0.0.1:$FUZZ_PORT/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --exclude-name 'GET /v1/tenants/{t}/conversations/{id}/events' \
    --exclude-name 'GET /v1/tenants/{t}/conversations/events' --request-timeout 10 \
    --phases examples,coverage,fuzzing --max-examples 30 --seed 1 --no-color \
    >"$FUZZ_DIR/schemathesis-$who.log" 2>&1)
  local status=$?
  set -e
  sed -n '/= SUMMARY =/,$p' "$FUZZ_DIR/schemathesis-$who.log"
  if [ "$status" -ne 0 ]; then
    cat "$FUZZ_DIR/schemathesis-$who.log"
    echo "schemathesis found problems as $who (exit $status)" >&2
    exit "$status"
  fi
}
fuzz_as service "$TOKEN"
fuzz_as admin "$ALICE"
fuzz_as member "$MEMBER"
kill "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" 2>/dev/null || true

# --- every Rust test (last, so its summary closes the run) ------------------------------------
log "HTTP tests over PostgreSQL: ${RUNNER[*]} -E binary_id(copilot-server::api)"
COPILOT_TEST_BACKEND=postgres "${RUNNER[@]}" -E 'binary_id(copilot-server::api)'

# TLS pass: the PostgreSQL conformance suite with sslmode=verify-full, and the fleet tests with
# every instance on PostgreSQL over verify-full and Redis over rediss:// (REDIS_CA_FILE).
log "TLS pass: PostgreSQL suite and fleet tests over TLS"
(
  export COPILOT_TEST_POSTGRES_URL="postgres://postgres@localhost:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt"
  export COPILOT_TEST_REDIS_URL="rediss://localhost:$TLS_REDIS_PORT"
  export COPILOT_TEST_REDIS_TLS=1
  "${RUNNER[@]}" -E 'binary_id(copilot-store::conformance) & (test(/^postgres::/) | test(/^postgres_tls::/))'
  "${RUNNER[@]}" -E 'binary_id(copilot-server::api) & (test(/^fleet::/) | test(/^freshness::/) | test(/^tls::/))'
)

# Cluster pass: the cache suite (conformance through the caching decorators, bus, events,
# convergence) and the HTTP cache and fleet tests on a Redis Cluster of three primaries with a
# replica each. (The cluster fault tests start clusters of their own in the main run.)
log "Cluster pass: cache and fleet tests on Redis Cluster"
start_redis_cluster 3 1
echo "Redis Cluster: $REDIS_CLUSTER_URL"
(
  export COPILOT_TEST_REDIS_URL="$REDIS_CLUSTER_URL"
  "${RUNNER[@]}" -E 'binary_id(copilot-cache::cache)'
  "${RUNNER[@]}" -E 'binary_id(copilot-server::api) & (test(/^cache::/) | test(/^fleet::regression_02/) | test(/^fleet::a_stalled/))'
)

log "all tests: ${RUNNER[*]}"
"${RUNNER[@]}"
