#!/usr/bin/env bash
# etcd beside haseq, from one run on this machine.
#
# For each size (1 KiB, 10 KiB, 100 KiB): starts a fresh 3-member etcd cluster on 127.0.0.1
# (Debian's etcd-server, installed if missing) with the same election timing as haseq's guide
# configuration (etcd needs election >= 5 x heartbeat: --heartbeat-interval 73
# --election-timeout 368) and its default durable WAL (fsync per write) in a temporary
# directory, writes values of that size one at a time (the concurrency of haseq's producer: one
# block in flight), stops and removes it, then runs `haseqd bench --nodes 3 --json` (a fresh
# cluster too) for the same size. Each size's two figures are thus taken about a minute apart:
# on a machine whose speed drifts (shared virtual machines do, by a third within an hour), the
# ratio compares like with like. Prints one table: both systems and the ratios.
#
# What is measured on each side:
# - etcd: sequential puts over gRPC (`etcdserverpb.KV/Put`, grpcio from PyPI in a venv the
#   script makes; Debian ships no `benchmark` tool) on one connection to the leader, timed by
#   the client: the loopback round trip and the client's own time are included (printed as the
#   "client floor": a serializable read that needs no Raft). Without grpcio, the HTTP/JSON
#   gateway (`POST /v3/kv/put`), which adds about 0.4 ms a call;
# - haseq: the leader's own commit latency, proposal -> applied (durable on a quorum first),
#   and blocks per second with block_time 0 (see `haseqd bench --help`).
# Both drop the same warm-up: the first 2% of the operations, at least 20.
#
# Usage: benches/etcd-compare.sh            (from anywhere; as root if etcd must be installed)
# Environment: OPS (default 2000) operations per size on each side; HASEQD (default: the
# workspace's release build, built if needed).
#
# It stops everything it started, whatever happens (trap), and every etcd member also dies with
# this script (setpriv --pdeathsig) even if it is killed.

set -euo pipefail

OPS="${OPS:-2000}"
SIZES=(1KiB 10KiB 100KiB)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STOP_WAIT_S=10

WORK="$(mktemp -d -t haseq-etcd-compare-XXXXXX)"
ETCD_PIDS=()
BENCH_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    stop_etcd
    rm -rf "$WORK"
    exit "$status"
}

