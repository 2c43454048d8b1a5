#!/usr/bin/env bash
# haseq's whole test suite: formatting, lints, every crate's tests (storage suite, crash
# safety, in-process and multi-process clusters), then the acceptance floor against release
# builds, then the timing advisor against real latency between network namespaces. Needs only
# the Rust toolchain (and python3 for the acceptance floor, skipped with a notice when
# ../shared/acceptance is absent; root, iproute2 and python3 for the network-namespace step,
# skipped with a notice elsewhere; promtool, installed from Debian when root, for the
# Prometheus rules and bin/tests/metrics_promtool.rs, skipped with a notice elsewhere; root
# and a Docker engine for the compose chaos step, skipped with a notice elsewhere).
set -euo pipefail
cd "$(dirname "$0")"

# Warnings are errors everywhere, set once so every cargo step shares one build cache.
export RUSTFLAGS="${RUSTFLAGS:--D warnings}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
jobs="${HASEQ_TEST_JOBS:-2}"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets"
cargo clippy --workspace --all-targets -- -D warnings

# Before cargo test: bin/tests/metrics_promtool.rs pipes a live node's /metrics through the
# promtool exported here (Debian's prometheus package, installed when missing).
step "promtool: rules, rule tests, scrape configs"
if ! command -v promtool >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  apt_get() { DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null; }
  apt_get install -y --no-install-recommends prometheus ||
    { apt_get update && apt_get install -y --no-install-recommends prometheus; }
fi
if command -v promtool >/dev/null; then
  export HASEQ_PROMTOOL="$(command -v promtool)"
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts.test.yml
  promtool check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus.compose.yml
else
  echo "notice: no promtool (needs root and apt-get to install Debian's prometheus); skipped"
fi

step "cargo test"
# Cluster tests bind loopback ports and time elections: run test binaries one at a time and
# at most $jobs tests in each, so a busy 2-core machine doesn't starve heartbeats.
cargo test --workspace --no-fail-fast -- --test-threads="$jobs"

step "cargo build --release"
cargo build --release --bin haseqd

acceptance=../shared/acceptance/check.py
if [ -f "$acceptance" ]; then
  for what in ${HASEQ_ACCEPTANCE:-foundation blocks leadership}; do
    step "acceptance: $what"
    python3 "$acceptance" "$what"
  done
else
  echo "notice: $acceptance not found; acceptance floor skipped"
fi

# Three release nodes in network namespaces, 40 ms put on one node's link: the timing advisor
# must call the guide's timings too tight and name that node (deploy/netns/timing-advisor.sh).
step "netns: timing advisor under real latency"
probe_ns="haseq-probe-$$"
if [ "$(id -u)" -ne 0 ]; then
  echo "notice: not root; network-namespace timing test skipped"
elif ! command -v ip >/dev/null || ! ip netns add "$probe_ns" 2>/dev/null; then
  echo "notice: ip netns unavailable; network-namespace timing test skipped"
else
  ip netns del "$probe_ns"
  deploy/netns/timing-advisor.sh "${CARGO_TARGET_DIR:-target}/release/haseqd"
fi

# Chaos across containers: the FROM-scratch image of the release binary, then a 3-node and a
# 5-node compose cluster through leader kills, pause, network cuts, partitions, rolling
# restarts, a whole-cluster crash and one slow link, each step checked for S1-S3 across the
# nodes (deploy/docker/chaos.py). HASEQ_CHAOS=0 skips it.
step "compose chaos: 3 and 5 nodes"
if [ "${HASEQ_CHAOS:-1}" = 0 ]; then
  echo "notice: HASEQ_CHAOS=0; compose chaos skipped"
elif [ "$(id -u)" -ne 0 ] || ! docker info >/dev/null 2>&1; then
  echo "notice: needs root and a Docker engine; compose chaos skipped"
elif ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
  echo "notice: no docker compose or docker-compose; compose chaos skipped"
else
  chaos_image="haseqd:test-$$"
  trap 'docker rmi -f "$chaos_image" >/dev/null 2>&1 || true' EXIT
  deploy/docker/build-image.sh --binary "${CARGO_TARGET_DIR:-target}/release/haseqd" \
    --tag "$chaos_image" | tail -n 3
  echo "image $chaos_image: $(docker image inspect -f '{{.Size}}' "$chaos_image") bytes"
  python3 deploy/docker/chaos.py --nodes 3 --image "$chaos_image"
  python3 deploy/docker/chaos.py --nodes 5 --image "$chaos_image" --kills 5 \
    --scenarios kill,pause,partition,rolling,latency
fi
echo
echo "all tests passed"
