#!/usr/bin/env bash
# End-to-end test of the Docker Compose deployment: build the FROM-scratch image, bring the
# cluster up, check that exactly one leader emerges and the others follow it, SIGKILL the
# leader's container, time the failover to a new leader among the survivors, restart the
# killed container and check that it rejoins as a follower, then tear everything down.
#
#   deploy/docker/test-compose.sh                  # 3 nodes (docker-compose.yml)
#   deploy/docker/test-compose.sh --nodes 5        # 5 nodes (docker-compose.5.yml)
#   deploy/docker/test-compose.sh --no-build       # use the existing haseqd:local image
#   deploy/docker/test-compose.sh --binary PATH    # build the image from this binary
#
# Talks only to the nodes' API ports, published on 127.0.0.1 (free ports chosen at start).
# Everything it creates (a compose project of its own, its networks and named volumes, a
# temporary secret) is removed on exit, pass or fail. Exit 0 only if every phase passed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nodes=3
build=1
binary=""
image="${HASEQ_IMAGE:-haseqd:local}"
up_timeout=60        # seconds for the first leader and followers
failover_timeout=30  # seconds for a new leader after the kill
rejoin_timeout=60    # seconds for the restarted node to follow

while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes="${2:?--nodes needs 3 or 5}"; shift 2 ;;
        --no-build) build=0; shift ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-compose.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$nodes" in
    3) compose_file="$here/docker-compose.yml" ;;
    5) compose_file="$here/docker-compose.5.yml" ;;
    *) echo "test-compose.sh: --nodes must be 3 or 5" >&2; exit 2 ;;
esac

# Wall-clock seconds with microseconds (bash 5), and arithmetic on them.
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" -v f="${2:-%.3f}" 'BEGIN { printf f, b - a }'; }
t_start=$(now)
say() { printf '[test-compose %6ss] %s\n' "$(since "$t_start" %.1f)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

for tool in docker python3 curl awk; do
    command -v "$tool" >/dev/null || { echo "test-compose.sh: needs $tool" >&2; exit 2; }
done
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    echo "test-compose.sh: needs docker compose or docker-compose" >&2
    exit 2
fi

project="haseqtest$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/haseq-compose-test.XXXXXX")"
dc() { "${compose[@]}" -p "$project" -f "$compose_file" "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ] && [ -n "${started:-}" ]; then
        say "last log lines of each node:"
        for i in $(seq 1 "$nodes"); do
            local cid
            cid="$(dc ps -q "node-$i" 2>/dev/null || true)"
            [ -n "$cid" ] || continue
            echo "----- node-$i ($(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$cid" 2>/dev/null))"
            docker logs --tail 25 "$cid" 2>&1 | cut -c1-220 || true
        done
    fi
    if [ -n "${started:-}" ]; then
        say "cleanup: ${compose[*]} -p $project down -v"
        dc down -v --remove-orphans --timeout 30 >"$work/down.log" 2>&1 || {
            cat "$work/down.log"
            say "cleanup: compose down failed"
        }
    fi
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then say "PASS"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- phase 0: image, secret, ports --------------------------------------------------------
if [ "$build" = 1 ]; then
    say "phase 0: build the image $image"
    args=(--tag "$image")
    [ -n "$binary" ] && args+=(--binary "$binary")
    "$here/build-image.sh" "${args[@]}" >"$work/build.log" 2>&1 || {
        tail -40 "$work/build.log"
        fail "build-image.sh failed"
    }
    grep -E '^\[build-image\] (  lib:|built)|^haseqd ' "$work/build.log" | sed 's/^/    /'
else
    docker image inspect "$image" >/dev/null 2>&1 || fail "image $image not found (drop --no-build)"
    say "phase 0: using the existing image $image"
fi

secret="$work/cluster.secret"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 "$secret" && chmod 0400 "$secret"   # the container's user, read-only
else
    chmod 0444 "$secret"   # cannot chown without root; the temp directory is ours alone
fi
export HASEQ_CLUSTER_SECRET="$secret" HASEQ_IMAGE="$image"

# Free loopback ports for the published APIs, so the test does not collide with a running
# cluster on 7701-770N.
mapfile -t ports < <(python3 - "$nodes" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PY
)
for i in $(seq 1 "$nodes"); do
    export "HASEQ_NODE_${i}_API_PORT=${ports[$((i - 1))]}"
done

# One probe of every node's /status, concurrently: a line per node,
# "node-i role leader_id term committed_index", or "node-i down - - -".
cat >"$work/probe.py" <<'PY'
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def get(arg):
    name, port = arg.split("=")
    try:
        url = "http://127.0.0.1:%s/status" % port
        with urllib.request.urlopen(url, timeout=1) as r:
            s = json.load(r)
        fields = [s.get("role"), s.get("leader_id") or "-", s.get("term"), s.get("committed_index")]
        return " ".join([name] + [str(f) for f in fields])
    except Exception:
        return name + " down - - -"


with ThreadPoolExecutor(len(sys.argv) - 1) as ex:
    for line in ex.map(get, sys.argv[1:]):
        print(line)
PY
# probe node-1 node-3 ...: the status of the named nodes.
probe() {
    local args=() n
    for n in "$@"; do args+=("$n=${ports[$((${n#node-} - 1))]}"); done
    python3 "$work/probe.py" "${args[@]}"
}

