#!/usr/bin/env bash
# scripts/bench.sh — Canopy vs nats-server, measured interleaved on this machine.
#
# For every scenario the script runs N rounds; each round starts a FRESH canopy-server and
# a FRESH nats-server (one after the other, alternating which goes first) on free loopback
# ports, drives them with `canopy bench --json`, and stops them. It then prints, per
# scenario, the median for each server, the ratio canopy/nats-server, the load generator's
# CPU share (share of one core used by `canopy bench`; near 100% means the client, not the
# server, may be the bottleneck) and the server's CPU nanoseconds per message.
#
# Scenarios (128-byte payloads):
#   pubsub 1:1     1 publisher, 1 subscriber          metric: delivered msgs/s   (higher is better)
#   fan-out 1:5    1 publisher, 5 subscribers          metric: delivered msgs/s   (higher is better)
#   pub-only       1 publisher, no subscriber          metric: published msgs/s   (higher is better)
#   req/rep p50    1 requester, 1 responder            metric: latency in us      (lower is better)
#   req/rep p99    (same runs as p50)                  metric: latency in us      (lower is better)
#   idle conns     1000 raw connections, CONNECT+PING  metric: server VmRSS growth, bytes/conn (lower)
#
# Usage: scripts/bench.sh [--rounds N] [--msgs N] [--quick] [--async-nats] [--keep-logs]
#   --rounds N     rounds per scenario (default 5)
#   --msgs N       messages per pub/sub round (default 1000000; fan-out uses N/2, pub-only 5N,
#                  request/reply N/50 requests)
#   --quick        2 rounds, 200000 msgs (smoke run)
#   --async-nats   drive pub/sub with async-nats clients instead of the lean raw-protocol
#                  clients (`canopy bench --raw`, the default: async-nats alone needs more CPU
#                  per message than the servers do and would measure itself)
#   --keep-logs    keep server logs and per-round JSON in the temp dir and print its path
# Environment:
#   CANOPY_SERVER  canopy-server binary (default target/release/canopy-server). When it is
#                  missing only nats-server is measured, and the script says so.
#   NATS_SERVER    nats-server binary (default /usr/sbin/nats-server)
#   CANOPY         canopy CLI (default target/release/canopy; built with cargo if missing)
#
# Caveats: client and servers share the machine's cores, so absolute numbers depend on the
# load generator; compare ratios, and watch the CPU columns. Runs are interleaved so that
# background noise hits both servers alike.
set -euo pipefail

ROUNDS=5
MSGS=1000000
RAW=--raw
CLIENT=raw
KEEP=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
        --msgs) MSGS=${2:?--msgs needs a value}; shift 2 ;;
        --quick) ROUNDS=2; MSGS=200000; shift ;;
        --async-nats) RAW=; CLIENT=async-nats; shift ;;
        --keep-logs) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$ROUNDS$MSGS" in *[!0-9]*) echo "bench.sh: --rounds and --msgs take integers" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CANOPY_SERVER=${CANOPY_SERVER:-target/release/canopy-server}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
command -v jq >/dev/null || { echo "bench.sh: jq is required" >&2; exit 1; }
[ -x "$NATS_SERVER" ] || { echo "bench.sh: $NATS_SERVER not found (apt-get install nats-server)" >&2; exit 1; }

if [ -z "${CANOPY:-}" ]; then
    CANOPY=target/release/canopy
    if [ ! -x "$CANOPY" ]; then
        echo "bench.sh: building the canopy CLI (cargo build --release -p canopy-cli)" >&2
        cargo build --release -p canopy-cli >&2
        CANOPY=${CARGO_TARGET_DIR:-target}/release/canopy
    fi
fi
[ -x "$CANOPY" ] || { echo "bench.sh: canopy CLI not found at $CANOPY" >&2; exit 1; }

SERVERS="nats"
if [ -x "$CANOPY_SERVER" ]; then
    SERVERS="canopy nats"
else
    echo "NOTE: $CANOPY_SERVER not found: benchmarking nats-server only (set CANOPY_SERVER)." >&2
fi

