#!/usr/bin/env bash
# Ballast side by side with etcd 3.4 on this machine, written to
# docs/BENCHMARKS.md.
#
# Starts a real etcd (Debian's etcd-server) and a release build of Ballast,
# each a single member on free loopback ports, with their data dirs side by
# side in one directory (so on one filesystem) and fsync on (etcd's default;
# Ballast always syncs its log). Every workload runs against etcd, then
# Ballast, round after round; the tables give medians over the rounds. Peak
# RSS is each server's VmHWM at the end of the run.
#
# Totals and other knobs are environment variables (defaults below), e.g.
#   BENCH_ROUNDS=5 BENCH_PUT100_TOTAL=200000 benches/compare.sh
# BENCH_OUT=path writes the report elsewhere; BENCH_KEEP=1 keeps the data
# dirs and server logs (their directory is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="benches/compare.sh${*:+ $*}"

ROUNDS=${BENCH_ROUNDS:-3}
VAL_SIZE=${BENCH_VAL_SIZE:-256}
# Keys the put workloads draw from.
PUT_KEYS=${BENCH_PUT_KEYS:-100000}
# Keys written before the range and txn-mixed runs, then read or updated.
READ_KEYS=${BENCH_READ_KEYS:-1000}
PUT1_TOTAL=${BENCH_PUT1_TOTAL:-15000}
PUT100_TOTAL=${BENCH_PUT100_TOTAL:-120000}
RANGE_TOTAL=${BENCH_RANGE_TOTAL:-60000}
TXN_MIXED_TOTAL=${BENCH_TXN_MIXED_TOTAL:-30000}
# Put-then-wait-for-its-event operations, 10 clients each with its own watch stream.
WATCH_LATENCY_TOTAL=${BENCH_WATCH_LATENCY_TOTAL:-5000}
# Puts under the prefix the fan-out watchers watch; each is delivered to every watcher.
WATCH_FANOUT_TOTAL=${BENCH_WATCH_FANOUT_TOTAL:-3000}
WATCH_FANOUT_WATCHERS=${BENCH_WATCH_FANOUT_WATCHERS:-1000}
WATCH_FANOUT_STREAMS=${BENCH_WATCH_FANOUT_STREAMS:-10}
# Keep-alive round trips, 100 clients each with its own lease and keep-alive stream.
LEASE_KEEPALIVE_TOTAL=${BENCH_LEASE_KEEPALIVE_TOTAL:-100000}
# 3-member clusters: totals of their put and range runs.
CLUSTER_PUT1_TOTAL=${BENCH_CLUSTER_PUT1_TOTAL:-3000}
CLUSTER_PUT100_TOTAL=${BENCH_CLUSTER_PUT100_TOTAL:-40000}
CLUSTER_PUT1000_TOTAL=${BENCH_CLUSTER_PUT1000_TOTAL:-60000}
CLUSTER_RANGE_TOTAL=${BENCH_CLUSTER_RANGE_TOTAL:-40000}
# Keys loaded before measuring on-disk size and restart time.
LARGE_KEYS=${BENCH_LARGE_KEYS:-1000000}
# etcdctl check perf loads run against each 3-member cluster (60 s each;
# BENCH_CHECK_PERF_LOADS="m l" adds the stretch goal, past the 20 minutes).
CHECK_PERF_LOADS=${BENCH_CHECK_PERF_LOADS:-m}
# A hang guard per run, not a measurement limit.
RUN_TIMEOUT=${BENCH_RUN_TIMEOUT:-600}
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}

ETCD=/usr/bin/etcd
ETCDCTL=/usr/bin/etcdctl

# ---------------------------------------------------------------- setup

"$ROOT/scripts/install-packages.sh" etcd=etcd-server etcdctl=etcd-client jq=jq

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --release -p ballast-server -p ballast-bench
BALLAST="$ROOT/target/release/ballast"
BENCH="$ROOT/target/release/ballast-bench"