# wait_for_leader TIMEOUT NOT_LEADER CAUGHT_UP NODE...: wait until exactly one of NODE... is
# leader, is not NOT_LEADER ("-" for any), and every other NODE is a follower whose leader_id
# is that leader, all in the leader's term; with CAUGHT_UP=1, also with the leader's committed
# index. Sets $leader and $term; false on timeout.
wait_for_leader() {
    local timeout="$1" not="$2" caught_up="$3"; shift 3
    local t0 out
    t0=$(now)
    while awk -v a="$t0" -v b="$(now)" -v t="$timeout" 'BEGIN { exit !(b - a < t) }'; do
        out="$(probe "$@")"
        if read -r leader term _ < <(awk -v not="$not" -v want="$#" -v caught_up="$caught_up" '
                { n++; role[$1] = $2; lid[$1] = $3; t[$1] = $4; c[$1] = $5
                  if ($2 == "leader") { leaders++; l = $1 } }
                END {
                    if (n != want || leaders != 1 || l == not) exit 1
                    for (x in role) if (x != l && (role[x] != "follower" || lid[x] != l || t[x] != t[l])) exit 1
                    if (caught_up) for (x in role) if (c[x] != c[l]) exit 1
                    print l, t[l], c[l]
                }' <<<"$out"); then
            last_probe="$out"
            return 0
        fi
        last_probe="$out"
        sleep 0.05
    done
    return 1
}
show_probe() { awk '{ printf "    %-7s %-9s leader=%-7s term=%-3s committed=%s\n", $1, $2, $3, $4, $5 }' <<<"$last_probe"; }

all=()
for i in $(seq 1 "$nodes"); do all+=("node-$i"); done

# ---- phase 1: up --------------------------------------------------------------------------
say "phase 1: ${compose[*]} -p $project -f $(basename "$compose_file") up -d ($nodes nodes, API on 127.0.0.1:${ports[*]})"
started=1
dc up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "compose up failed"; }
t_up=$(now)
wait_for_leader "$up_timeout" - 0 "${all[@]}" || {
    show_probe
    fail "no single leader followed by all $nodes nodes within ${up_timeout}s"
}
say "phase 1: leader $leader (term $term) after $(since "$t_up" %.2f)s; all others follow it:"
show_probe
for n in "${all[@]}"; do
    port="${ports[$((${n#node-} - 1))]}"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/health")"
    [ "$code" = 200 ] || fail "$n: GET /health answered $code"
done
leader_port="${ports[$((${leader#node-} - 1))]}"
metrics="$(curl -s --max-time 2 "http://127.0.0.1:$leader_port/metrics")" || fail "$leader: GET /metrics failed"
grep -qx 'haseq_is_leader 1' <<<"$metrics" || fail "$leader: /metrics lacks haseq_is_leader 1"
say "phase 1: GET /health 200 on every node; $leader's /metrics has haseq_is_leader 1"

# ---- phase 2: kill the leader ---------------------------------------------------------------
old_leader="$leader"
old_term="$term"
victim="$(dc ps -q "$old_leader")"
[ -n "$victim" ] || fail "no container for $old_leader"
survivors=()
for n in "${all[@]}"; do [ "$n" = "$old_leader" ] || survivors+=("$n"); done
say "phase 2: docker kill (SIGKILL) $old_leader's container ${victim:0:12}"
t_kill=$(now)
docker kill "$victim" >/dev/null
kill_took=$(since "$t_kill")
wait_for_leader "$failover_timeout" "$old_leader" 0 "${survivors[@]}" || {
    show_probe
    fail "no new leader among ${survivors[*]} within ${failover_timeout}s of the kill"
}
failover=$(since "$t_kill")
[ "$term" -gt "$old_term" ] || fail "new leader $leader in term $term, not above $old_term"
say "phase 2: new leader $leader (term $term, was $old_leader in term $old_term); failover time ${failover}s (from issuing docker kill, which took ${kill_took}s, to all survivors agreeing on the new leader; polled every 50ms)"
show_probe

# ---- phase 3: restart the killed node -------------------------------------------------------
new_leader="$leader"
say "phase 3: docker start $old_leader's container (its raft_dir volume kept)"
docker start "$victim" >/dev/null
t_start_victim=$(now)
wait_for_leader "$rejoin_timeout" - 1 "${all[@]}" || {
    show_probe
    fail "$old_leader did not rejoin as a caught-up follower within ${rejoin_timeout}s"
}
rejoin=$(since "$t_start_victim" %.2f)
[ "$leader" != "$old_leader" ] || fail "$old_leader is leader again right after rejoining"
if [ "$leader" = "$new_leader" ]; then
    say "phase 3: $old_leader follows $leader again, caught up, after ${rejoin}s (leadership unchanged)"
else
    say "phase 3: $old_leader follows $leader, caught up, after ${rejoin}s (leadership moved from $new_leader)"
fi
show_probe

# ---- phase 4: down --------------------------------------------------------------------------
say "phase 4: ${compose[*]} -p $project down -v"
dc down -v --remove-orphans --timeout 30 >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "compose down failed"; }
started=""
left="$(docker ps -a --filter "label=com.docker.compose.project=$project" -q; docker volume ls -q --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "label=com.docker.compose.project=$project")"
[ -z "$left" ] || fail "left behind after down -v: $left"
say "summary: $nodes nodes; first leader $old_leader; failover to $leader in ${failover}s; $old_leader rejoined in ${rejoin}s; nothing left behind"
