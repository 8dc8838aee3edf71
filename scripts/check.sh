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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
