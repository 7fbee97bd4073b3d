#!/usr/bin/env bash
# The soak (BENCHMARKS.md, issue "Speed"; not part of CI): two `copilot-state serve` (release)
# over one PostgreSQL and one Redis for SOAK_SECONDS (600), reads and writes mixed about 90/10
# over 2 x SOAK_USERS users: on each instance a `wrk` reading effective configuration as each of
# SOAK_USERS users in turn and a `wrk` putting the configuration of each of SOAK_USERS other users
# in turn (scripts/soak-load.lua). The load is
# paced near the highest rate the fleet sustains: first SOAK_CALIBRATE seconds as fast as
# answered (the highest rate, printed), then the soak with each connection pausing
# SOAK_READ_PAUSE_MS / SOAK_WRITE_PAUSE_MS before each request. (As fast as answered, the two
# cores have no idle time at all and the kernel has left PostgreSQL unscheduled for seconds.)
# At a third of the run Redis is SIGSTOPped for 10 s; at two thirds PostgreSQL is stopped for
# 5 s and started again.
# Judged: 0 failed reads; writes failing only while PostgreSQL is down (+5 s to reconnect); RSS
# growth after warm-up at most 5 %. RSS is sampled every second; a single sample moves by 10 %
# and more as the allocator takes and returns memory, so growth compares medians of windows:
# the minute before the Redis pause (warm-up is over by then, and no fault has happened yet)
# against the last minute of load. Last line: ratio=<median RSS of the last minute / median
# RSS of the minute before the faults> (the larger of the two instances). The RSS at 60 s and
# at the end (two single samples, as earlier runs reported) are printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything (PostgreSQL's data included) on tmpfs when there is one: the soak judges the
# service, and on this machine's shared disk a WAL write once stalled every COMMIT for 16 s
# (BENCHMARKS.md). SOAK_DIR=/tmp puts it back on disk.
WORK_DIR=$(mktemp -d -p "${SOAK_DIR:-$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )}" copilot-soak.XXXXXX)
chmod 755 "$WORK_DIR"
PIDS=()
source scripts/services.sh
trap 'status=$?; stop_all; [ -n "${SOAK_KEEP:-}" ] || rm -rf "$WORK_DIR"; exit $status' EXIT INT TERM

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_CALIBRATE=${SOAK_CALIBRATE:-20}
SOAK_USERS=${SOAK_USERS:-50}
SOAK_READ_CONNECTIONS=${SOAK_READ_CONNECTIONS:-36} SOAK_READ_PAUSE_MS=${SOAK_READ_PAUSE_MS:-1}
SOAK_WRITE_CONNECTIONS=${SOAK_WRITE_CONNECTIONS:-12} SOAK_WRITE_PAUSE_MS=${SOAK_WRITE_PAUSE_MS:-1}
WARMUP=$((SOAK_SECONDS / 10 < 60 ? SOAK_SECONDS / 10 : 60))
install_missing curl:curl redis-server:redis-server wrk:wrk
find_postgres
log "build (release)"
cargo build --release -q --bin copilot-state
BIN=$PWD/target/release/copilot-state

start_postgres
read -r REDIS_PORT REDIS_PID < <(start_redis_server soak)
PIDS+=("$REDIS_PID")
"$PG_BIN/psql" -q -d "$PG_URL" -c 'CREATE DATABASE soak'
DB="${PG_URL%/postgres}/soak"
export COPILOT_JWT_SECRET=soak-secret-of-enough-length-0123456789
"$BIN" migrate --database-url "$DB" >/dev/null
start_instance() {
  start_copilot DATABASE_URL="$DB" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    COPILOT_REQUIRE_MEMBERSHIP=false COPILOT_RATE_LIMIT=off
}
read -r PORT_A PID_A < <(start_instance)
read -r PORT_B PID_B < <(start_instance)
PIDS+=("$PID_A" "$PID_B")
SERVICE=$("$BIN" token --tenant demo --role service --database-url "$DB")
for body in '/v1/config/global {"mergeMaxMessages": 80}' '/v1/tenants/demo/config {"pathMaxMessages": 300}'; do
  curl -fsS -X PUT "http://127.0.0.1:$PORT_A${body%% *}" -H "Authorization: Bearer $SERVICE" \
    -H 'Content-Type: application/json' -d "${body#* }" >/dev/null
done
for port in "$PORT_A" "$PORT_B"; do
  until curl -fsS "http://127.0.0.1:$port/readyz" | grep -q '"redis":"ok"'; do sleep 0.1; done
done

