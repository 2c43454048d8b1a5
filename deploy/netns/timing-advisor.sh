#!/usr/bin/env bash
# Proves the timing advisor reacts to real network latency: three `haseqd run` processes,
# each in a network namespace of its own, wired to one bridge (in a fourth namespace) with
# the operator guide's timings (heartbeat 92 ms, election 368 ms, lease 46 ms, send 50 ms).
#
#   deploy/netns/timing-advisor.sh [HASEQD]     # default target/release/haseqd; needs root
#
# 1. A leader is elected and node-1's /status timing.verdict settles on "ok" (RTT_MAX, the
#    largest of its peers' average round trips over 30 s, is far below 23 ms on a bridge),
#    and stays so once that 30 s window is full (the nodes have run 31 s).
# 2. 40 ms of one-way delay is put on node-3's link (its egress, as `tc qdisc ... netem delay
#    40ms` on its interface would): round trips to node-3 grow by ~40 ms, and 4 x 40 ms is
#    above the 92 ms heartbeat. node-1 must report verdict "too_tight" naming node-3, `haseqd
#    ctl tune` must say so with suggested lines, and /metrics must have
#    haseq_timing_too_tight 1. The 30 s average takes a while to cross 23 ms (about half
#    the window): waited for, and once the window holds only delayed round trips the verdict
#    must still be too_tight. rtt_max_ms is printed at each step. About 70 s in all.
# 3. The delay is removed; exit 0 with a one-line summary.
#
# The delay is netem's when the kernel has sch_netem; otherwise (HASEQ_TA_LINK=relay, or
# auto-detected) node-3's cable is deploy/netns/slow-link.py, a user-space relay between two
# TAP devices that holds node-3's outgoing frames 40 ms: the kernels' TCP still sees real
# round trips. Every wait is bounded. Everything created (namespaces, links, processes, the
# temporary directory) is removed on exit, pass or fail; on failure the last lines of each
# node's log are printed and the exit status is 1 (2 for a usage or environment problem).
# HASEQ_TA_LOGS=DIR keeps a copy of the nodes' logs and configurations there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-target/release/haseqd}"
link_kind="${HASEQ_TA_LINK:-auto}"   # auto | netem | relay
delay_ms=40
leader_timeout=30    # seconds for one leader all agree on
ok_timeout=30        # seconds for node-1's verdict to settle on "ok"
tight_timeout=60     # seconds after the delay for "too_tight" naming node-3
http_timeout=2       # seconds per HTTP call

now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" -v f="${2:-%.1f}" 'BEGIN { printf f, b - a }'; }
t_start=$(now)
say() { printf '[timing-advisor %5ss] %s\n' "$(since "$t_start")" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
usage_error() { echo "timing-advisor.sh: $*" >&2; usage=1; exit 2; }
usage=0

[ -x "$bin" ] || usage_error "$bin is not an executable haseqd (build it: cargo build --release --bin haseqd)"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
[ "$(id -u)" -eq 0 ] || usage_error "needs root (network namespaces)"
for tool in ip tc python3 awk timeout; do
    command -v "$tool" >/dev/null || usage_error "needs $tool"
done
case "$link_kind" in auto | netem | relay) ;; *) usage_error "HASEQ_TA_LINK must be auto, netem or relay" ;; esac

