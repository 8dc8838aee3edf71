#!/usr/bin/env bash
# The one read-only gate: formatting, lints, tests. CI runs exactly this (.ci/run), and so do you.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: '$1' not found. $2" >&2
    exit 2
  fi
}
need cargo "Install Rust with rustup (https://rustup.rs), then run this again."
if ! cargo fmt --version >/dev/null 2>&1; then
  echo "error: rustfmt missing. Install it with: rustup component add rustfmt" >&2; exit 2
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "error: clippy missing. Install it with: rustup component add clippy" >&2; exit 2
fi

# The metrics test validates /metrics with promtool (Debian package `prometheus`).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing promtool (apt-get install prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "error: promtool not found. Install it with: sudo apt-get install prometheus" >&2
    exit 2
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --all-targets 2>&1 | tee "$log"
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "== fuzz (each target ${FUZZ_SECS:-20} s from its corpus; scripts/fuzz.sh)"
SECS=${FUZZ_SECS:-20} ./scripts/fuzz.sh