# Readers read as SOAK_USERS users in turn; writers write the configuration of SOAK_USERS other
# users in turn (scripts/soak-load.lua; lines "<user> <token>"). The two sets are disjoint on
# purpose: a read of a key written just before PostgreSQL stops has nothing it may answer with
# until PostgreSQL is back (the write left a tombstone in Redis, DESIGN.md 5.2, and the old row
# is known to be stale), so with overlapping sets a handful of reads fail at the stop as
# designed (4 in a 60 s trial), which is not what the soak judges.
for kind in read write; do
  for i in $(seq 1 "$SOAK_USERS"); do
    echo "$kind-$i $("$BIN" token --tenant demo --user "$kind-$i" --database-url "$DB")"
  done >"$WORK_DIR/users-$kind"
done
# One wrk per kind (read, write) and instance; "$1" and "$2" are the pauses in ms each read and
# write connection makes before each request (0: as fast as answered), "$3" seconds, "$4" a
# prefix for the output files (stdout: wrk's summary; stderr: one line per failed request).
start_load() {
  local port kind connections pause
  for port in "$PORT_A" "$PORT_B"; do
    for kind in read write; do
      connections=$SOAK_READ_CONNECTIONS pause=$1
      [ "$kind" = write ] && connections=$SOAK_WRITE_CONNECTIONS pause=$2
      wrk -t1 -c"$connections" -d"$3s" --timeout 10s -s scripts/soak-load.lua "http://127.0.0.1:$port" \
        -- "$kind" "$WORK_DIR/users-$kind" "$pause" "$SERVICE" >"$WORK_DIR/$4-$kind-$port" 2>"$WORK_DIR/$4-$kind-$port.failed" &
      LOAD_PIDS+=("$!")
    done
  done
}
# Requests per second of one wrk output file.
rate_of() { awk '/Requests\/sec/ {print $2}' "$1"; }
# The mix as fast as it goes, for SOAK_CALIBRATE seconds: the highest rate, against which the
# paced load of the soak is stated. Failures here are shown, not judged (the machine is saturated).
LOAD_PIDS=()
echo "calibration: $SOAK_CALIBRATE s as fast as answered ($SOAK_READ_CONNECTIONS readers, $SOAK_WRITE_CONNECTIONS writers per instance)"
start_load 0 0 "$SOAK_CALIBRATE" calibrate
wait "${LOAD_PIDS[@]}" 2>/dev/null || true
MAX_READS=0 MAX_WRITES=0
for port in "$PORT_A" "$PORT_B"; do
  MAX_READS=$(python3 -c "print($MAX_READS + $(rate_of "$WORK_DIR/calibrate-read-$port"))")
  MAX_WRITES=$(python3 -c "print($MAX_WRITES + $(rate_of "$WORK_DIR/calibrate-write-$port"))")
done
echo "calibration: reads $(printf %.0f "$MAX_READS")/s, writes $(printf %.0f "$MAX_WRITES")/s (fleet)," \
  "failed: $(cat "$WORK_DIR"/calibrate-*.failed | wc -l)"

# What PostgreSQL's sessions are doing, four times a second (one psql, `\watch`): busy sessions
# with what they wait on, to tell a lock from a CPU or a client that does not read.
watch_sessions() {
  while :; do
    echo "SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'), pid, application_name, state,
        coalesce(wait_event_type, '-'), coalesce(wait_event, '-'),
        round(extract(epoch FROM clock_timestamp() - coalesce(xact_start, query_start)) * 1000),
        left(regexp_replace(query, '\s+', ' ', 'g'), 60)
      FROM pg_stat_activity WHERE datname = 'soak' AND state <> 'idle' AND pid <> pg_backend_pid()
      \watch 0.25" | "$PG_BIN/psql" -X -q -A -t -F ' | ' -d "$DB" >>"$WORK_DIR/sessions" 2>/dev/null
    sleep 1
  done
}
watch_sessions &
WATCH_PID=$!
# What the machine does to the services' and PostgreSQL's threads, four times a second: time
# the vCPUs were stolen by the host (/proc/stat), and the longest time any of those threads was
# runnable but not running (/proc/<pid>/task/*/schedstat), the machine's io and memory stall
# time (PSI) and those processes' major page faults. A stall that shows here is the machine's.
cat >"$WORK_DIR/sched.py" <<'PY'
import glob, sys, time
out, pids = sys.argv[1], sys.argv[2:]
def steal():
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) * 10  # USER_HZ ticks -> ms
def postgres_pids():
    found = []
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().strip() == "postgres":
                    found.append(comm.split("/")[2])
        except OSError:
            pass
    return found
def waits(watched):
    w = {}
    for pid in watched:
        for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                with open(path) as f:
                    w[path] = int(f.read().split()[1]) // 1_000_000  # ns -> ms
            except OSError:
                pass
    return w