WORK=$(mktemp -d "$ROOT/target/compare.XXXXXX")
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
declare -A PID=() ENDPOINT=() RSS_KIB=() MEMBERS=()
USED_PORTS=" "

cleanup() {
    for name in "${!PID[@]}"; do
        kill -TERM "${PID[$name]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "data dirs and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Sets PORT to a loopback port nothing listens on and this script has not
# handed out (not run in a subshell, so that USED_PORTS remembers it).
free_port() {
    while :; do
        PORT=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $PORT "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            USED_PORTS+="$PORT "
            return
        fi
    done
}

# start_cluster NAME BINARY SIZE: SIZE members named NAME-1... with etcd's
# flags (Ballast takes the same), data in $WORK/NAME-i; waits until every
# member reports a leader. ENDPOINT[NAME] lists their client endpoints.
start_cluster() {
    local name=$1 binary=$2 size=$3 i member initial="" endpoints=""
    local -a clients=() peers=()
    for i in $(seq 1 "$size"); do
        free_port
        clients[i]=$PORT
        free_port
        peers[i]=$PORT
        initial+="${initial:+,}$name-$i=http://127.0.0.1:${peers[i]}"
        endpoints+="${endpoints:+,}127.0.0.1:${clients[i]}"
    done
    MEMBERS[$name]=""
    for i in $(seq 1 "$size"); do
        member="$name-$i"
        mkdir -p "$WORK/$member"
        # ETCD_* variables would configure either server behind our back.
        env $(env | grep -o '^ETCD_[A-Z_]*' | sed 's/^/-u /') \
            "$binary" --name "$member" --data-dir "$WORK/$member/data" \
            --listen-client-urls "http://127.0.0.1:${clients[i]}" \
            --advertise-client-urls "http://127.0.0.1:${clients[i]}" \
            --listen-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peers[i]}" \
            --initial-cluster "$initial" \
            >"$WORK/$member/server.log" 2>&1 &
        PID[$member]=$!
        MEMBERS[$name]+="$member "
    done
    ENDPOINT[$name]=$endpoints
    for i in $(seq 1 "$size"); do
        wait_for_leader "$name-$i" "127.0.0.1:${clients[i]}"
    done
    echo "$name: ${MEMBERS[$name]}on $endpoints, data in $WORK/$name-*"
}

