#!/usr/bin/env bash
# haseq's whole test suite: formatting, lints, every crate's tests (storage suite, crash
# safety, in-process and multi-process clusters), then the acceptance floor against release
# builds. Needs only the Rust toolchain (and python3 for the acceptance floor, skipped with a
# notice when ../shared/acceptance is absent).
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
echo
echo "all tests passed"