def pressure(kind):
    # Microseconds some task stalled on `kind` (io, memory) since boot (PSI).
    try:
        with open(f"/proc/pressure/{kind}") as f:
            return int(f.readline().split("total=")[1]) // 1000  # us -> ms
    except (OSError, IndexError, ValueError):
        return 0
def major_faults(watched):
    # Page faults that had to read from disk, over the services and PostgreSQL.
    n = 0
    for pid in watched:
        try:
            with open(f"/proc/{pid}/stat") as f:
                n += int(f.read().rsplit(")", 1)[1].split()[9])
        except (OSError, IndexError, ValueError):
            pass
    return n
watched = pids + postgres_pids()
last_steal, last_waits = steal(), waits(watched)
last_io, last_mem, last_faults = pressure("io"), pressure("memory"), major_faults(watched)
with open(out, "w") as log:
    while True:
        time.sleep(0.25)
        watched = pids + postgres_pids()  # PostgreSQL starts a process per connection
        now_steal, now_waits = steal(), waits(watched)
        stolen = now_steal - last_steal
        deltas = {k: now_waits[k] - last_waits.get(k, now_waits[k]) for k in now_waits}
        who = max(deltas, key=deltas.get, default="-")
        waited = deltas.get(who, 0)
        who = "service" if who.startswith(tuple(f"/proc/{p}/" for p in pids)) else "postgres"
        now_io, now_mem, now_faults = pressure("io"), pressure("memory"), major_faults(watched)
        io, mem, faults = now_io - last_io, now_mem - last_mem, now_faults - last_faults
        if stolen >= 100 or waited >= 150 or io >= 50 or mem >= 50 or faults > 0:
            log.write(f"{time.time():.2f} stolen {stolen} ms, longest thread wait {waited} ms ({who}), "
                      f"io stall {io} ms, memory stall {mem} ms, major faults {faults}\n")
            log.flush()
        last_steal, last_waits = now_steal, now_waits
        last_io, last_mem, last_faults = now_io, now_mem, now_faults
PY
python3 "$WORK_DIR/sched.py" "$WORK_DIR/sched" "$PID_A" "$PID_B" &
SCHED_PID=$!
LOAD_PIDS=()
START=$(date +%s)
echo "load starts at $(date -u +%T) UTC (times below are seconds after it; PostgreSQL's log and the session samples use the clock)"
echo "machine: $(nproc) cores; $(date -u +%F); $SOAK_SECONDS s, warm-up $WARMUP s"
start_load "$SOAK_READ_PAUSE_MS" "$SOAK_WRITE_PAUSE_MS" "$SOAK_SECONDS" soak

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Every second: elapsed, RSS of A and of B (KiB).
(while sleep 1; do
  echo "$(($(date +%s) - START)) $(rss "$PID_A") $(rss "$PID_B")"
done >"$WORK_DIR/rss" 2>/dev/null) &
RSS_SAMPLER=$!
RSS_A0="" RSS_B0="" PAUSED=0 PAUSE_AT=0 PG_DOWN_AT=0 PG_UP_AT=0
while [ $(($(date +%s) - START)) -lt "$SOAK_SECONDS" ]; do
  sleep 1
  elapsed=$(($(date +%s) - START))
  if [ -z "$RSS_A0" ] && [ "$elapsed" -ge "$WARMUP" ]; then
    RSS_A0=$(rss "$PID_A") RSS_B0=$(rss "$PID_B")
    echo "after warm-up ($elapsed s): RSS A $RSS_A0 KiB, B $RSS_B0 KiB"
  fi
  # The RSS curve, to tell settling from growth.
  if [ $((elapsed % 60)) = 0 ] && [ "$elapsed" != "${LAST_SAMPLE:-}" ]; then
    LAST_SAMPLE=$elapsed
    echo "$elapsed s: RSS A $(rss "$PID_A") KiB, B $(rss "$PID_B") KiB"
  fi
  if [ "$PAUSED" = 0 ] && [ "$elapsed" -ge $((SOAK_SECONDS / 3)) ]; then
    echo "$elapsed s: Redis SIGSTOP for 10 s"
    PAUSE_AT=$elapsed
    kill -STOP "$REDIS_PID"; sleep 10; kill -CONT "$REDIS_PID"; PAUSED=1
  fi
  if [ "$PG_DOWN_AT" = 0 ] && [ "$elapsed" -ge $((2 * SOAK_SECONDS / 3)) ]; then
    echo "$elapsed s: PostgreSQL stopped for 5 s"
    PG_DOWN_AT=$(date +%s)
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast >/dev/null
    sleep 5
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK_DIR/pg/log" -w \
      -o "-p $PG_PORT -k $WORK_DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    PG_UP_AT=$(date +%s)
    PIDS+=("$(head -1 "$PG_DATA/postmaster.pid")")
  fi
