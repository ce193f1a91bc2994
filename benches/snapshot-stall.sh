#!/usr/bin/env bash
# Worst write latency while Raft snapshots of a large store are built and
# sent (issue 3): three Ballast members on loopback, release build.
#
# 1. Loads BENCH_KEYS keys of BENCH_VAL_SIZE bytes (default 2,000,000 x 256 B,
#    about 500 MB of values), then restarts the members with
#    --snapshot-count 2000, so that snapshots of the loaded store are built
#    every 2000 entries.
# 2. Measures puts from 10 clients while those snapshots are built, then
#    while a fourth member, added after the log was purged, is sent one.
# Prints ballast-bench's JSON lines; the max and p99.9 latencies are the
# figures to compare with p50.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
KEYS=${BENCH_KEYS:-2000000}
VAL_SIZE=${BENCH_VAL_SIZE:-256}
MEASURE_TOTAL=${BENCH_MEASURE_TOTAL:-60000}

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p ballast-server -p ballast-bench
BALLAST="$ROOT/target/release/ballast"
BENCH="$ROOT/target/release/ballast-bench"
WORK=$(mktemp -d "$ROOT/target/snapshot-stall.XXXXXX")
declare -a PIDS=()
LOGS="$ROOT/target/snapshot-stall-logs"
cleanup() {
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$LOGS" && mkdir -p "$LOGS" && cp "$WORK"/s*.log "$LOGS"/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
initial=""
for i in 1 2 3; do
    initial+="${initial:+,}s$i=http://127.0.0.1:$((base + 10 + i))"
done
state=new
endpoints="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
# start_member I SNAPSHOT_COUNT
start_member() {
    local i=$1 snapshot_count=$2
    "$BALLAST" --name "s$i" --data-dir "$WORK/s$i" \
        --listen-client-urls "http://127.0.0.1:$((base + i))" \
        --advertise-client-urls "http://127.0.0.1:$((base + i))" \
        --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
        --initial-cluster "$initial" --initial-cluster-state "$state" \
        --snapshot-count "$snapshot_count" \
        >>"$WORK/s$i.log" 2>&1 &
    PIDS[i]=$!
}
wait_healthy() {
    until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do sleep 0.2; done
}
for i in 1 2 3; do start_member "$i" 100000; done
wait_healthy

echo "loading $KEYS keys of $VAL_SIZE bytes"
"$BENCH" --endpoints "$endpoints" --clients 100 --conns 10 --total "$KEYS" \
    --key-space-size "$KEYS" --sequential-keys --val-size "$VAL_SIZE" --json put
du -sh "$WORK"/s1
kill -TERM "${PIDS[@]}"
wait "${PIDS[@]}" 2>/dev/null || true
restarted=$(date +%s.%N)
for i in 1 2 3; do start_member "$i" 2000; done
wait_healthy
echo "restart to serving with $KEYS keys: $(awk -v now="$(date +%s.%N)" -v then="$restarted" 'BEGIN { printf "%.3f", now - then }') s"

echo "puts while snapshots of the loaded store are built"
"$BENCH" --endpoints "$endpoints" --clients 10 --conns 10 --total "$MEASURE_TOTAL" \
    --key-space-size "$KEYS" --val-size "$VAL_SIZE" --json put

echo "puts while a member added after the log was purged receives a snapshot"
ETCDCTL_API=3 etcdctl --endpoints "$endpoints" member add s4 \
    --peer-urls "http://127.0.0.1:$((base + 14))" >/dev/null
initial+=",s4=http://127.0.0.1:$((base + 14))"
state=existing
start_member 4 2000
"$BENCH" --endpoints "$endpoints" --clients 10 --conns 10 --total "$MEASURE_TOTAL" \
    --key-space-size "$KEYS" --val-size "$VAL_SIZE" --json put
# s4 may need several snapshots: the log moves on while it installs one.
deadline=$((SECONDS + 900))
until ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((base + 4))" --command-timeout 2s \
    endpoint health >/dev/null 2>&1 || ((SECONDS > deadline)); do
    sleep 0.5
done
echo "s4 health: $(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$((base + 4))" endpoint health 2>&1 | tail -1)"
echo "terms: $(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w json 2>/dev/null | grep -o '"raft_term":[0-9]*' | sort -u | tr '\n' ' ')"
echo "snapshots installed by s4: $(grep -c "installed snapshot from the leader" "$WORK/s4.log" || true)"
echo "election pauses on s4 while receiving: $(grep -c "elections paused" "$WORK/s4.log" || true)"
echo "member logs are kept in $LOGS"
