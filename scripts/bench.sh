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
# Two-server scenarios (both servers of the same implementation, configs in the temp dir):
#   leaf pub/sub   hub + leaf (leafnodes remote); publisher on the leaf, subscriber on the hub
#                                                      metric: delivered msgs/s   (higher is better)
#   leaf req p50   requester on the leaf, responder (`canopy reply`) on the hub
#   leaf req p99                                       metric: latency in us      (lower is better)
#   route pub/sub  2-server cluster (routes both ways); publisher on one member, subscriber
#                  on the other                        metric: delivered msgs/s   (higher is better)
#   Each round waits for the link (/leafz leafnodes >= 1 on the hub, /routez num_routes >= 1
#   on both members, and the route ids unchanged for 1.5 s, as a redial can replace the first
#   route) and then for one request/reply on the bench subject to cross the hop, so the
#   subscriber's interest is known on the publisher's side before the clock starts.
#   `canopy bench` runs one side only here: the publisher (`--raw --sub 0`) or the requester.
#   The hop subscriber is a small raw-protocol counter in Python (written to the temp dir);
#   the leaf requester's own local responder is kept out by a subscribe-deny permission on
#   the leaf's bench user, and the hub's /connz proves the hub's responder answered.
#   Server ns/msg for these rows is the CPU of BOTH servers; client CPU is the busier of
#   the two client processes (publisher, hop subscriber) or the requester.
# TLS scenarios (a throwaway CA, a server certificate for 127.0.0.1/localhost and a client
# certificate are made with the openssl CLI in the temp dir at run time):
#   tls pub/sub    one server with `tls { cert_file, key_file }` on the client port; publisher
#                  and subscriber both connect over TLS (1:1)
#                                                      metric: delivered msgs/s   (higher is better)
#                  `canopy bench` has no TLS, so both clients are small raw-protocol Python
#                  programs using the ssl module (the hop subscriber above, and a publisher
#                  that writes pre-encoded PUB batches after one request/reply warm-up).
#   tls leaf       as leaf pub/sub, but the hub's leafnodes listener has `tls { cert_file,
#                  key_file, ca_file, verify: true }` and the leaf's remote presents a client
#                  certificate (`tls { cert_file, key_file, ca_file }`); clients are plain
#                  TCP on both servers (publisher `canopy bench --raw` on the leaf)
#                                                      metric: delivered msgs/s   (higher is better)
# JetStream scenarios (each server started with `-js -sd DIR`, DIR in the temp dir, so both
# use file storage on the same disk with their default sync setting: nats-server 2.9.10
# syncs every 2 min, and so does canopy-server by default; neither fsyncs per message.
# `canopy bench --js MODE` drives them through async-nats on one connection):
#   js pub 128     async publish with acks, 256 in flight, 128 B   metric: msgs/s (higher)
#   js pub 1k      the same with 1 KiB payloads                    metric: msgs/s (higher)
#   js sync p50    publish and wait for the ack, one at a time     metric: latency us (lower)
#   js sync p99    (same runs as p50)
#   js fetch       N msgs stored first (untimed), then drained by a durable pull consumer
#                  with sequential fetches of 100 and an ack per message
#                                                                  metric: msgs/s (higher)
#   kv put p50/p99 sequential KV puts (1000 keys, history 1)       metric: latency us (lower)
#   kv get p50/p99 sequential KV gets of 1000 stored keys          metric: latency us (lower)
#   js rawpub 128  as js pub 128, but the publisher is `canopy bench --js pub --raw`: PUB
#                  frames with a reply subject each on a raw socket, acks read and checked
#                  by a minimal parser (async-nats needs more CPU per publish than Canopy)
#   js rawpub 1k   the same with 1 KiB payloads                    metric: msgs/s (higher)
#   js rawfetch    as js fetch, but the consumer is `canopy bench --js fetch --raw`: the
#                  same pulls of 100 and acks on a raw socket, each delivery checked by a
#                  minimal parser (async-nats hands each message and ack across tasks)
#                                                                  metric: msgs/s (higher)
# Clustered JetStream scenarios (issue 19; `--only jsr3` selects them all): a 3-member
# cluster of each implementation (server_name, cluster { name, listen, routes to the other
# two }, jetstream { store_dir }, http), fresh for every round; the script waits until
# every member's /jsz names the same meta leader of a 3-member group and the route sets are
# stable, then `canopy bench --js MODE --replicas 3`, connected to member 1, creates an R3
# file stream and waits until it has a leader and two current replicas. The stream leader
# is wherever the cluster puts it (each round prints it). Server ns/msg is the CPU of all
# three members together (`--server-pid P1,P2,P3`).
#   r3 pub 128     js pub 128 on the R3 stream                     metric: msgs/s (higher)
#   r3 pub 1k      js pub 1k on the R3 stream                      metric: msgs/s (higher)
#   r3 sync p50/p99 js sync on the R3 stream                       metric: latency us (lower)
#   r3 rawpub 128  js rawpub 128 on the R3 stream                  metric: msgs/s (higher)
#
# Usage: scripts/bench.sh [--rounds N] [--msgs N] [--quick] [--only LIST] [--async-nats] [--keep-logs]
#   --rounds N     rounds per scenario (default 5)
#   --msgs N       messages per pub/sub round (default 1000000; fan-out uses N/2, pub-only 5N,
#                  request/reply N/50 requests; leaf and route pub/sub use N; JetStream:
#                  js pub and fetch N/5 messages, sync publish and KV N/50 operations)
#   --quick        2 rounds, 200000 msgs (smoke run)
#   --only LIST    comma-separated scenarios to run: pubsub,fanout,pubonly,request,idle,
#                  leafpub,leafreq,routepub,tlspub,tlsleaf,jspub,jspub1k,jssync,jsfetch,
#                  kvput,kvget,jsrawpub,jsrawpub1k,jsrawfetch,jsr3pub,jsr3pub1k,jsr3sync,jsr3rawpub
#                  (default: all; tls-pubsub and tls-leaf are accepted as aliases of
#                  tlspub and tlsleaf; `js` selects the eight single-server JetStream
#                  ones, `jsr3` the four clustered ones)
#   --async-nats   drive pub/sub with async-nats clients instead of the lean raw-protocol
#                  clients (`canopy bench --raw`, the default: async-nats alone needs more CPU
#                  per message than the servers do and would measure itself). The hop
#                  scenarios always use raw pub/sub clients.
#   --keep-logs    keep server logs, configs and per-round JSON in the temp dir and print its path
# Environment:
#   CANOPY_SERVER  canopy-server binary (default target/release/canopy-server). When it is
#                  missing only nats-server is measured, and the script says so.
#   NATS_SERVER    nats-server binary (default /usr/sbin/nats-server)
#   CANOPY         canopy CLI (default target/release/canopy; built with cargo if missing)
#   CANOPY_EXTRA_CONF  config lines appended to Canopy's config in the TLS pub/sub scenario
#                  (e.g. 'producer_backoff: true' to measure the fast-producer stall)
#   CANOPY_CLUSTER_EXTRA  keys added inside Canopy's `cluster {}` blocks in the route scenario
#                  (e.g. 'compression: s2_fast' or 'pool_size: 3'; nats-server 2.9 gets none)
#   HOP_SIZE       payload bytes of the leaf and route pub/sub scenarios (default 128)
#   The two-server scenarios also need python3 and curl, the TLS ones also openssl
#   (skipped with a note otherwise).
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
ONLY=
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
        --msgs) MSGS=${2:?--msgs needs a value}; shift 2 ;;
        --quick) ROUNDS=2; MSGS=200000; shift ;;
        --async-nats) RAW=; CLIENT=async-nats; shift ;;
        --keep-logs) KEEP=1; shift ;;
        --only) ONLY=${2:?--only needs a list}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$ROUNDS$MSGS" in *[!0-9]*) echo "bench.sh: --rounds and --msgs take integers" >&2; exit 2 ;; esac
