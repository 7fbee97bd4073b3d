# Shared by scripts/test.sh and the benchmark scripts: install and start PostgreSQL and Redis on
# private ports under $WORK_DIR, recording every PID in PIDS for the caller's cleanup trap.
# Source it after setting WORK_DIR and PIDS=().

log() { printf '\n== %s\n' "$*"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until $1 answers or $2 seconds pass.
wait_for_http() {
  local url=$1 deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for $url" >&2; return 1; }
    sleep 0.1
  done
}

wait_for_port() {
  local deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for port $1" >&2; return 1; }
    sleep 0.1
  done
}

# Installs Debian packages (once per run) when their command is missing: "command:package ...".
install_missing() {
  local tool command_name package
  for tool in "$@"; do
    command_name=${tool%%:*}
    package=${tool##*:}
    if ! command -v "$command_name" >/dev/null; then
      log "installing $package"
      [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
    fi
  done
}

# PostgreSQL refuses to run as root: the cluster belongs to the postgres OS user.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

find_postgres() {
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
    log "installing postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    APT_UPDATED=1
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
}

# Starts PostgreSQL; sets PG_PORT, PG_DATA, PG_PID and PG_URL (the postgres database).
start_postgres() {
  [ -n "${PG_BIN:-}" ] || find_postgres
  PG_PORT=$(free_port)
  PG_DATA="$WORK_DIR/pg/data"
  mkdir -p "$WORK_DIR/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$WORK_DIR/pg"
  as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK_DIR/pg/log" -w \
    -o "-p $PG_PORT -k $WORK_DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 ${PG_EXTRA_OPTIONS:-}" start >/dev/null
  PG_PID=$(head -1 "$PG_DATA/postmaster.pid")
  PIDS+=("$PG_PID")
  PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_postgres() {
  if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m immediate >/dev/null 2>&1 || true
  fi
}

# Starts a redis-server on a free port; prints "<port> <pid>". $1 names its log file.
start_redis_server() {
  local port dir="$WORK_DIR/redis"
  port=$(free_port)
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --daemonize no >"$dir/$1.log" 2>&1 &
  local pid=$!
  wait_for_port "$port" 10
  echo "$port $pid"
}

# Stops what was started (a paused process gets its SIGTERM only once continued).
stop_all() {
  stop_postgres
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; } || true
  done
}

# Starts `copilot-state serve` ($BIN, release or debug) on a free port with the environment
# given as NAME=VALUE arguments; prints "<port> <pid>". Logs go to $WORK_DIR/serve-<port>.log.
start_copilot() {
  local port
  port=$(free_port)
  env "$@" RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --no-migrate --bind "127.0.0.1:$port" \
    >"$WORK_DIR/serve-$port.log" 2>&1 &
  local pid=$!
  wait_for_http "http://127.0.0.1:$port/healthz" 30
  echo "$port $pid"
}

# Makes a throw-away CA and a server certificate for "localhost" (DNS name only, so a client
# that checks names refuses 127.0.0.1), a client certificate, and a second CA that signed
# nothing here. Writes into $1; sets TLS_DIR.
make_test_certificates() {
  TLS_DIR=$1
  mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=copilot-state test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=unrelated CA" \
      -keyout other-ca.key -out other-ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=copilot-state" -keyout client.key -out client.csr 2>/dev/null
    # An extension makes it X.509 v3 (rustls refuses v1 certificates).
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile client.ext -out client.crt 2>/dev/null
    # PostgreSQL insists on a key only its own user can read.
    cp server.key pg-server.key
    chmod 600 pg-server.key
    [ "$(id -u)" = 0 ] && chown postgres pg-server.key
    chmod 644 ca.crt other-ca.crt server.crt client.crt client.key server.key
  )
  chmod 755 "$TLS_DIR"
}

# Extra PostgreSQL options that turn TLS on with the certificates of make_test_certificates
# (plain connections stay allowed: sslmode decides per client).
postgres_tls_options() {
  echo "-c ssl=on -c ssl_cert_file=$TLS_DIR/server.crt -c ssl_key_file=$TLS_DIR/pg-server.key"
}

# Starts a redis-server that speaks only TLS (port 0) with the test certificates; prints
# "<port> <pid>". $1 names its log file; further arguments go to redis-server.
start_tls_redis_server() {
  local name=$1 port dir="$WORK_DIR/redis"
  shift
  port=$(free_port)
  mkdir -p "$dir"
  redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
    --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no --daemonize no "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  wait_for_port "$port" 10
  echo "$port $pid"
}

# PgBouncer in transaction mode in front of that PostgreSQL (it refuses to run as root).
start_pgbouncer() {
  BOUNCER_PORT=$(free_port)
  local dir="$WORK_DIR/pgbouncer"
  mkdir -p "$dir"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  echo '"postgres" ""' >"$dir/users.txt"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  as_postgres pgbouncer -d "$dir/pgbouncer.ini"
  wait_for_port "$BOUNCER_PORT" 10
  PIDS+=("$(cat "$dir/pgbouncer.pid")")
  export COPILOT_TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$BOUNCER_PORT"
}

# A free port P whose cluster bus port P+10000 is free too (so P <= 55535).
free_cluster_port() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 55000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}

# Starts a Redis Cluster of $1 primaries with $2 replicas each on free ports (failover after a
# 1 s node timeout); sets REDIS_CLUSTER_URL ("redis://127.0.0.1:P1,127.0.0.1:P2,...") and adds
# every node's PID to PIDS. Must not run in a subshell.
start_redis_cluster() {
  local primaries=$1 replicas=$2 count port dir nodes=() i
  count=$((primaries * (replicas + 1)))
  for ((i = 0; i < count; i++)); do
    port=$(free_cluster_port)
    dir="$WORK_DIR/redis-cluster/$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
      --daemonize no >"$dir/log" 2>&1 &
    PIDS+=("$!")
    nodes+=("127.0.0.1:$port")
  done
  for node in "${nodes[@]}"; do wait_for_port "${node##*:}" 10; done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >"$WORK_DIR/redis-cluster/create.log" 2>&1
  local deadline=$((SECONDS + 30))
  for node in "${nodes[@]}"; do
    until redis-cli -p "${node##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; do
      [ "$SECONDS" -lt "$deadline" ] || { echo "Redis Cluster did not become ready" >&2; return 1; }
      sleep 0.1
    done
  done
  local IFS=,
  REDIS_CLUSTER_URL="redis://${nodes[*]}"
}