# 1000 idle connections plus the servers' own descriptors need a higher fd limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/canopy-bench.XXXXXX")
SRV_PID=
cleanup() {
    if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
    if [ "$KEEP" = 1 ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A loopback port below the kernel's ephemeral range (so no client socket holds it) that
# no socket uses; `ss` when available, else a bash /dev/tcp probe.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local p lo=10000 span=$((EPHEMERAL_LOW - 10000))
    [ "$span" -gt 1000 ] || { lo=20000; span=10000; }
    while :; do
        p=$((lo + (RANDOM * 32768 + RANDOM) % span))
        if command -v ss >/dev/null; then
            [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] && { echo "$p"; return; }
        elif ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"; return
        fi
    done
}

# start_server KIND TAG: sets SRV_PID and SRV_URL. Retries on another port if the server
# exits early (e.g. the port was taken between the probe and the bind).
start_server() {
    local kind=$1 tag=$2 bin port i attempt
    case "$kind" in canopy) bin=$CANOPY_SERVER ;; *) bin=$NATS_SERVER ;; esac
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        "$bin" -a 127.0.0.1 -p "$port" >"$WORK/$kind-$tag.log" 2>&1 &
        SRV_PID=$!
        SRV_URL="nats://127.0.0.1:$port"
        for i in $(seq 1 200); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
            if ! kill -0 "$SRV_PID" 2>/dev/null; then break; fi
            sleep 0.05
        done
        stop_server
    done
    echo "bench.sh: $kind did not start (last port $port); log:" >&2
    cat "$WORK/$kind-$tag.log" >&2
    return 1
}

stop_server() {
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=
}

# record SCENARIO METRIC KIND VALUE: one value per line per (scenario, metric, server).
record() { echo "$4" >>"$WORK/$1.$2.$3"; }

median() { # file → median, or "-" when empty
    [ -s "$1" ] || { echo -; return; }
    sort -g "$1" | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# run_scenario NAME ARGS...: one round of NAME against each server.
run_scenario() {
    local name=$1 round=$2 order=$3; shift 3
    local kind json
    for kind in $order; do
        if ! start_server "$kind" "$name-$round"; then
            record "$name" fail "$kind" 1; continue
        fi
        if json=$("$CANOPY" -s "$SRV_URL" bench "$@" --server-pid "$SRV_PID" --json 2>"$WORK/$kind-$name-$round.err"); then
            echo "$json" >"$WORK/$kind-$name-$round.json"
            extract "$name" "$kind" "$json"
        else
            echo "  round $round $name on $kind FAILED: $(tail -n 3 "$WORK/$kind-$name-$round.err")" >&2
            record "$name" fail "$kind" 1
        fi
        stop_server
    done
}

# Pull the scenario's metrics out of one report.
extract() {
    local name=$1 kind=$2 json=$3 v
    record "$name" cpu "$kind" "$(jq -r '.client_cpu.share * 100' <<<"$json")"
    v=$(jq -r '.server_cpu.ns_per_msg // empty' <<<"$json"); [ -n "$v" ] && record "$name" srvns "$kind" "$v"
    case "$name" in
        pubsub|fanout)
            v=$(jq -r '.sub.msgs_per_sec' <<<"$json")
            if [ "$(jq -r '.sub.msgs < .sub.expected' <<<"$json")" = true ]; then
                echo "  WARNING: $kind lost messages in $name: $(jq -r '"\(.sub.msgs)/\(.sub.expected)"' <<<"$json")" >&2
                record "$name" lost "$kind" 1
            fi
            record "$name" value "$kind" "$v" ;;
        pubonly) v=$(jq -r '.pub.msgs_per_sec' <<<"$json"); record "$name" value "$kind" "$v" ;;
        request)
            v=$(jq -r '.request.p50_us' <<<"$json"); record "$name" value "$kind" "$v"
            record "${name}99" value "$kind" "$(jq -r '.request.p99_us' <<<"$json")"
            record "${name}99" cpu "$kind" "$(jq -r '.client_cpu.share * 100' <<<"$json")" ;;
        idle) v=$(jq -r '.idle.bytes_per_conn // empty' <<<"$json"); record "$name" value "$kind" "$v" ;;
    esac
    printf '  %-8s %-7s %s\n' "$name" "$kind" "$v" >&2
}