done
LOAD_END=$(($(date +%s) - START))
wait "${LOAD_PIDS[@]}" 2>/dev/null || true
kill "$WATCH_PID" "$SCHED_PID" "$RSS_SAMPLER" 2>/dev/null || true
RSS_A1=$(rss "$PID_A") RSS_B1=$(rss "$PID_B")

# Per kind and instance: requests, rate, and the failures (wrk's non-2xx and socket errors;
# the lines of the .failed file say when and what).
failed_reads=0 outside=0 reads=0 writes=0
for kind in read write; do
  for port in "$PORT_A" "$PORT_B"; do
    out=$WORK_DIR/soak-$kind-$port
    reqs=$(awk '/requests in/ {print $1}' "$out")
    bad=$(awk '/Non-2xx/ {print $NF}' "$out"); bad=${bad:-0}
    sock=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out"); sock=${sock:-0}
    echo "${kind}s on :$port: $reqs ($(rate_of "$out")/s), non-2xx $bad, socket errors $sock;" \
      "latency $(awk '$1 == "Latency" {print "mean " $2 ", max " $4}' "$out")"
    # Failures by second of the run, status and code.
    awk -v start="$START" '/^failed/ {print int($3 - start) "s status " $5, $6}' "$out.failed" \
      | sort | uniq -c | sort -k2 -n | head -20 || true
    if [ "$kind" = read ]; then
      reads=$((reads + reqs)) failed_reads=$((failed_reads + bad + sock))
    else
      writes=$((writes + reqs))
      # Writes may fail while PostgreSQL is down and for 5 s after it is back (reconnecting).
      outside=$((outside + $(awk -v down="$PG_DOWN_AT" -v up="$PG_UP_AT" \
        '/^failed/ && ($3 < down || $3 > up + 5) {n++} END {print n + 0}' "$out.failed") + sock))
    fi
  done
done
echo "mix: $reads reads, $writes writes ($(python3 -c "print(f'{100 * $writes / ($reads + $writes):.1f}')") % writes);" \
  "$(python3 -c "print(f'{($reads + $writes) / $LOAD_END:.0f}')") requests/s, against" \
  "$(python3 -c "print(f'{$MAX_READS + $MAX_WRITES:.0f}')")/s as fast as answered (calibration)"
echo "failed reads: $failed_reads; failed writes outside the PostgreSQL outage (+5 s): $outside"
# Sessions seen busy in one transaction or statement for a second or more (ms in column 7).
echo "sessions busy >= 1 s (time | pid | application | state | wait type | wait | ms | query):"
# (`|| true`: with pipefail, `head` closing early would end the script before its last lines.)
awk -F ' [|] ' '$7 + 0 >= 1000' "$WORK_DIR/sessions" 2>/dev/null | head -40 || true
echo "quarter seconds with >= 100 ms of vCPU stolen, a thread waiting >= 150 ms to run, >= 50 ms of io or memory stall (PSI) or a major fault:"
echo "  ($(wc -l <"$WORK_DIR/sched") such quarter seconds; the 20 with the longest thread wait:)"
sort -k8 -nr "$WORK_DIR/sched" | head -20 | awk -v start="$START" '{$1 = sprintf("%.2fs", $1 - start); print "  " $0}' || true
echo "RSS A: $RSS_A0 -> $RSS_A1 KiB; B: $RSS_B0 -> $RSS_B1 KiB (single samples at $WARMUP s and after the load)"
python3 - "$WORK_DIR/rss" "$PAUSE_AT" "$LOAD_END" <<'PY'
import statistics, sys
samples = [list(map(int, line.split())) for line in open(sys.argv[1]) if len(line.split()) == 3]
pause, end = int(sys.argv[2]), int(sys.argv[3])
ratios = []
for name, column in (("A", 1), ("B", 2)):
    before = [s[column] for s in samples if pause - 60 <= s[0] < pause]
    last = [s[column] for s in samples if end - 60 <= s[0] < end]
    b, l = statistics.median(before), statistics.median(last)
    print(f"RSS {name}: median {b:.0f} KiB in the minute before the Redis pause, {l:.0f} KiB in the "
          f"last minute (range {min(last)}-{max(last)}); all samples {min(s[column] for s in samples)}-"
          f"{max(s[column] for s in samples)}")
    ratios.append(l / b)
print("ratio=%.3f" % max(ratios))
PY