ALL_SCENARIOS="pubsub fanout pubonly request idle leafpub leafreq routepub tlspub tlsleaf jspub jspub1k jssync jsfetch kvput kvget jsrawpub jsrawpub1k jsrawfetch jsr3pub jsr3pub1k jsr3sync jsr3rawpub"
ONLY=${ONLY//tls-pubsub/tlspub}; ONLY=${ONLY//tls-leaf/tlsleaf}
# expand_group NAME MEMBERS: replace the group name NAME in --only by its scenarios.
expand_group() {
    case ",$ONLY," in
        *",$1,"*) ONLY=",$ONLY,"; ONLY=${ONLY//,$1,/,}; ONLY=${ONLY#,}; ONLY=${ONLY%,}; ONLY="${ONLY:+$ONLY,}$2" ;;
    esac
}
expand_group js jspub,jspub1k,jssync,jsfetch,kvput,kvget,jsrawpub,jsrawpub1k,jsrawfetch
expand_group jsr3 jsr3pub,jsr3pub1k,jsr3sync,jsr3rawpub
for s in ${ONLY//,/ }; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *) echo "bench.sh: unknown scenario $s (one of: $ALL_SCENARIOS)" >&2; exit 2 ;; esac
done
want() { [ -z "$ONLY" ] || case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

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

# The two-server scenarios need python3 (hop subscriber) and curl (monitoring endpoints).
HOPS=1
if ! command -v python3 >/dev/null || ! command -v curl >/dev/null; then
    HOPS=0
    if want leafpub || want leafreq || want routepub || want tlspub || want tlsleaf || want jsr3pub || want jsr3pub1k || want jsr3sync || want jsr3rawpub; then
        echo "NOTE: python3 or curl missing: skipping the leaf, route, TLS and clustered JetStream scenarios." >&2
    fi
fi
TLS=$HOPS
if [ "$TLS" = 1 ] && ! command -v openssl >/dev/null; then
    TLS=0
    if want tlspub || want tlsleaf; then echo "NOTE: openssl missing: skipping the TLS scenarios." >&2; fi
fi

# 1000 idle connections plus the servers' own descriptors need a higher fd limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/canopy-bench.XXXXXX")
SRV_PID=
SRV_JS=       # non-empty: start_server adds -js -sd $SRV_STORE (a fresh dir in $WORK)
SRV_STORE=
HOP_PIDS=
# Stop every process of the current two-server topology (hop clients first, then servers).
stop_topology() {
    local p
    for p in $HOP_PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $HOP_PIDS; do wait "$p" 2>/dev/null || true; done
    HOP_PIDS=
}
cleanup() {
    if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
    stop_topology
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
        local js=()
        if [ -n "$SRV_JS" ]; then
            SRV_STORE="$WORK/store-$kind-$tag"
            rm -rf "$SRV_STORE"; mkdir -p "$SRV_STORE"
            js=(-js -sd "$SRV_STORE")
        fi
        "$bin" -a 127.0.0.1 -p "$port" ${js[@]+"${js[@]}"} >"$WORK/$kind-$tag.log" 2>&1 &
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
    if [ -n "$SRV_STORE" ]; then rm -rf "$SRV_STORE"; SRV_STORE=; fi
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
        jspub|jspub1k|jsrawpub|jsrawpub1k|jsr3pub|jsr3pub1k|jsr3rawpub)
            v=$(jq -r '.pub.msgs_per_sec' <<<"$json"); record "$name" value "$kind" "$v" ;;
        jsfetch|jsrawfetch)
            v=$(jq -r '.sub.msgs_per_sec' <<<"$json")
            if [ "$(jq -r '.sub.msgs < .sub.expected' <<<"$json")" = true ]; then
                echo "  WARNING: $kind delivered too few messages in $name: $(jq -r '"\(.sub.msgs)/\(.sub.expected)"' <<<"$json")" >&2
                record "$name" lost "$kind" 1
            fi
            record "$name" value "$kind" "$v" ;;
        jssync|kvput|kvget|jsr3sync)
            v=$(jq -r '.request.p50_us' <<<"$json"); record "$name" value "$kind" "$v"
            record "${name}99" value "$kind" "$(jq -r '.request.p99_us' <<<"$json")"
            record "${name}99" cpu "$kind" "$(jq -r '.client_cpu.share * 100' <<<"$json")" ;;
    esac
    printf '  %-8s %-7s %s\n' "$name" "$kind" "$v" >&2
}

