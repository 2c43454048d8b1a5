#!/usr/bin/env bash
# The README's metrics screenshot: Debian's prometheus server scraping a local `haseqd devnet`
# (3 nodes, embedded engine), one leadership transfer half-way, then a headless Chromium
# screenshot of Prometheus' graph page showing a few of the dashboard's queries. Grafana
# cannot be installed in haseq's build environment, so the picture is Prometheus' own UI.
#
#   deploy/prometheus/screenshot.sh [HASEQD] [OUT.png]
#     HASEQD   default ${CARGO_TARGET_DIR:-target}/release/haseqd
#     OUT.png  default docs/img/metrics.png
#   HASEQ_SHOT_SECONDS=120   how long the cluster runs before the picture (default 120)
#   HASEQ_SHOT_PORT=29300    first of the ports used (devnet: 6 from here; Prometheus: +10)
#
# Needs prometheus and chromium (installed from Debian when missing and run as root). Not run
# by ./test.sh. Everything it starts is stopped, and its temporary directory removed, on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

haseqd="${1:-${CARGO_TARGET_DIR:-target}/release/haseqd}"
out="${2:-docs/img/metrics.png}"
seconds="${HASEQ_SHOT_SECONDS:-120}"
base="${HASEQ_SHOT_PORT:-29300}"
prom_port=$((base + 10))
[ -x "$haseqd" ] || { echo "screenshot.sh: no haseqd at $haseqd (cargo build --release)" >&2; exit 2; }

need() {
  command -v "$1" >/dev/null && return
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null
  fi
  command -v "$1" >/dev/null || { echo "screenshot.sh: needs $1 (Debian package $2)" >&2; exit 2; }
}
need prometheus prometheus
need chromium chromium

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# devnet: node i (1-based) has its API on base + 2i - 1.
"$haseqd" devnet --nodes 3 --base-port "$base" --block-time 200ms --dir "$work/devnet" \
  --exit-after "$((seconds + 120))s" >"$work/devnet.log" 2>&1 &
pids+=($!)

cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 2s, scrape_timeout: 1s, evaluation_interval: 2s}
rule_files: ["$PWD/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: haseq-devnet
    static_configs:
      - targets: ["127.0.0.1:$((base + 1))"]
        labels: {cluster: "devnet", node: "node-1"}
      - targets: ["127.0.0.1:$((base + 3))"]
        labels: {cluster: "devnet", node: "node-2"}
      - targets: ["127.0.0.1:$((base + 5))"]
        labels: {cluster: "devnet", node: "node-3"}
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

# Bounded waits: the cluster and Prometheus up, then the run, one transfer half-way.
up=""
for _ in $(seq 1 100); do
  if curl -fsS "127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1 &&
     curl -fsS "127.0.0.1:$((base + 1))/status" 2>/dev/null | grep -q '"leader_id":"node'; then
    up=1; break
  fi
  sleep 0.3
done
[ -n "$up" ] || { tail -20 "$work/devnet.log" "$work/prometheus.log" >&2; exit 1; }
echo "cluster and prometheus up; collecting for ${seconds}s"
sleep "$((seconds / 2))"
leader=$(curl -fsS "127.0.0.1:$((base + 1))/status" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["leader_id"].rsplit("-", 1)[1])')
"$haseqd" ctl --api "http://127.0.0.1:$((base + 2 * leader - 1))" transfer-leader
sleep "$((seconds - seconds / 2))"

# The dashboard's queries, its $cluster/$node selectors dropped, ranges as a 2s scrape allows.
sel='{job="haseq-devnet"}'
queries=(
  "max by (node) (haseq_applied_height$sel)"
  "max by (node) (haseq_is_leader$sel)"
  "histogram_quantile(0.99, sum by (node, le) (rate(haseq_commit_latency_seconds_bucket$sel[20s])))"
  "sum by (node) (rate(haseq_blocks_produced_total$sel[20s]))"
)
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
url="http://127.0.0.1:$prom_port/graph?"
for i in "${!queries[@]}"; do
  url+="g$i.expr=$(enc "${queries[$i]}")&g$i.tab=0&g$i.stacked=0&g$i.range_input=$((seconds / 60 + 1))m&"
done
for q in "${queries[@]}"; do
  n=$(curl -fsS "127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$q" |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))')
  echo "series now: $n  $q"
done

mkdir -p "$(dirname "$out")"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size=1280,2950 --virtual-time-budget=15000 --screenshot="$work/shot.png" "$url" \
  >"$work/chromium.log" 2>&1 || { tail -20 "$work/chromium.log" >&2; exit 1; }
# Fewer colours keep the PNG small (a chart page has few), when ImageMagick is there.
if convert -version 2>/dev/null | grep -q ImageMagick; then
  convert "$work/shot.png" -strip -colors 64 "$out"
else
  cp "$work/shot.png" "$out"
fi
echo "wrote $out ($(stat -c %s "$out") bytes)"