REQS=$((MSGS / 50)); [ "$REQS" -lt 1000 ] && REQS=1000
echo "canopy bench: rounds=$ROUNDS msgs=$MSGS client=$CLIENT servers=[$SERVERS] cores=$(nproc)" >&2
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which server goes first so drift and warm-up effects cancel.
    if [ $((round % 2)) = 1 ]; then order=$SERVERS; else order=$(echo "$SERVERS" | awk '{for(i=NF;i>0;i--) printf "%s%s", $i, (i>1?" ":"")}'); fi
    echo "round $round/$ROUNDS (order: $order)" >&2
    run_scenario pubsub "$round" "$order" canopy.bench --pub 1 --sub 1 --msgs "$MSGS" --size 128 $RAW
    run_scenario fanout "$round" "$order" canopy.bench --pub 1 --sub 5 --msgs $((MSGS / 2)) --size 128 $RAW
    run_scenario pubonly "$round" "$order" canopy.bench --pub 1 --sub 0 --msgs $((MSGS * 5)) --size 128 $RAW
    run_scenario request "$round" "$order" canopy.bench --request --clients 1 --msgs "$REQS" --size 128
    run_scenario idle "$round" "$order" --idle 1000 --settle 1s
done

# Table.
echo
printf '%-14s %-10s %14s %14s %8s %-7s %13s %15s\n' \
    scenario unit canopy nats-server ratio better "client CPU" "server ns/msg"
printf '%-14s %-10s %14s %14s %8s %-7s %13s %15s\n' \
    "" "" "(median)" "(median)" "c/n" "" "(c / n)" "(c / n)"
row() { # name label unit better
    local name=$1 label=$2 unit=$3 better=$4 c n ratio cc cn sc sn
    c=$(median "$WORK/$name.value.canopy"); n=$(median "$WORK/$name.value.nats")
    ratio=-; if [ "$c" != - ] && [ "$n" != - ]; then ratio=$(awk -v c="$c" -v n="$n" 'BEGIN{ if (n>0) printf "%.2f", c/n; else print "-" }'); fi
    cc=$(median "$WORK/$name.cpu.canopy"); cn=$(median "$WORK/$name.cpu.nats")
    sc=$(median "$WORK/${name%99}.srvns.canopy"); sn=$(median "$WORK/${name%99}.srvns.nats")
    fmt() { [ "$1" = - ] && { echo -; return; }; awk -v v="$1" -v d="$2" 'BEGIN{printf "%.*f", d, v}'; }
    local dec=0; [ "$unit" = us ] && dec=1
    printf '%-14s %-10s %14s %14s %8s %-7s %13s %15s\n' "$label" "$unit" \
        "$(fmt "$c" $dec)" "$(fmt "$n" $dec)" "$ratio" "$better" \
        "$(fmt "$cc" 0)% / $(fmt "$cn" 0)%" "$(fmt "$sc" 0) / $(fmt "$sn" 0)"
}
row pubsub    "pubsub 1:1"  msgs/s  higher
row fanout    "fan-out 1:5" msgs/s  higher
row pubonly   "pub-only"    msgs/s  higher
row request   "req/rep p50" us      lower
row request99 "req/rep p99" us      lower
row idle      "idle conns"  B/conn  lower
echo
echo "client CPU = share of one core used by 'canopy bench' ($CLIENT clients) during the run; near 100% means the load generator may be the limit."
echo "server ns/msg = server CPU time per delivered message (per published one for pub-only, per request for req/rep)."
for f in "$WORK"/*.fail.* "$WORK"/*.lost.*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    case "$b" in *.fail.*) what="failed round(s)" ;; *) what="round(s) with lost messages" ;; esac
    echo "NOTE: ${b##*.} had $(wc -l <"$f") $what in ${b%%.*} (see --keep-logs)"
done
[ "$SERVERS" = nats ] && echo "NOTE: canopy-server ($CANOPY_SERVER) was not found; only nats-server was measured."
exit 0