# ---- Two-server scenarios (leaf hop, route hop) ------------------------------------------

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
HOP_BODY=$(printf '%*s' 128 '' | tr ' ' r)   # 128-byte reply body of the hub's responder

# The hop subscriber: subscribes, answers ONE request on the bench subject (the warm-up
# exchange that proves the interest crossed the hop), then counts the raw publisher's MSG
# frames (fixed shape, lowercase payload, so a byte search finds exactly them) until it has
# EXPECTED or nothing arrives for IDLE seconds. Prints one JSON line. With a 7th argument
# (a CA file) it upgrades to TLS after the server's INFO, as NATS clients do.
write_hop_sub() {
    cat >"$WORK/hopsub.py" <<'PY'
import json, socket, sys, time
host, port, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3]
expected, idle, size = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
def fail(why):
    print(json.dumps({"error": why})); sys.exit(1)
try:
    s = socket.create_connection((host, port), timeout=15)
except OSError as e:
    fail("connect: %s" % e)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
buf = b""
def fill():
    global buf
    d = s.recv(1 << 16)
    if not d: fail("connection closed by server")
    buf += d
def line():
    global buf
    while b"\r\n" not in buf: fill()
    l, buf = buf.split(b"\r\n", 1)
    return l
try:
    if not line().startswith(b"INFO "): fail("no INFO from server")
    if len(sys.argv) > 7:  # the server says nothing more until the handshake: buf is empty
        import ssl
        s = ssl.create_default_context(cafile=sys.argv[7]).wrap_socket(s, server_hostname=host)
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"name":"bench hop sub",'
              b'"lang":"python-raw","version":"0","protocol":1}\r\nSUB ' + subject.encode() + b" 1\r\nPING\r\n")
    while True:  # warm-up: parse properly until one request is answered
        l = line()
        if l.startswith(b"MSG "):
            f = l.split()
            n = int(f[-1])
            while len(buf) < n + 2: fill()
            buf = buf[n + 2:]
            if len(f) == 5:
                s.sendall(b"PUB " + f[3] + b" 0\r\n\r\n")
                break
        elif l == b"PING": s.sendall(b"PONG\r\n")
        elif l.startswith(b"-ERR"): fail("server said " + l.decode(errors="replace"))
except socket.timeout:
    fail("no warm-up request within 15s")
except OSError as e:  # includes ssl.SSLError (handshake refused, unknown CA, ...)
    fail("before the run: %s" % e)
s.settimeout(idle)
tok = b"MSG " + subject.encode() + b" 1 " + str(size).encode() + b"\r\n"
keep = len(tok) - 1            # carried between reads so a frame split across reads counts
def scan(data, t, carried):    # occurrences of t not lying wholly inside the carried bytes
    return data.count(t, max(0, carried - len(t) + 1))
carry, chunk, count, first, last = b"", buf, 0, None, None
c0, w0 = time.process_time(), time.monotonic()
while True:
    data = carry + chunk
    n = scan(data, tok, len(carry))
    if n:
        last = time.monotonic()
        first = first or last
        count += n
    p = scan(data, b"PING\r\n", len(carry))
    if p: s.sendall(b"PONG\r\n" * p)
    if scan(data, b"-ERR", len(carry)): fail("server said -ERR during the run")
    carry = data[-keep:]
    if count >= expected: break
    try:
        chunk = s.recv(1 << 20)
    except socket.timeout:
        break
    if not chunk: fail("connection closed by server after %d msgs" % count)
secs = last - first if first is not None else 0.0
wall = time.monotonic() - w0
print(json.dumps({"msgs": count, "expected": expected, "secs": secs,
                  "msgs_per_sec": count / secs if secs > 0 else 0.0,
                  "cpu_share": (time.process_time() - c0) / wall if wall > 0 else 0.0}))
PY
}

# The TLS publisher: connects over TLS (upgrading after INFO), sends one request on SUBJECT
# until the subscriber answers it (so its interest is in place), then writes COUNT pre-encoded
# PUB frames of SIZE lowercase bytes in ~64 KiB batches and PING/PONG-flushes. Prints one
# JSON line with its publish rate and CPU share.
write_tls_pub() {
    cat >"$WORK/tlspub.py" <<'PY'
import json, socket, ssl, sys, time
host, port, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
count, size, cafile = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def fail(why):
    print(json.dumps({"error": why})); sys.exit(1)
buf = b""
def fill():
    global buf
    d = s.recv(1 << 16)
    if not d: fail("connection closed by server")
    buf += d
def line():
    global buf
    while b"\r\n" not in buf: fill()
    l, buf = buf.split(b"\r\n", 1)
    return l
def until(pred):  # read frames (answering PINGs) until pred(line) is true
    global buf
    while True:
        l = line()
        if l.startswith(b"MSG "):
            n = int(l.split()[-1])
            while len(buf) < n + 2: fill()
            buf = buf[n + 2:]
        if l == b"PING": s.sendall(b"PONG\r\n")
        elif l.startswith(b"-ERR"): fail("server said " + l.decode(errors="replace"))
        if pred(l): return
try:
    s = socket.create_connection((host, port), timeout=15)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if not line().startswith(b"INFO "): fail("no INFO from server")
    s = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=host)
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"name":"bench tls pub",'
              b'"lang":"python-raw","version":"0","protocol":1}\r\nSUB _INBOX.tlspub 1\r\nPING\r\n')
    until(lambda l: l == b"PONG")
    s.settimeout(0.25)
    for attempt in range(60):  # warm-up: one request answered by the subscriber
        s.sendall(b"PUB " + subject + b" _INBOX.tlspub 4\r\nwarm\r\n")
        try:
            until(lambda l: l.startswith(b"MSG _INBOX.tlspub "))
            break
        except socket.timeout:
            continue
    else:
        fail("no reply from the subscriber within 15s")
    s.settimeout(30)
    one = b"PUB " + subject + b" " + str(size).encode() + b"\r\n" + b"p" * size + b"\r\n"
    per = max(1, (64 << 10) // len(one))
    batch = one * per
    c0, w0 = time.process_time(), time.monotonic()
    left = count
    while left > 0:
        n = min(left, per)
        s.sendall(batch if n == per else one * n)
        left -= n
    s.sendall(b"PING\r\n")
    until(lambda l: l == b"PONG")
except OSError as e:  # includes ssl.SSLError and socket.timeout
    fail("%s" % e)
wall = time.monotonic() - w0
print(json.dumps({"msgs": count, "secs": wall, "msgs_per_sec": count / wall if wall > 0 else 0.0,
                  "cpu_share": (time.process_time() - c0) / wall if wall > 0 else 0.0}))
PY
}