wait_for_leader() {
    local member=$1 endpoint=$2 leader deadline=$((SECONDS + 30))
    while :; do
        if ! kill -0 "${PID[$member]}" 2>/dev/null; then
            echo "$member exited at start; its log:" >&2
            tail -n 40 "$WORK/$member/server.log" >&2
            exit 1
        fi
        leader=$(ETCDCTL_API=3 "$ETCDCTL" --endpoints "$endpoint" --dial-timeout 1s \
            endpoint status -w json 2>/dev/null | jq -r '.[0].Status.leader // 0' 2>/dev/null || true)
        [ -n "$leader" ] && [ "$leader" != 0 ] && break
        if ((SECONDS > deadline)); then
            echo "$member not ready after 30 s; its log:" >&2
            tail -n 40 "$WORK/$member/server.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Peak resident set size in KiB, while the process still runs.
peak_rss_kib() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# Stops every member of NAME; RSS_KIB[NAME] is the largest member's peak.
stop_cluster() {
    local name=$1 member rss peak=0
    for member in ${MEMBERS[$name]}; do
        rss=$(peak_rss_kib "${PID[$member]}")
        ((rss > peak)) && peak=$rss
        kill -TERM "${PID[$member]}"
        wait "${PID[$member]}" 2>/dev/null || true
        unset "PID[$member]"
    done
    RSS_KIB[$name]=$peak
}

# ------------------------------------------------------------- workloads
# label|description|ballast-bench arguments. Adding a workload is one line.
WORKLOADS=(
    "put-1|put, 1 client|--clients 1 --conns 1 --total $PUT1_TOTAL --key-space-size $PUT_KEYS put"
    "put-100|put, 100 clients over 10 conns|--clients 100 --conns 10 --total $PUT100_TOTAL --key-space-size $PUT_KEYS put"
    "range-l-100|linearizable range of 1 key, 100 clients over 10 conns|--clients 100 --conns 10 --total $RANGE_TOTAL --key-space-size $READ_KEYS range --consistency l"
    "range-s-100|serializable range of 1 key, 100 clients over 10 conns|--clients 100 --conns 10 --total $RANGE_TOTAL --key-space-size $READ_KEYS range --consistency s"
    "txn-mixed-100|read + txn(mod_revision compare, put), 100 clients over 10 conns|--clients 100 --conns 10 --total $TXN_MIXED_TOTAL --key-space-size $READ_KEYS txn-mixed"
    "watch-latency-10|put, then its event on the client's own watch stream (latency: put sent to event received), 10 clients over 10 conns|--clients 10 --conns 10 --total $WATCH_LATENCY_TOTAL --key-space-size $PUT_KEYS watch-latency"
    "watch-fanout-$WATCH_FANOUT_WATCHERS|$WATCH_FANOUT_WATCHERS watchers of one prefix over $WATCH_FANOUT_STREAMS streams, 10 put clients over 10 conns (throughput: events delivered/s, first put to last event; latency: the puts')|--clients 10 --conns 10 --total $WATCH_FANOUT_TOTAL --key-space-size $PUT_KEYS watch-fanout --watchers $WATCH_FANOUT_WATCHERS --streams $WATCH_FANOUT_STREAMS"
    "lease-keepalive-100|lease keep-alive, 100 clients over 10 conns, each with its own lease and stream|--clients 100 --conns 10 --total $LEASE_KEEPALIVE_TOTAL lease-keepalive"
)
# The same, against 3 members of each on loopback; clients spread over the members.
CLUSTER_WORKLOADS=(
    "3m-put-1|3 members: put, 1 client|--clients 1 --conns 1 --total $CLUSTER_PUT1_TOTAL --key-space-size $PUT_KEYS put"
    "3m-put-100|3 members: put, 100 clients over 10 conns|--clients 100 --conns 10 --total $CLUSTER_PUT100_TOTAL --key-space-size $PUT_KEYS put"
    "3m-put-1000|3 members: put, 1,000 clients over 100 conns|--clients 1000 --conns 100 --total $CLUSTER_PUT1000_TOTAL --key-space-size $PUT_KEYS put"
    "3m-range-l-100|3 members: linearizable range of 1 key, 100 clients over 10 conns|--clients 100 --conns 10 --total $CLUSTER_RANGE_TOTAL --key-space-size $READ_KEYS range --consistency l"
    "3m-range-s-100|3 members: serializable range of 1 key, 100 clients over 10 conns|--clients 100 --conns 10 --total $CLUSTER_RANGE_TOTAL --key-space-size $READ_KEYS range --consistency s"
)
ALL_WORKLOADS=("${WORKLOADS[@]}" "${CLUSTER_WORKLOADS[@]}")
# The field a workload's throughput is, when not requests per second.
declare -A THROUGHPUT=(["watch-fanout-$WATCH_FANOUT_WATCHERS"]=.events_per_sec)
throughput_field() {
    echo "${THROUGHPUT[$1]:-.requests_per_sec}"
}
TARGETS=(etcd ballast)

# run_workload CLUSTER TARGET ROUND LABEL ARGS: one run, recorded for TARGET.
run_workload() {
    local cluster=$1 target=$2 round=$3 label=$4 args=$5 line
    # shellcheck disable=SC2086 # $args is a list of flags
    line=$(timeout "$RUN_TIMEOUT" "$BENCH" --endpoints "${ENDPOINT[$cluster]}" \
        --val-size "$VAL_SIZE" --json $args)
    jq -c --arg t "$target" --arg l "$label" --argjson r "$round" \
        '. + {"target": $t, "label": $l, "round": $r}' <<<"$line" >>"$RESULTS"
    jq -r '"  \(.target) \(.label) round \(.round): \(.requests_per_sec | floor) req/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors) errors" +
        if .events_per_sec == null then "" else ", \(.events_per_sec | floor) events/s (\(.events_delivered) of \(.events_expected))" end' <<<"$(tail -n 1 "$RESULTS")"
}

# ------------------------------------------------------- 1-member topology

started=$(date -u +%s)
# Anything else running skews both servers; the report shows it.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# run_topology SIZE WORKLOAD...: clusters of SIZE members of each server
# (named etcdSIZE and ballastSIZE), every workload against each in turn,
# round after round.
run_topology() {
    local size=$1 round workload label args target
    shift
    start_cluster "etcd$size" "$ETCD" "$size"
    start_cluster "ballast$size" "$BALLAST" "$size"
    for round in $(seq 1 "$ROUNDS"); do
        echo "$size member(s): round $round of $ROUNDS"
        for workload in "$@"; do
            IFS='|' read -r label _ args <<<"$workload"
            for target in "${TARGETS[@]}"; do
                run_workload "$target$size" "$target" "$round" "$label" "$args"
            done
        done
    done
    if ((size == 3)); then
        for load in $CHECK_PERF_LOADS; do
            for target in "${TARGETS[@]}"; do
                check_perf "$target" "$target$size" "$load"
            done
        done
    fi
    stop_cluster "etcd$size"
    stop_cluster "ballast$size"
}

# check_perf TARGET CLUSTER LOAD: etcdctl's own verdict (`check perf
# --load=LOAD`, 60 s of writes) against the cluster, kept in
# CHECK_PERF[TARGET-LOAD].
declare -A CHECK_PERF=()
check_perf() {
    local target=$1 cluster=$2 load=$3 out
    out=$(ETCDCTL_API=3 timeout "$RUN_TIMEOUT" "$ETCDCTL" --endpoints "${ENDPOINT[$cluster]}" \
        check perf --load="$load" 2>&1 | grep -E '^(PASS|FAIL|Error)' | tr '\n' ';' || true)
    CHECK_PERF[$target-$load]=${out:-no verdict}
    echo "  $target check perf --load=$load: ${CHECK_PERF[$target-$load]}"
}

run_topology 1 "${WORKLOADS[@]}"
run_topology 3 "${CLUSTER_WORKLOADS[@]}"
elapsed=$(($(date -u +%s) - started))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --------------------------------- 1M keys: on-disk size and restart time
# A fresh member of each is loaded with LARGE_KEYS keys of VAL_SIZE bytes,
# stopped (SIGTERM), measured with du, restarted on the same data and ports,
# and timed until it answers a Range.
declare -A DISK_BYTES=() RESTART_SECS=() LOAD_RATE=()
large_store() {
    local target=$1 binary=$2 client peer dir started
    free_port
    client=$PORT
    free_port
    peer=$PORT
    dir="$WORK/$target-large"
    mkdir -p "$dir"
    run_large() {
        env $(env | grep -o '^ETCD_[A-Z_]*' | sed 's/^/-u /') \
            "$binary" --name large --data-dir "$dir/data" \
            --listen-client-urls "http://127.0.0.1:$client" \
            --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "large=http://127.0.0.1:$peer" \
            >>"$dir/server.log" 2>&1 &
        PID[$target-large]=$!
    }
    run_large
    wait_for_leader "$target-large" "127.0.0.1:$client"
    LOAD_RATE[$target]=$(timeout "$RUN_TIMEOUT" "$BENCH" --endpoints "127.0.0.1:$client" \
        --val-size "$VAL_SIZE" --json --clients 100 --conns 10 --total "$LARGE_KEYS" \
        --key-space-size "$LARGE_KEYS" --sequential-keys put | jq '.requests_per_sec | floor')
    kill -TERM "${PID[$target-large]}"
    wait "${PID[$target-large]}" 2>/dev/null || true
    DISK_BYTES[$target]=$(du -sb "$dir/data" | cut -f1)
    started=$(date +%s.%N)
    run_large
    local deadline=$((SECONDS + RUN_TIMEOUT))
    until ETCDCTL_API=3 "$ETCDCTL" --endpoints "127.0.0.1:$client" --dial-timeout 1s \
        get --keys-only --limit 1 key >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "$target did not serve within $RUN_TIMEOUT s of its restart" >&2
            exit 1
        fi
        sleep 0.05
    done
    RESTART_SECS[$target]=$(awk -v now="$(date +%s.%N)" -v then="$started" 'BEGIN { printf "%.3f", now - then }')
    kill -TERM "${PID[$target-large]}"
    wait "${PID[$target-large]}" 2>/dev/null || true
    unset "PID[$target-large]"
    echo "$target: $LARGE_KEYS keys loaded at ${LOAD_RATE[$target]} puts/s, ${DISK_BYTES[$target]} bytes on disk, restart to serving ${RESTART_SECS[$target]} s"
}
large_store etcd "$ETCD"
large_store ballast "$BALLAST"

# ---------------------------------------------------------------- report

# median over the rounds of one field for one target and workload.
median() {
    jq -s --arg t "$1" --arg l "$2" "
        [.[] | select(.target == \$t and .label == \$l) | $3] | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end" "$RESULTS"
}

ratio() {
    jq -rn --argjson a "$1" --argjson b "$2" \
        'if $a == null or $b == null or $b == 0 then "n/a" else ($a / $b * 100 | round / 100) end'
}

fmt() {
    jq -rn --argjson v "$1" --argjson digits "$2" \
        'if $v == null then "n/a" else ($v * pow(10; $digits) | round / pow(10; $digits)) end'
}

mib() {
    jq -n --argjson kib "$1" '$kib / 1024 | . * 10 | round / 10'
}

disk_device=$(df --output=source "$WORK" | tail -n 1)
fs_type=$(df --output=fstype "$WORK" | tail -n 1)
disk_facts=$(lsblk -dno MODEL,SIZE,ROTA "$disk_device" 2>/dev/null |
    awk '{ rota = $NF; $NF = ""; print $0 (rota == 1 ? "rotational" : "non-rotational") " as the kernel reports it" }' || true)
# The knobs that change what is measured (not where the report goes).
overrides=$(env | grep '^BENCH_' | grep -v '^BENCH_\(OUT\|KEEP\)=' | sort | tr '\n' ' ' || true)
if ballast_revision=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD -- . || ballast_revision+=" with uncommitted changes"
else
    ballast_revision="not a git checkout"
fi

mkdir -p "$(dirname "$OUT")"
# The ratio chart: one line per workload, drawn by ballast-bench next to the report.
CHART="$(dirname "$OUT")/benchmarks.svg"
for workload in "${ALL_WORKLOADS[@]}"; do
    IFS='|' read -r label _ _ <<<"$workload"
    printf '%s\t%s\t%s\n' "$label" \
        "$(ratio "$(median ballast "$label" "$(throughput_field "$label")")" "$(median etcd "$label" "$(throughput_field "$label")")")" \
        "$(ratio "$(median ballast "$label" .latency_ms.p99)" "$(median etcd "$label" .latency_ms.p99)")"
done >"$WORK/ratios.tsv"
"$BENCH" chart --input "$WORK/ratios.tsv" --output "$CHART"

{
    echo "# Benchmarks"
    echo
    echo "Written by \`benches/compare.sh\`; rerun it rather than editing this page."
    echo "Every figure is a median over $ROUNDS rounds in which each workload ran"
    echo "against etcd, then Ballast, in turn."
    echo
    echo "## Ballast / etcd"
    echo
    echo "One member of each, then three members of each on loopback (the \`3m-\`"
    echo "workloads, clients spread over the members); fsync on, same filesystem."
    echo "Throughput above 1 and latency or memory below 1 favour Ballast."
    echo
    echo "![Ballast / etcd: throughput and p99 latency per workload]($(basename "$CHART"))"
    echo
    echo "| workload | throughput | p50 latency | p99 latency |"
    echo "| --- | --- | --- | --- |"
    for workload in "${ALL_WORKLOADS[@]}"; do
        IFS='|' read -r label description _ <<<"$workload"
        row="| $label: $description"
        for field in "$(throughput_field "$label")" .latency_ms.p50 .latency_ms.p99; do
            row+=" | $(ratio "$(median ballast "$label" "$field")" "$(median etcd "$label" "$field")")"
        done
        echo "$row |"
    done
    echo
    echo "With $LARGE_KEYS keys of $VAL_SIZE bytes (loaded by 100 clients over 10 conns,"
    echo "then the member stopped with SIGTERM), Ballast / etcd:"
    echo
    echo "- on-disk size of the data dir: $(ratio "${DISK_BYTES[ballast]}" "${DISK_BYTES[etcd]}") (etcd $(mib $((DISK_BYTES[etcd] / 1024))) MiB, Ballast $(mib $((DISK_BYTES[ballast] / 1024))) MiB);"
    echo "- restart to the first answered Range: $(ratio "${RESTART_SECS[ballast]}" "${RESTART_SECS[etcd]}") (etcd $(fmt "${RESTART_SECS[etcd]}" 2) s, Ballast $(fmt "${RESTART_SECS[ballast]}" 2) s);"
    echo "- load rate: $(ratio "${LOAD_RATE[ballast]}" "${LOAD_RATE[etcd]}") (etcd ${LOAD_RATE[etcd]} puts/s, Ballast ${LOAD_RATE[ballast]} puts/s)."
    echo
    for load in $CHECK_PERF_LOADS; do
        echo "\`etcdctl check perf --load=$load\` against the three members of each (etcdctl 3.4's verdict lines):"
        echo
        echo "- etcd: ${CHECK_PERF[etcd-$load]}"
        echo "- Ballast: ${CHECK_PERF[ballast-$load]}"
        echo
    done
    echo "Peak RSS (VmHWM over the runs), Ballast / etcd:"
    echo
    echo "- one member: $(ratio "${RSS_KIB[ballast1]}" "${RSS_KIB[etcd1]}") (etcd $(mib "${RSS_KIB[etcd1]}") MiB, Ballast $(mib "${RSS_KIB[ballast1]}") MiB);"
    echo "- three members, the largest member of each: $(ratio "${RSS_KIB[ballast3]}" "${RSS_KIB[etcd3]}") (etcd $(mib "${RSS_KIB[etcd3]}") MiB, Ballast $(mib "${RSS_KIB[ballast3]}") MiB)."
    echo
    echo "## Absolute numbers"
    echo
    echo "Requests per second and latency in milliseconds; errors summed over the rounds."
    echo
    echo "| workload | server | req/s | p50 | p90 | p99 | p99.9 | max | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for workload in "${ALL_WORKLOADS[@]}"; do
        IFS='|' read -r label _ _ <<<"$workload"
        for target in "${TARGETS[@]}"; do
            row="| $label | $target | $(fmt "$(median "$target" "$label" .requests_per_sec)" 0)"
            for q in p50 p90 p99 '"p99.9"' max; do
                row+=" | $(fmt "$(median "$target" "$label" ".latency_ms.$q")" 2)"
            done
            errors=$(jq -s --arg t "$target" --arg l "$label" \
                '[.[] | select(.target == $t and .label == $l) | .errors] | add' "$RESULTS")
            echo "$row | $errors |"
        done
    done
    echo
    echo "Watch fan-out: events delivered to the watchers per second, from the first put"
    echo "sent to the last event received (every watcher receives every put's event);"
    echo "events summed over the rounds, the rest medians."
    echo
    echo "| workload | server | events/s | events delivered | events expected | seconds |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for workload in "${ALL_WORKLOADS[@]}"; do
        IFS='|' read -r label _ _ <<<"$workload"
        [ "$(throughput_field "$label")" = .events_per_sec ] || continue
        for target in "${TARGETS[@]}"; do
            row="| $label | $target | $(fmt "$(median "$target" "$label" .events_per_sec)" 0)"
            for field in .events_delivered .events_expected; do
                row+=" | $(jq -s --arg t "$target" --arg l "$label" \
                    "[.[] | select(.target == \$t and .label == \$l) | $field] | add" "$RESULTS")"
            done
            echo "$row | $(fmt "$(median "$target" "$label" .fanout_duration_secs)" 2) |"
        done
    done
    echo
    echo "Throughput per round (req/s; events/s for watch fan-out), to show the spread:"
    echo
    header="| workload | server |"
    rule="| --- | --- |"
    for round in $(seq 1 "$ROUNDS"); do
        header+=" round $round |"
        rule+=" --- |"
    done
    echo "$header"
    echo "$rule"
    for workload in "${ALL_WORKLOADS[@]}"; do
        IFS='|' read -r label _ _ <<<"$workload"
        for target in "${TARGETS[@]}"; do
            jq -rs --arg t "$target" --arg l "$label" \
                "\"| \\(\$l) | \\(\$t) | \" + ([.[] | select(.target == \$t and .label == \$l) | $(throughput_field "$label") | floor | tostring] | join(\" | \")) + \" |\"" \
                "$RESULTS"
        done
    done
    notes=$(jq -rs '[.[] | select(.notes != {}) | "\(.target) \(.label) round \(.round): " + (.notes | to_entries | map("\(.value) \(.key)") | join(", "))] | .[]' "$RESULTS")
    errors=$(jq -rs '[.[] | select(.errors_by_message != {}) | "\(.target) \(.label) round \(.round): " + (.errors_by_message | to_entries | map("\(.value) × \(.key)") | join(", "))] | .[]' "$RESULTS")
    if [ -n "$notes$errors" ]; then
        echo
        echo "Notes and errors reported by ballast-bench:"
        echo
        printf '%s\n' "$notes" "$errors" | sed '/^$/d; s/^/- /'
    fi
    echo
    echo "## How it was run"
    echo
    echo "\`\`\`"
    echo "${overrides}${COMMAND}"
    echo "\`\`\`"
    echo
    echo "Each run is \`ballast-bench --endpoints <server> --val-size $VAL_SIZE --json <workload flags>\`"
    echo "with these workload flags:"
    echo
    for workload in "${ALL_WORKLOADS[@]}"; do
        IFS='|' read -r label _ args <<<"$workload"
        echo "- $label: \`$args\`"
    done
    echo
    echo "The range and txn-mixed runs first write their $READ_KEYS keys (not timed)."
    echo "The watch runs open their watch streams and wait for every watcher's \`created\`"
    echo "before the clock starts; the fan-out run then waits, after its last put, until"
    echo "every watcher received every event."
    echo "Both servers run with their default flags, and keep their data from one"
    echo "run to the next. The whole run took $elapsed s of measuring."
    echo
    echo "## Machine"
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| date (UTC) | $(date -u '+%Y-%m-%d %H:%M') |"
    echo "| CPU | $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1) |"
    echo "| memory | $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| kernel | $(uname -sr) |"
    echo "| load average (1, 5, 15 min) | $load_before before, $load_after after the run |"
    echo "| disk | $disk_device ($fs_type), ${disk_facts:-unknown model} |"
    echo "| rustc | $(rustc --version) |"
    echo "| etcd | $("$ETCD" --version | head -n 1 | sed 's/^etcd Version: //') ($("$ETCD" --version | sed -n 's/^Go Version: //p')) |"
    echo "| Ballast | $ballast_revision |"
    echo
    echo "## Profiling: what we found and changed"
    echo
    cat "$ROOT/benches/profiling.md"
} >"$OUT"
echo "wrote $OUT"