# Names unique to this run: parallel runs never share a namespace. Addresses live inside
# these namespaces only, so they cannot clash with the host's or another run's.
tag="haseq-ta$$"
br_ns="$tag-br"
ns=("" "$tag-1" "$tag-2" "$tag-3")
net="10.203.$(($$ % 250 + 1))"
addr=("" "$net.1" "$net.2" "$net.3")
raft_port=5001
api_port=7700
work="$(mktemp -d "${TMPDIR:-/tmp}/haseq-timing-advisor.XXXXXX")"
pids=()
relay_pid=""
created_ns=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    # A failed step is a failed test (1), whatever the command's own status; 2 is for a
    # usage or environment problem, 130/143 for an interruption.
    case "$rc" in 0 | 130 | 143) ;; *) [ "$usage" -eq 1 ] || rc=1 ;; esac
    if [ "$rc" -ne 0 ]; then
        for i in 1 2 3; do
            [ -f "$work/node-$i.log" ] || continue
            echo "----- node-$i log (last 30 lines)"
            tail -n 30 "$work/node-$i.log" | cut -c1-240
        done
        if [ -s "$work/slow-link.log" ]; then
            echo "----- slow-link log"
            tail -n 10 "$work/slow-link.log"
        fi
    fi
    # SIGTERM, then SIGKILL whoever is still there after 10 s (a leader's hand-over waits
    # at most 3 s).
    local p left all=("${pids[@]}")
    [ -z "$relay_pid" ] || all+=("$relay_pid")
    for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 100); do
        left=0
        for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
        [ "$left" -eq 0 ] && break
        sleep 0.1
    done
    for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for p in "${all[@]}"; do wait "$p" 2>/dev/null; done
    # Anything else still in our namespaces is ours too (and would keep them alive).
    local n
    for n in "${created_ns[@]}"; do
        for p in $(ip netns pids "$n" 2>/dev/null); do
            echo "warning: killing pid $p left in namespace $n" >&2
            kill -KILL "$p" 2>/dev/null
        done
    done
    # Deleting a namespace deletes the links in it (veth peers and TAP devices with it).
    for n in "${created_ns[@]}"; do ip netns del "$n" 2>/dev/null; done
    for n in "${created_ns[@]}"; do
        [ -e "/run/netns/$n" ] && echo "warning: namespace $n is still there" >&2
    done
    if [ -n "${HASEQ_TA_LOGS:-}" ]; then
        mkdir -p "$HASEQ_TA_LOGS" && cp "$work"/*.log "$work"/*.yaml "$HASEQ_TA_LOGS"/
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "FAIL: line $LINENO: $BASH_COMMAND (exit status $?)"' ERR
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

in_ns() { local n="$1"; shift; ip netns exec "$n" "$@"; }

add_ns() {
    ip netns add "$1"
    created_ns+=("$1")
    ip -n "$1" link set lo up
}

# Whether this kernel has sch_netem (tried on a scratch namespace's loopback).
have_netem() {
    local probe="$tag-probe" r=1
    add_ns "$probe"
    tc -n "$probe" qdisc add dev lo root netem delay 1ms 2>/dev/null && r=0
    ip netns del "$probe"
    return "$r"
}

if [ "$link_kind" = auto ]; then
    if have_netem; then link_kind=netem; else link_kind=relay; fi
elif [ "$link_kind" = netem ] && ! have_netem; then
    usage_error "HASEQ_TA_LINK=netem, but this kernel has no sch_netem (try relay)"
fi
say "haseqd $bin; namespaces $tag-{br,1,2,3}; $net.0/24; node-3's delay by $link_kind"

# ---- the network: a bridge in its own namespace, one cable per node --------------------
add_ns "$br_ns"
ip -n "$br_ns" link add br0 type bridge
ip -n "$br_ns" link set br0 up
for i in 1 2 3; do add_ns "${ns[$i]}"; done

plug() { # plug NODE_INDEX: the node's eth0 is up with its address, its port on the bridge
    local i="$1"
    ip -n "$br_ns" link set "p$i" master br0
    ip -n "$br_ns" link set "p$i" up
    ip -n "${ns[$i]}" addr add "${addr[$i]}/24" dev eth0
    ip -n "${ns[$i]}" link set eth0 up
}

for i in 1 2; do
    ip -n "${ns[$i]}" link add eth0 type veth peer name "p$i" netns "$br_ns"
    plug "$i"
done
if [ "$link_kind" = netem ]; then
    ip -n "${ns[3]}" link add eth0 type veth peer name p3 netns "$br_ns"
    plug 3
else
    command -v python3 >/dev/null || usage_error "needs python3 for the relay link"
    [ -c /dev/net/tun ] || usage_error "no /dev/net/tun for the relay link (and no sch_netem)"
    # The interpreter itself, not a wrapper (a pyenv shim) that signals would not reach.
    py="$(python3 -c 'import sys; print(sys.executable)')"
    ip netns exec "$br_ns" "$py" -u "$here/slow-link.py" n3 p3 "$delay_ms" >"$work/slow-link.log" 2>&1 &
    relay_pid=$!
    for _ in $(seq 50); do
        grep -q '^ready' "$work/slow-link.log" 2>/dev/null && break
        kill -0 "$relay_pid" 2>/dev/null || fail "slow-link.py exited: $(cat "$work/slow-link.log")"
        sleep 0.1
    done
    grep -q '^ready' "$work/slow-link.log" || fail "slow-link.py not ready within 5 s"
    ip -n "$br_ns" link set n3 netns "${ns[3]}"
    ip -n "${ns[3]}" link set n3 name eth0
    plug 3
fi

delay_on() {
    if [ "$link_kind" = netem ]; then
        in_ns "${ns[3]}" tc qdisc add dev eth0 root netem delay "${delay_ms}ms"
    else
        kill -USR1 "$relay_pid"
    fi
}
delay_off() {
    if [ "$link_kind" = netem ]; then
        in_ns "${ns[3]}" tc qdisc del dev eth0 root
    else
        kill -USR2 "$relay_pid"
    fi
}

# ---- three nodes ------------------------------------------------------------------------
printf '6861736571206c6561646572736869702074657374207365637265742121212e\n' >"$work/cluster.secret"
chmod 600 "$work/cluster.secret"
for i in 1 2 3; do
    peers=()
    for j in 1 2 3; do
        [ "$j" -eq "$i" ] || peers+=("    node-$j@${addr[$j]}:$raft_port")
    done
    peer_lines="$(printf '%s,\n' "${peers[@]}")"
    cat >"$work/node-$i.yaml" <<EOF
node:
  aggregator: true
  block_time: "100ms"
raft:
  enable: true
  node_id: "node-$i"
  raft_addr: "${addr[$i]}:$raft_port"
  raft_dir: "$work/node-$i/raft"
  peers: >-
${peer_lines%,}
  # The operator guide's timings (RTT_MAX <= 25ms).
  heartbeat_timeout: "92ms"
  election_timeout: "368ms"
  leader_lease_timeout: "46ms"
  send_timeout: "50ms"
  trailing_logs: 18000
  snapshot_threshold: 5000
  snap_count: 3
engine:
  data_dir: "$work/node-$i/engine"
api:
  addr: "${addr[$i]}:$api_port"
EOF
done
t_nodes=$(now)
for i in 1 2 3; do
    # Not through in_ns: $! must be haseqd itself (ip netns exec and env exec it), not a
    # subshell running a function.
    ip netns exec "${ns[$i]}" env HASEQ_RAFT__SECRET_FILE="$work/cluster.secret" NO_COLOR=1 \
        "$bin" run --config "$work/node-$i.yaml" </dev/null >"$work/node-$i.log" 2>&1 &
    pids+=("$!")
done

# GET PATH on node I, from inside its namespace; empty output when it does not answer.
if command -v curl >/dev/null; then
    http_get() {
        in_ns "${ns[$1]}" curl -s --max-time "$http_timeout" "http://${addr[$1]}:$api_port$2" || true
    }
else
    http_get() { # only /status without curl
        [ "$2" = /status ] || { echo "no curl for $2" >&2; return 0; }
        in_ns "${ns[$1]}" timeout "$((http_timeout + 1))" \
            "$bin" ctl --api "http://${addr[$1]}:$api_port" status 2>/dev/null || true
    }
fi

# Fields of a /status document (stdin), one per line, empty when absent: e.g.
# `status_fields role timing.verdict`.
status_fields() {
    python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    doc = {}
for path in sys.argv[1:]:
    v = doc
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    print("" if v is None else v)
' "$@"
}

# The round trip of the link itself, without haseq: the median of 5 TCP connects from
# node-1's namespace to node-3's API port (a connect is one SYN / SYN-ACK round trip), in ms.
link_rtt() {
    in_ns "${ns[1]}" timeout 10 python3 -c '
import socket, sys, time
rtts = []
for _ in range(5):
    t = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    except OSError:
        continue
    rtts.append((time.monotonic() - t) * 1000)
    time.sleep(0.05)
print("%.1f" % sorted(rtts)[len(rtts) // 2] if rtts else "none")
' "${addr[3]}" "$api_port" || echo none
}

nodes_alive() {
    local i
    for i in 1 2 3; do
        kill -0 "${pids[$((i - 1))]}" 2>/dev/null || fail "node-$i exited (see its log below)"
    done
}

# Wait SECONDS (a whole number), watching the nodes: in short sleeps, so a dead node or a
# signal is acted on at once.
hold() {
    local until=$(($(date +%s) + $1))
    nodes_alive
    while [ "$(date +%s)" -lt "$until" ]; do
        nodes_alive
        sleep 0.5
    done
}

# ---- 1. a leader, and the verdict "ok" ----------------------------------------------------
say "waiting (at most ${leader_timeout}s) for one leader all three agree on"
deadline=$(($(date +%s) + leader_timeout))
leader=""
while :; do
    nodes_alive
    roles=() leaders=()
    for i in 1 2 3; do
        mapfile -t f < <(http_get "$i" /status | status_fields role leader_id)
        roles+=("${f[0]:-}") leaders+=("${f[1]:-}")
    done
    n_leaders=0
    for r in "${roles[@]}"; do [ "$r" = leader ] && n_leaders=$((n_leaders + 1)); done
    if [ "$n_leaders" -eq 1 ] && [ -n "${leaders[0]}" ] &&
        [ "${leaders[0]}" = "${leaders[1]}" ] && [ "${leaders[1]}" = "${leaders[2]}" ]; then
        leader="${leaders[0]}"
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "no agreed leader within ${leader_timeout}s (roles: ${roles[*]}; leaders: ${leaders[*]})"
    sleep 0.25
done
say "leader $leader (roles node-1..3: ${roles[*]})"

# node-1's timing advice: verdict, rtt_max_ms, rtt_max_peer (globals).
timing() {
    mapfile -t f < <(http_get 1 /status | status_fields timing.verdict timing.rtt_max_ms timing.rtt_max_peer)
    verdict="${f[0]:-}" rtt="${f[1]:-}" rtt_peer="${f[2]:-}"
}

say "waiting (at most ${ok_timeout}s) for node-1's timing.verdict \"ok\""
deadline=$(($(date +%s) + ok_timeout))
while :; do
    nodes_alive
    timing
    [ "$verdict" = ok ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "node-1's verdict is \"$verdict\" (rtt_max_ms $rtt to $rtt_peer), not ok, after ${ok_timeout}s"
    sleep 0.5
done
say "verdict ok: rtt_max_ms $rtt (to $rtt_peer)"
# A cluster that has run a while: node-1's 30 s window full of round trips over the plain
# link, so the delay has a whole window's average to pull up (as on a running cluster whose
# link degrades), not the few seconds since start.
fill="$(awk -v t="$(since "$t_nodes" %.0f)" 'BEGIN { d = 31 - t; print (d > 0 ? d : 0) }')"
say "letting node-1's 30 s window fill with round trips over the plain link (${fill}s)"
hold "$fill"
timing
[ "$verdict" = ok ] || fail "node-1's verdict is \"$verdict\" (rtt_max_ms $rtt to $rtt_peer) over the plain link"
rtt_before="$rtt" peer_before="$rtt_peer"
say "verdict ok over a full window: rtt_max_ms $rtt_before (to $peer_before)"
link_before="$(link_rtt)"
say "TCP connect node-1 -> node-3 (median of 5): $link_before ms"

# ---- 2. 40 ms on node-3's link --------------------------------------------------------------
delay_on
t_delay=$(now)
say "added ${delay_ms} ms one-way delay on node-3's link ($link_kind)"
link_after="$(link_rtt)"
say "TCP connect node-1 -> node-3 (median of 5): $link_after ms"
say "waiting (at most ${tight_timeout}s) for node-1's verdict \"too_tight\" naming node-3"
deadline=$(($(date +%s) + tight_timeout))
last_report=0
while :; do
    nodes_alive
    timing
    [ "$verdict" = too_tight ] && [ "$rtt_peer" = node-3 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "after ${tight_timeout}s node-1's verdict is \"$verdict\" (rtt_max_ms $rtt to $rtt_peer)"
    if [ $(($(date +%s) - last_report)) -ge 5 ]; then
        say "  verdict $verdict, rtt_max_ms $rtt (to $rtt_peer)"
        last_report=$(date +%s)
    fi
    sleep 0.5
done
took_tight="$(since "$t_delay")"
rtt_tight="$rtt"
say "verdict too_tight after ${took_tight}s: rtt_max_ms $rtt_tight (to $rtt_peer)"

tune_out="$(in_ns "${ns[1]}" timeout 15 "$bin" ctl --api "http://${addr[1]}:$api_port" tune)" ||
    fail "haseqd ctl tune on node-1 exited $?: $tune_out"
printf '%s\n' "$tune_out" | sed 's/^/    | /'
grep -q '^verdict: too_tight' <<<"$tune_out" || fail "ctl tune does not say too_tight"
grep -q 'to node-3' <<<"$tune_out" || fail "ctl tune does not name node-3"
grep -q '^suggested configuration' <<<"$tune_out" || fail "ctl tune prints no suggested configuration"
grep -Eq '^  heartbeat_timeout: "[0-9]+ms"' <<<"$tune_out" || fail "ctl tune suggests no heartbeat_timeout line"

metric="$(http_get 1 /metrics | grep -E '^haseq_timing_too_tight(\{[^}]*\})? ' || true)"
[ -n "$metric" ] || fail "node-1's /metrics has no haseq_timing_too_tight"
awk '{ exit !($NF == 1) }' <<<"$metric" || fail "node-1's /metrics: $metric (want 1)"
say "/metrics: $metric"

# Once the 30 s window holds only delayed round trips the average is the link's own.
settle=$((31 - ${took_tight%.*}))
if [ "$settle" -gt 0 ]; then
    say "letting the 30 s window fill with delayed round trips (${settle}s)"
    hold "$settle"
fi
nodes_alive
timing
rtt_after="$rtt"
if [ "$verdict" != too_tight ] || [ "$rtt_peer" != node-3 ]; then
    fail "31 s into the delay node-1's verdict is \"$verdict\" (rtt_max_ms $rtt to $rtt_peer)"
fi
mapfile -t f < <(http_get 1 /status | status_fields leader_id term)
say "31 s into the delay: rtt_max_ms $rtt_after (to $rtt_peer); leader ${f[0]:-?}, term ${f[1]:-?}"
# Right at the crossing the suggestions reflect a half-delayed window; now the link's own.
tune_out="$(in_ns "${ns[1]}" timeout 15 "$bin" ctl --api "http://${addr[1]}:$api_port" tune)" ||
    fail "haseqd ctl tune on node-1 exited $?: $tune_out"
say "ctl tune now suggests: $(sed -n 's/^  \([a-z_]*\): "\([0-9]*ms\)"$/\1 \2/p' <<<"$tune_out" | paste -sd, - | sed 's/,/, /g')"

# ---- 3. delay off ---------------------------------------------------------------------------
delay_off
say "removed the delay"
echo "PASS timing-advisor ($link_kind, +${delay_ms} ms on node-3): node-1 rtt_max_ms ${rtt_before} (to $peer_before, ok) -> ${rtt_tight} (too_tight, node-3) after ${took_tight}s -> ${rtt_after} at 31 s; link TCP connect ${link_before} -> ${link_after} ms; ctl tune and haseq_timing_too_tight 1 agree; $(since "$t_start")s"