# make_pki DIR: a throwaway CA (ca.pem), a server certificate for 127.0.0.1/localhost
# (server.pem/.key, usable for server and client auth) and a client certificate
# (client.pem/.key), all P-256, valid for one day.
make_pki() {
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj "/CN=canopy bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || return 1
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/server.ext"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:bench-leaf\n' >"$d/client.ext"
    local n
    for n in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench-$n" \
            -keyout "$d/$n.key" -out "$d/$n.csr" 2>/dev/null || return 1
        openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
            -extfile "$d/$n.ext" -out "$d/$n.pem" 2>/dev/null || return 1
    done
}

# n distinct free ports, space separated.
free_ports() {
    local out=" " p
    while [ "$(wc -w <<<"$out")" -lt "$1" ]; do
        p=$(free_port)
        case "$out" in *" $p "*) ;; *) out="$out$p " ;; esac
    done
    echo $out
}

# wait_port PID PORT: until PORT accepts (true) or PID exits / 10 s pass (false).
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# wait_json URL JQ-FILTER: poll a monitoring endpoint until the filter is true (10 s).
wait_json() {
    local i
    for i in $(seq 1 100); do
        if [ "$(curl -s --max-time 1 "$1" 2>/dev/null | jq -r "$2" 2>/dev/null)" = true ]; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Route ids of both cluster members, e.g. "[1]|[6]".
route_ids() {
    local h ids out=
    for h in "$@"; do
        ids=$(curl -s --max-time 1 "http://127.0.0.1:$h/routez" 2>/dev/null | jq -c '[.routes[]?.rid] | sort' 2>/dev/null)
        out="$out|${ids:-?}"
    done
    echo "$out"
}

# wait_stable_routes HTTP_PORT...: the set of routes on every member unchanged for 1.5 s.
# With routes configured both ways, the member whose first dial failed (its peer was not up
# yet) redials after ~1 s and the duplicate is then resolved; measure only after that.
wait_stable_routes() {
    local i prev cur
    prev=$(route_ids "$@")
    for i in 1 2 3 4 5 6; do
        sleep 1.5
        cur=$(route_ids "$@")
        case "$cur" in *"[]"*|*"?"*) ;; *) [ "$cur" = "$prev" ] && return 0 ;; esac
        echo "  route set changed while settling: $prev -> $cur" >&2
        prev=$cur
    done
    return 1
}

# start_topology KIND TAG SHAPE [auth]: two linked servers of KIND. SHAPE leaf: A is the leaf
# (remote to B), B the hub; tlsleaf: the same over TLS (B verifies A's client certificate);
# route: A and B form cluster "bench" with routes both ways.
# "auth" gives A a user bench/bench that may not subscribe to canopy.hop.req. Sets A_PID,
# A_URL, B_PID, B_URL, B_HTTP; logs/configs are $WORK/KIND-TAG-{a,b}.{conf,log}.
start_topology() {
    local kind=$1 tag=$2 shape=$3 auth=${4:-} bin attempt ports pa ha xa pb hb xb base ok
    case "$kind" in canopy) bin=$CANOPY_SERVER ;; *) bin=$NATS_SERVER ;; esac
    base="$WORK/$kind-$tag"
    for attempt in 1 2 3; do
        read -r pa ha xa pb hb xb <<<"$(free_ports 6)"
        printf 'server_name: bench-a\nlisten: "127.0.0.1:%s"\nhttp: "127.0.0.1:%s"\n' "$pa" "$ha" >"$base-a.conf"
        printf 'server_name: bench-b\nlisten: "127.0.0.1:%s"\nhttp: "127.0.0.1:%s"\n' "$pb" "$hb" >"$base-b.conf"
        if [ "$shape" = leaf ]; then
            echo "leafnodes { listen: \"127.0.0.1:$xb\" }" >>"$base-b.conf"
            echo "leafnodes { remotes: [ { url: \"nats-leaf://127.0.0.1:$xb\" } ] }" >>"$base-a.conf"
        elif [ "$shape" = tlsleaf ]; then
            echo "leafnodes { listen: \"127.0.0.1:$xb\", tls { cert_file: \"$WORK/server.pem\", key_file: \"$WORK/server.key\", ca_file: \"$WORK/ca.pem\", verify: true } }" >>"$base-b.conf"
            echo "leafnodes { remotes: [ { url: \"nats-leaf://127.0.0.1:$xb\", tls { cert_file: \"$WORK/client.pem\", key_file: \"$WORK/client.key\", ca_file: \"$WORK/ca.pem\" } } ] }" >>"$base-a.conf"
        else
            local extra=
            [ "$kind" = canopy ] && [ -n "${CANOPY_CLUSTER_EXTRA:-}" ] && extra=", $CANOPY_CLUSTER_EXTRA"
            echo "cluster { name: bench, listen: \"127.0.0.1:$xa\", routes: [\"nats-route://127.0.0.1:$xb\"] $extra }" >>"$base-a.conf"
            echo "cluster { name: bench, listen: \"127.0.0.1:$xb\", routes: [\"nats-route://127.0.0.1:$xa\"] $extra }" >>"$base-b.conf"
        fi
        if [ -n "$auth" ]; then
            echo 'authorization { users: [ { user: bench, password: bench, permissions: { subscribe: { deny: ["canopy.hop.req"] } } } ] }' >>"$base-a.conf"
        fi
        "$bin" -c "$base-b.conf" >"$base-b.log" 2>&1 &
        B_PID=$!; HOP_PIDS="$HOP_PIDS $B_PID"
        ok=0
        if wait_port "$B_PID" "$pb"; then
            "$bin" -c "$base-a.conf" >"$base-a.log" 2>&1 &
            A_PID=$!; HOP_PIDS="$HOP_PIDS $A_PID"
            if wait_port "$A_PID" "$pa"; then
                if [ "$shape" != route ]; then
                    wait_json "http://127.0.0.1:$hb/leafz" '.leafnodes >= 1' && ok=1
                else
                    wait_json "http://127.0.0.1:$hb/routez" '.num_routes >= 1' &&
                        wait_json "http://127.0.0.1:$ha/routez" '.num_routes >= 1' &&
                        wait_stable_routes "$ha" "$hb" && ok=1
                fi
            fi
        fi
        if [ "$ok" = 1 ]; then
            A_URL="nats://127.0.0.1:$pa"; B_URL="nats://127.0.0.1:$pb"; B_HTTP="http://127.0.0.1:$hb"
            return 0
        fi
        stop_topology
    done
    echo "bench.sh: $kind $shape topology did not come up; logs:" >&2
    tail -n 20 "$base-a.log" "$base-b.log" >&2 2>/dev/null || true
    return 1
}