stop_etcd() {
    local pid i
    ((${#ETCD_PIDS[@]})) || return 0
    for pid in "${ETCD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
        local alive=0
        for pid in "${ETCD_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${ETCD_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "etcd pid $pid still running after ${STOP_WAIT_S}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    ETCD_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "etcd-compare: $*" >&2; }

# --- prerequisites -----------------------------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    say "installing etcd from Debian's packages (etcd-server, etcd-client)"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client >&2
fi
command -v python3 >/dev/null || { say "python3 is required"; exit 1; }
if [[ -z "${HASEQD:-}" ]]; then
    say "building haseqd (release)"
    (cd "$ROOT" && cargo build --release -q -p haseqd) >&2
    HASEQD="$ROOT/target/release/haseqd"
fi
[[ -x "$HASEQD" ]] || { say "$HASEQD: not an executable"; exit 1; }

# --- etcd --------------------------------------------------------------------------------------
free_ports() { # N free loopback ports, one per line
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}
# sed, not head: head would close the pipe early and pipefail would fail on SIGPIPE.
etcd_version="$(etcd --version | sed -n 1p)"
ETCD_RUNS=0
LEADER=""
# Starts a fresh 3-member cluster (new ports, new data directories) and sets LEADER.
start_etcd() {
    local PORTS CLUSTER="" CLIENTS="" i peer client attempt leader=""
    ETCD_RUNS=$((ETCD_RUNS + 1))
    mapfile -t PORTS < <(free_ports 6)
    for i in 1 2 3; do
        peer="http://127.0.0.1:${PORTS[$((2 * i - 2))]}"
        CLUSTER+="${CLUSTER:+,}m$i=$peer"
        CLIENTS+="${CLIENTS:+,}http://127.0.0.1:${PORTS[$((2 * i - 1))]}"
    done
    say "starting 3 etcd members ($etcd_version) in $WORK/etcd-$ETCD_RUNS"
    for i in 1 2 3; do
        peer="http://127.0.0.1:${PORTS[$((2 * i - 2))]}"
        client="http://127.0.0.1:${PORTS[$((2 * i - 1))]}"
        setpriv --pdeathsig KILL -- etcd \
            --name "m$i" --data-dir "$WORK/etcd-$ETCD_RUNS/m$i" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --initial-cluster "$CLUSTER" --initial-cluster-state new \
            --initial-cluster-token haseq-etcd-compare \
            --heartbeat-interval 73 --election-timeout 368 \
            --logger zap --log-level error >"$WORK/etcd-$ETCD_RUNS-m$i.log" 2>&1 &
        ETCD_PIDS+=("$!")
    done
    for ((attempt = 0; attempt < 300; attempt++)); do
        leader="$(etcdctl --endpoints "$CLIENTS" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
try:
    for e in json.load(sys.stdin):
        s = e["Status"]
        if s["header"]["member_id"] == s["leader"]:
            print(e["Endpoint"])
except Exception:
    pass
' || true)"
        [[ -n "$leader" ]] && break
        sleep 0.1
    done
    [[ -n "$leader" ]] || { say "no etcd leader within 30s"; tail -n 20 "$WORK"/etcd-*.log >&2; exit 1; }
    LEADER="$leader"
    say "etcd leader: $LEADER; $OPS sequential puts"
}

# The client: gRPC (etcd's own protocol; grpcio from PyPI in a throw-away venv), or, when that
# cannot be installed, the HTTP/JSON gateway (slower: about 0.4 ms more per call here).
PY=python3
CLIENT=gateway
if python3 -m venv "$WORK/venv" >&2 && "$WORK/venv/bin/pip" install -q grpcio >&2; then
    PY="$WORK/venv/bin/python"
    CLIENT=grpc
else
    say "grpcio could not be installed: timing etcd through its HTTP/JSON gateway instead"
fi
# Each run starts with no dirty pages left by the one before (both systems share one disk, and
# writeback of an earlier run's data would slow whichever runs next).
settle() { sync; sleep 1; }

# Each size: a fresh etcd cluster measured, stopped and removed, then a fresh haseq cluster, so
# the two figures compared are taken about a minute apart, and neither system starts with the
# other's (or an earlier size's) data.
for size in "${SIZES[@]}"; do
    # --- etcd ----------------------------------------------------------------------------------
    settle
    start_etcd
    "$PY" - "$LEADER" "$size" "$OPS" "$CLIENT" >"$WORK/etcd-$size.json" <<'EOF'
import base64, http.client, json, math, sys, time, urllib.parse

endpoint, size, ops, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
units = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}
num = size.rstrip("BKMib")
nbytes = int(num) * units[size[len(num):]]
warmup = max(20, ops * 2 // 100)
u = urllib.parse.urlsplit(endpoint)
raw = bytes((i * 2654435761 >> 13) & 0xFF for i in range(nbytes))
KEYS = 16

if client == "grpc":
    import grpc

    # etcdserverpb.PutRequest {key = 1, value = 2} and RangeRequest {key = 1,
    # serializable = 7}, encoded by hand (protobuf wire format: no generated code needed).
    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    field = lambda num, data: varint(num << 3 | 2) + varint(len(data)) + data
    chan = grpc.insecure_channel(f"{u.hostname}:{u.port}")
    ident = lambda b: b
    put_rpc = chan.unary_unary("/etcdserverpb.KV/Put", request_serializer=ident,
                               response_deserializer=ident)
    range_rpc = chan.unary_unary("/etcdserverpb.KV/Range", request_serializer=ident,
                                 response_deserializer=ident)
    puts = [field(1, b"bench/%d" % k) + field(2, raw) for k in range(KEYS)]
    probe_req = field(1, b"bench/none") + varint(7 << 3) + b"\x01"
    put = lambda i: put_rpc(puts[i % KEYS], timeout=10)
    probe = lambda: range_rpc(probe_req, timeout=10)
else:
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    b64 = lambda b: base64.b64encode(b).decode()
    value = b64(raw)
    # Bodies made before timing, so the loop times etcd, not Python's JSON encoder.
    bodies = [json.dumps({"key": b64(b"bench/%d" % k), "value": value}).encode() for k in range(KEYS)]
    HEADERS = {"Content-Type": "application/json"}

    def call(path, body, what):
        conn.request("POST", path, body, HEADERS)
        r = conn.getresponse()
        text = r.read()
        if r.status != 200:
            sys.exit(f"{what}: HTTP {r.status} {text[:200]!r}")

    put = lambda i: call("/v3/kv/put", bodies[i % KEYS], f"put {i}")
    probe_body = json.dumps({"key": b64(b"bench/none"), "serializable": True}).encode()
    probe = lambda: call("/v3/kv/range", probe_body, "range")

# The client floor: a serializable range read answers locally, without Raft.
floor = []
for i in range(200):
    s = time.perf_counter()
    probe()
    floor.append(time.perf_counter() - s)
floor.sort()

for i in range(warmup):
    put(i)
lat = []
t0 = time.perf_counter()
for i in range(ops - warmup):
    s = time.perf_counter()
    put(warmup + i)
    lat.append(time.perf_counter() - s)
elapsed = time.perf_counter() - t0
lat.sort()
rank = lambda p: lat[max(1, math.ceil(p / 100 * len(lat))) - 1]
print(json.dumps({"p50_ms": rank(50) * 1e3, "p99_ms": rank(99) * 1e3, "max_ms": lat[-1] * 1e3,
                  "mean_ms": sum(lat) / len(lat) * 1e3,
                  "ops_per_s": len(lat) / elapsed, "ops": len(lat), "bytes": nbytes,
                  "client": client, "client_floor_p50_ms": floor[len(floor) // 2] * 1e3}))
EOF
    say "etcd $size: $(cat "$WORK/etcd-$size.json")"
    stop_etcd
    # Its data is no longer needed, and its files would stay in the page cache and on the disk
    # haseq now writes to.
    rm -rf "$WORK/etcd-$ETCD_RUNS"
    say "etcd stopped"

    # --- haseq ---------------------------------------------------------------------------------
    settle
    say "haseqd bench --nodes 3 --block-bytes $size --blocks $OPS"
    "$HASEQD" bench --nodes 3 --block-bytes "$size" --blocks "$OPS" --json \
        >"$WORK/haseq-$size.json" 2>"$WORK/haseq-$size.log" &
    BENCH_PID=$!
    if ! wait "$BENCH_PID"; then
        BENCH_PID=""
        say "haseqd bench failed:"
        cat "$WORK/haseq-$size.log" >&2
        exit 1
    fi
    BENCH_PID=""
    say "haseq $size: $(cat "$WORK/haseq-$size.json")"
done

# --- table -------------------------------------------------------------------------------------
python3 - "$WORK" "$etcd_version" "$OPS" "${SIZES[@]}" <<'EOF'
import json, os, sys

work, version, ops, sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print(f"haseq vs etcd: 3 nodes on 127.0.0.1, durable writes, one operation in flight, {ops} per size "
      f"(first 2%, at least 20, dropped as warm-up); {version}; {os.cpu_count()} cores")
client = json.load(open(f"{work}/etcd-{sizes[0]}.json"))["client"]
via = "gRPC (grpcio)" if client == "grpc" else "the HTTP/JSON gateway"
print(f"etcd: client-timed sequential puts over {via} to the leader; "
      "haseq: leader commit latency (proposal -> applied), block_time 0")
head = ("size", "etcd p50", "etcd p99", "etcd mean", "etcd puts/s", "haseq p50", "haseq p99",
        "haseq mean", "haseq blocks/s", "p50 haseq/etcd", "rate haseq/etcd")
rows = []
for s in sizes:
    e = json.load(open(f"{work}/etcd-{s}.json"))
    h = json.load(open(f"{work}/haseq-{s}.json"))
    rows.append((s, f"{e['p50_ms']:.3f} ms", f"{e['p99_ms']:.3f} ms", f"{e['mean_ms']:.3f} ms",
                 f"{e['ops_per_s']:.0f}", f"{h['p50_ms']:.3f} ms", f"{h['p99_ms']:.3f} ms",
                 f"{h['mean_ms']:.3f} ms", f"{h['blocks_per_s']:.0f}",
                 f"{h['p50_ms'] / e['p50_ms']:.2f}", f"{h['blocks_per_s'] / e['ops_per_s']:.2f}"))
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
line = lambda r: "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))
print(line(head))
for r in rows:
    print(line(r))
floors = ", ".join(f"{s} {json.load(open(f'{work}/etcd-{s}.json'))['client_floor_p50_ms']:.3f} ms" for s in sizes)
print(f"etcd client floor (serializable range read, no Raft: the client's and loopback's share of "
      f"each put), p50: {floors}")
print("p50 haseq/etcd below 1: haseq commits faster; rate haseq/etcd above 1: haseq sustains more.")
EOF