# CPU clock ticks (user + system) of the given processes so far.
proc_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# warm_up URL SUBJECT [FLAGS...]: one request/reply on SUBJECT must succeed (10 s).
warm_up() {
    local url=$1 subj=$2 i; shift 2
    for i in $(seq 1 40); do
        "$CANOPY" -s "$url" "$@" req --timeout 1s "$subj" warm >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# hop_fail NAME KIND ROUND WHY
hop_fail() { echo "  round $3 $1 on $2 FAILED: $4" >&2; record "$1" fail "$2" 1; }

# Publisher (`canopy bench --raw --sub 0`) on A, hop subscriber on B.
hop_pubsub() {
    local name=$1 kind=$2 round=$3 subj=canopy.hop.pub sub_pid t0 t1 json sub v cpu f="$WORK/$kind-$name-$round"
    python3 "$WORK/hopsub.py" 127.0.0.1 "${B_URL##*:}" "$subj" "$MSGS" 5 "${HOP_SIZE:-128}" >"$f.sub.json" 2>"$f.sub.err" &
    sub_pid=$!; HOP_PIDS="$sub_pid $HOP_PIDS"
    if ! warm_up "$A_URL" "$subj"; then
        hop_fail "$name" "$kind" "$round" "no reply from the subscriber across the hop ($(head -c 300 "$f.sub.json" "$f.sub.err"))"
        return
    fi
    t0=$(proc_ticks "$A_PID" "$B_PID")
    if ! json=$("$CANOPY" -s "$A_URL" bench "$subj" --pub 1 --sub 0 --msgs "$MSGS" --size "${HOP_SIZE:-128}" --raw --json 2>"$f.err"); then
        hop_fail "$name" "$kind" "$round" "publisher: $(tail -n 3 "$f.err")"
        return
    fi
    wait "$sub_pid" 2>/dev/null || true
    HOP_PIDS=${HOP_PIDS/"$sub_pid "/}
    t1=$(proc_ticks "$A_PID" "$B_PID")
    echo "$json" >"$f.json"
    sub=$(cat "$f.sub.json")
    if ! jq -e '.msgs' <<<"$sub" >/dev/null 2>&1; then
        hop_fail "$name" "$kind" "$round" "subscriber: ${sub:-no output} $(head -c 300 "$f.sub.err")"
        return
    fi
    v=$(jq -r '.msgs_per_sec' <<<"$sub")
    if [ "$(jq -r '.msgs < .expected' <<<"$sub")" = true ]; then
        echo "  WARNING: $kind lost messages in $name: $(jq -r '"\(.msgs)/\(.expected)"' <<<"$sub")" >&2
        record "$name" lost "$kind" 1
    fi
    record "$name" value "$kind" "$v"
    cpu=$(jq -rn --argjson p "$json" --argjson s "$sub" '[$p.client_cpu.share, $s.cpu_share] | max * 100')
    record "$name" cpu "$kind" "$cpu"
    v=$(jq -r '.msgs' <<<"$sub")
    [ "$v" -gt 0 ] && record "$name" srvns "$kind" "$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$v" 'BEGIN{print t * 1e9 / hz / n}')"
    v=$(jq -r '.msgs_per_sec' <<<"$sub")
    printf '  %-8s %-7s %s\n' "$name" "$kind" "$v" >&2
}

# Requester (`canopy bench --request`, user bench on A) → responder (`canopy reply`) on B.
hop_request() {
    local name=$1 kind=$2 round=$3 subj=canopy.hop.req resp_pid t0 t1 json answered v f="$WORK/$kind-$name-$round"
    "$CANOPY" -s "$B_URL" reply "$subj" "$HOP_BODY" >"$f.reply.log" 2>&1 &
    resp_pid=$!; HOP_PIDS="$resp_pid $HOP_PIDS"
    if ! warm_up "$A_URL" "$subj" --user bench --password bench; then
        hop_fail "$name" "$kind" "$round" "no reply from the hub's responder across the hop ($(tail -n 2 "$f.reply.log"))"
        return
    fi
    t0=$(proc_ticks "$A_PID" "$B_PID")
    if ! json=$("$CANOPY" -s "$A_URL" --user bench --password bench bench "$subj" --request --clients 1 \
        --msgs "$REQS" --size 128 --json 2>"$f.err"); then
        hop_fail "$name" "$kind" "$round" "requester: $(tail -n 3 "$f.err")"
        return
    fi
    t1=$(proc_ticks "$A_PID" "$B_PID")
    echo "$json" >"$f.json"
    # The hub's only client is the responder: its in_msgs are the replies it sent.
    answered=$(curl -s --max-time 2 "$B_HTTP/connz" | jq -r '[.connections[]?.in_msgs] | add // 0' 2>/dev/null || echo 0)
    if [ "${answered:-0}" -lt "$REQS" ]; then
        hop_fail "$name" "$kind" "$round" "the hub's responder answered $answered of $REQS requests (a responder on the leaf side answered?)"
        return
    fi
    v=$(jq -r '.request.p50_us' <<<"$json")
    record "$name" value "$kind" "$v"
    record "${name}99" value "$kind" "$(jq -r '.request.p99_us' <<<"$json")"
    record "$name" cpu "$kind" "$(jq -r '.client_cpu.share * 100' <<<"$json")"
    record "${name}99" cpu "$kind" "$(jq -r '.client_cpu.share * 100' <<<"$json")"
    record "$name" srvns "$kind" "$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN{print t * 1e9 / hz / n}')"
    printf '  %-8s %-7s %s\n' "$name" "$kind" "$v" >&2
}

# run_hop NAME ROUND ORDER: one round of a two-server scenario against each implementation.
run_hop() {
    local name=$1 round=$2 order=$3 kind shape=leaf auth=
    case "$name" in leafreq) auth=auth ;; routepub) shape=route ;; tlsleaf) shape=tlsleaf ;; esac
    for kind in $order; do
        if ! start_topology "$kind" "$name-$round" "$shape" "$auth"; then
            record "$name" fail "$kind" 1; continue
        fi
        case "$name" in
            leafreq) hop_request "$name" "$kind" "$round" ;;
            *) hop_pubsub "$name" "$kind" "$round" ;;
        esac
        stop_topology
    done
}

# run_tlspub NAME ROUND ORDER: one server per implementation with TLS on the client port;
# Python TLS publisher and subscriber (see write_tls_pub, write_hop_sub).
run_tlspub() {
    local name=$1 round=$2 order=$3 kind bin port attempt pid sub_pid t0 t1 pub sub v cpu subj=canopy.tls.pub f
    for kind in $order; do
        case "$kind" in canopy) bin=$CANOPY_SERVER ;; *) bin=$NATS_SERVER ;; esac
        f="$WORK/$kind-$name-$round"
        pid=
        for attempt in 1 2 3; do
            port=$(free_port)
            printf 'listen: "127.0.0.1:%s"\ntls { cert_file: "%s", key_file: "%s" }\n' \
                "$port" "$WORK/server.pem" "$WORK/server.key" >"$f.conf"
            # CANOPY_EXTRA_CONF: more config lines for Canopy only (e.g. producer_backoff).
            if [ "$kind" = canopy ] && [ -n "${CANOPY_EXTRA_CONF:-}" ]; then
                printf '%s\n' "$CANOPY_EXTRA_CONF" >>"$f.conf"
            fi
            "$bin" -c "$f.conf" >"$f.log" 2>&1 &
            pid=$!; HOP_PIDS="$HOP_PIDS $pid"
            wait_port "$pid" "$port" && break
            stop_topology; pid=
        done
        if [ -z "$pid" ]; then
            hop_fail "$name" "$kind" "$round" "server did not start: $(tail -n 3 "$f.log")"; continue
        fi
        python3 "$WORK/hopsub.py" 127.0.0.1 "$port" "$subj" "$MSGS" 5 128 "$WORK/ca.pem" >"$f.sub.json" 2>"$f.sub.err" &
        sub_pid=$!; HOP_PIDS="$sub_pid $HOP_PIDS"
        t0=$(proc_ticks "$pid")
        pub=$(python3 "$WORK/tlspub.py" 127.0.0.1 "$port" "$subj" "$MSGS" 128 "$WORK/ca.pem" 2>"$f.err" || true)
        echo "$pub" >"$f.json"
        if ! jq -e '.msgs' <<<"$pub" >/dev/null 2>&1; then
            hop_fail "$name" "$kind" "$round" "publisher: ${pub:-no output} $(tail -n 3 "$f.err") / subscriber: $(head -c 300 "$f.sub.json" "$f.sub.err")"
            stop_topology; continue
        fi
        wait "$sub_pid" 2>/dev/null || true
        HOP_PIDS=${HOP_PIDS/"$sub_pid "/}
        t1=$(proc_ticks "$pid")
        sub=$(cat "$f.sub.json")
        if ! jq -e '.msgs' <<<"$sub" >/dev/null 2>&1; then
            hop_fail "$name" "$kind" "$round" "subscriber: ${sub:-no output} $(head -c 300 "$f.sub.err")"
            stop_topology; continue
        fi
        if [ "$(jq -r '.msgs < .expected' <<<"$sub")" = true ]; then
            echo "  WARNING: $kind lost messages in $name: $(jq -r '"\(.msgs)/\(.expected)"' <<<"$sub")" >&2
            record "$name" lost "$kind" 1
        fi
        v=$(jq -r '.msgs_per_sec' <<<"$sub")
        record "$name" value "$kind" "$v"
        cpu=$(jq -rn --argjson p "$pub" --argjson s "$sub" '[$p.cpu_share, $s.cpu_share] | max * 100')
        record "$name" cpu "$kind" "$cpu"
        [ "$(jq -r '.msgs' <<<"$sub")" -gt 0 ] && record "$name" srvns "$kind" \
            "$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$(jq -r '.msgs' <<<"$sub")" 'BEGIN{print t * 1e9 / hz / n}')"
        printf '  %-8s %-7s %s\n' "$name" "$kind" "$v" >&2
        stop_topology
    done
}

# ---- Clustered JetStream (three members) ---------------------------------------------------

# meta_leader HTTP_PORT: the meta leader named by a member's /jsz when it sees a group of 3.
meta_leader() {
    curl -s --max-time 1 "http://127.0.0.1:$1/jsz" 2>/dev/null |
        jq -r 'if (.meta_cluster.cluster_size // 0) >= 3 then .meta_cluster.leader // "" else "" end' 2>/dev/null
}

# wait_meta HTTP_PORT...: until every member names the same, non-empty meta leader (30 s).
wait_meta() {
    local i h l first ok
    for i in $(seq 1 150); do
        ok=1; first=
        for h in "$@"; do
            l=$(meta_leader "$h")
            if [ -z "$l" ] || { [ -n "$first" ] && [ "$l" != "$first" ]; }; then ok=0; break; fi
            first=$l
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.2
    done
    return 1
}

# start_cluster KIND TAG: three members of KIND named bench-1..3, each with routes to the
# other two and a fresh store dir; up when every member has 2 routes, the route sets are
# stable and all agree on a meta leader. Sets C_PIDS (comma-separated), C_URL (member 1),
# C_STORES; logs and configs are $WORK/KIND-TAG-{1,2,3}.{conf,log}.
start_cluster() {
    local kind=$1 tag=$2 bin attempt i j base ok routes
    local -a p h x pid
    case "$kind" in canopy) bin=$CANOPY_SERVER ;; *) bin=$NATS_SERVER ;; esac
    base="$WORK/$kind-$tag"
    for attempt in 1 2 3; do
        read -r p[1] h[1] x[1] p[2] h[2] x[2] p[3] h[3] x[3] <<<"$(free_ports 9)"
        C_STORES=
        for i in 1 2 3; do
            routes=
            for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes${routes:+, }\"nats-route://127.0.0.1:${x[$j]}\""; done
            local extra=
            [ "$kind" = canopy ] && [ -n "${CANOPY_CLUSTER_EXTRA:-}" ] && extra=", $CANOPY_CLUSTER_EXTRA"
            rm -rf "$base-$i.store"; mkdir -p "$base-$i.store"
            C_STORES="$C_STORES $base-$i.store"
            printf 'server_name: bench-%s\nlisten: "127.0.0.1:%s"\nhttp: "127.0.0.1:%s"\ncluster { name: bench, listen: "127.0.0.1:%s", routes: [%s] %s }\njetstream { store_dir: "%s" }\n' \
                "$i" "${p[$i]}" "${h[$i]}" "${x[$i]}" "$routes" "$extra" "$base-$i.store" >"$base-$i.conf"
        done
        for i in 1 2 3; do
            "$bin" -c "$base-$i.conf" >"$base-$i.log" 2>&1 &
            pid[$i]=$!; HOP_PIDS="$HOP_PIDS ${pid[$i]}"
        done
        ok=1
        for i in 1 2 3; do wait_port "${pid[$i]}" "${p[$i]}" || { ok=0; break; }; done
        if [ "$ok" = 1 ]; then
            for i in 1 2 3; do wait_json "http://127.0.0.1:${h[$i]}/routez" '.num_routes >= 2' || { ok=0; break; }; done
        fi
        if [ "$ok" = 1 ] && wait_stable_routes "${h[1]}" "${h[2]}" "${h[3]}" && wait_meta "${h[1]}" "${h[2]}" "${h[3]}"; then
            C_PIDS="${pid[1]},${pid[2]},${pid[3]}"
            C_URL="nats://127.0.0.1:${p[1]}"
            return 0
        fi
        stop_topology
        rm -rf $C_STORES
    done
    echo "bench.sh: $kind 3-member cluster did not form; logs:" >&2
    tail -n 20 "$base-1.log" "$base-2.log" "$base-3.log" >&2 2>/dev/null || true
    return 1
}

# run_jsr3 NAME ROUND ORDER BENCH-ARGS...: one round of a clustered JetStream scenario
# (`canopy bench ... --replicas 3` against member 1) on each implementation.
run_jsr3() {
    local name=$1 round=$2 order=$3 kind json f; shift 3
    for kind in $order; do
        f="$WORK/$kind-$name-$round"
        if ! start_cluster "$kind" "$name-$round"; then
            record "$name" fail "$kind" 1; continue
        fi
        if json=$("$CANOPY" -s "$C_URL" bench canopy.js.bench "$@" --replicas 3 --timeout 10s \
            --server-pid "$C_PIDS" --json 2>"$f.err"); then
            echo "$json" >"$f.json"
            extract "$name" "$kind" "$json"
            echo "           stream leader $(jq -r '.js_cluster.cluster.leader // "?"' <<<"$json"), client on $(jq -r '.js_cluster.connected // "?"' <<<"$json")" >&2
            [ "$(jq -r '.js_cluster.cluster.leader == .js_cluster.connected' <<<"$json")" = true ] &&
                record "$name" local "$kind" 1
        else
            echo "  round $round $name on $kind FAILED: $(tail -n 3 "$f.err")" >&2
            record "$name" fail "$kind" 1
        fi
        stop_topology
        rm -rf $C_STORES
    done
}

REQS=$((MSGS / 50)); [ "$REQS" -lt 1000 ] && REQS=1000
JS_MSGS=$((MSGS / 5)); [ "$JS_MSGS" -lt 1000 ] && JS_MSGS=1000
# run_js NAME ROUND ORDER BENCH-ARGS...: a single-server scenario with JetStream enabled.
run_js() {
    SRV_JS=1
    run_scenario "$@"
    SRV_JS=
}
[ "$HOPS" = 1 ] && write_hop_sub
if [ "$TLS" = 1 ] && { want tlspub || want tlsleaf; }; then
    write_tls_pub
    if ! make_pki "$WORK"; then
        echo "NOTE: openssl could not make the throwaway certificates: skipping the TLS scenarios." >&2
        TLS=0
    fi
fi
echo "canopy bench: rounds=$ROUNDS msgs=$MSGS client=$CLIENT servers=[$SERVERS] cores=$(nproc)" >&2
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which server goes first so drift and warm-up effects cancel.
    if [ $((round % 2)) = 1 ]; then order=$SERVERS; else order=$(echo "$SERVERS" | awk '{for(i=NF;i>0;i--) printf "%s%s", $i, (i>1?" ":"")}'); fi
    echo "round $round/$ROUNDS (order: $order)" >&2
    want pubsub && run_scenario pubsub "$round" "$order" canopy.bench --pub 1 --sub 1 --msgs "$MSGS" --size 128 $RAW
    want fanout && run_scenario fanout "$round" "$order" canopy.bench --pub 1 --sub 5 --msgs $((MSGS / 2)) --size 128 $RAW
    want pubonly && run_scenario pubonly "$round" "$order" canopy.bench --pub 1 --sub 0 --msgs $((MSGS * 5)) --size 128 $RAW
    want request && run_scenario request "$round" "$order" canopy.bench --request --clients 1 --msgs "$REQS" --size 128
    want idle && run_scenario idle "$round" "$order" --idle 1000 --settle 1s
    if [ "$HOPS" = 1 ]; then
        want leafpub && run_hop leafpub "$round" "$order"
        want leafreq && run_hop leafreq "$round" "$order"
        want routepub && run_hop routepub "$round" "$order"
    fi
    if [ "$TLS" = 1 ]; then
        want tlspub && run_tlspub tlspub "$round" "$order"
        want tlsleaf && run_hop tlsleaf "$round" "$order"
    fi
    want jspub && run_js jspub "$round" "$order" canopy.js.bench --js pub --msgs "$JS_MSGS" --size 128
    want jspub1k && run_js jspub1k "$round" "$order" canopy.js.bench --js pub --msgs "$JS_MSGS" --size 1024
    want jsrawpub && run_js jsrawpub "$round" "$order" canopy.js.bench --js pub --raw --msgs "$JS_MSGS" --size 128
    want jsrawpub1k && run_js jsrawpub1k "$round" "$order" canopy.js.bench --js pub --raw --msgs "$JS_MSGS" --size 1024
    want jssync && run_js jssync "$round" "$order" canopy.js.bench --js sync --msgs "$REQS" --size 128
    want jsfetch && run_js jsfetch "$round" "$order" canopy.js.bench --js fetch --msgs "$JS_MSGS" --size 128
    want jsrawfetch && run_js jsrawfetch "$round" "$order" canopy.js.bench --js fetch --raw --msgs "$JS_MSGS" --size 128
    want kvput && run_js kvput "$round" "$order" canopy.js.bench --js kvput --msgs "$REQS" --size 128
    want kvget && run_js kvget "$round" "$order" canopy.js.bench --js kvget --msgs "$REQS" --size 128
    if [ "$HOPS" = 1 ]; then
        want jsr3pub && run_jsr3 jsr3pub "$round" "$order" --js pub --msgs "$JS_MSGS" --size 128
        want jsr3pub1k && run_jsr3 jsr3pub1k "$round" "$order" --js pub --msgs "$JS_MSGS" --size 1024
        want jsr3sync && run_jsr3 jsr3sync "$round" "$order" --js sync --msgs "$REQS" --size 128
        want jsr3rawpub && run_jsr3 jsr3rawpub "$round" "$order" --js pub --raw --msgs "$JS_MSGS" --size 128
    fi
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
want pubsub && row pubsub "pubsub 1:1" msgs/s higher
want fanout && row fanout "fan-out 1:5" msgs/s higher
want pubonly && row pubonly "pub-only" msgs/s higher
want request && row request "req/rep p50" us lower
want request && row request99 "req/rep p99" us lower
want idle && row idle "idle conns" B/conn lower
if [ "$HOPS" = 1 ]; then
    want leafpub && row leafpub "leaf pub/sub" msgs/s higher
    want leafreq && row leafreq "leaf req p50" us lower
    want leafreq && row leafreq99 "leaf req p99" us lower
    want routepub && row routepub "route pub/sub" msgs/s higher
fi
if [ "$TLS" = 1 ]; then
    want tlspub && row tlspub "tls pub/sub" msgs/s higher
    want tlsleaf && row tlsleaf "tls leaf" msgs/s higher
fi
want jspub && row jspub "js pub 128" msgs/s higher
want jspub1k && row jspub1k "js pub 1k" msgs/s higher
want jsrawpub && row jsrawpub "js rawpub 128" msgs/s higher
want jsrawpub1k && row jsrawpub1k "js rawpub 1k" msgs/s higher
want jssync && row jssync "js sync p50" us lower
want jssync && row jssync99 "js sync p99" us lower
want jsfetch && row jsfetch "js fetch" msgs/s higher
want jsrawfetch && row jsrawfetch "js rawfetch" msgs/s higher
want kvput && row kvput "kv put p50" us lower
want kvput && row kvput99 "kv put p99" us lower
want kvget && row kvget "kv get p50" us lower
want kvget && row kvget99 "kv get p99" us lower
if [ "$HOPS" = 1 ]; then
    want jsr3pub && row jsr3pub "r3 pub 128" msgs/s higher
    want jsr3pub1k && row jsr3pub1k "r3 pub 1k" msgs/s higher
    want jsr3sync && row jsr3sync "r3 sync p50" us lower
    want jsr3sync && row jsr3sync99 "r3 sync p99" us lower
    want jsr3rawpub && row jsr3rawpub "r3 rawpub 128" msgs/s higher
fi
echo
echo "client CPU = share of one core used by 'canopy bench' ($CLIENT clients) during the run; near 100% means the load generator may be the limit."
echo "  (leaf/route/tls pub/sub: the busier of the publisher and the Python hop subscriber; tls pub/sub: both clients are Python;"
echo "  js/kv/r3 rows: 'canopy bench --js' on async-nats' JetStream API, whatever --async-nats says; rawpub rows: its raw publisher;"
echo "  rawfetch: its raw pull consumer.)"
echo "server ns/msg = server CPU time per delivered message (per published one for pub-only and js pub, per request for"
echo "  req/rep, per operation for js sync and kv; per fetched message for js fetch and rawfetch);"
echo "  for the leaf/route/tls leaf rows, the CPU of both servers together (sampled from /proc around the run);"
echo "  for the r3 rows, the CPU of the three cluster members together."
for f in "$WORK"/*.fail.* "$WORK"/*.lost.*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    case "$b" in *.fail.*) what="failed round(s)" ;; *) what="round(s) with lost messages" ;; esac
    echo "NOTE: ${b##*.} had $(wc -l <"$f") $what in ${b%%.*} (see --keep-logs)"
done
for f in "$WORK"/*.local.*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    echo "NOTE: in $(wc -l <"$f") of $ROUNDS round(s) of ${b%%.*} on ${b##*.} the stream leader was the member the client was connected to"
done
[ "$SERVERS" = nats ] && echo "NOTE: canopy-server ($CANOPY_SERVER) was not found; only nats-server was measured."
exit 0
