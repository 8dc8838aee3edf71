#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer) for SECS seconds each (default 30),
# from its committed corpus; new inputs the fuzzer finds go to a scratch copy, not the repo.
# A crash leaves its input in fuzz/artifacts/<target>/ and exits non-zero.
#   ./scripts/fuzz.sh            # every target, 30 s each
#   SECS=1800 ./scripts/fuzz.sh peer_batch
#   NEW_CORPUS=/tmp/found SECS=1800 ./scripts/fuzz.sh   # keep what it finds, to merge into
#     fuzz/corpus with: cargo +nightly fuzz cmin --fuzz-dir fuzz <target> /tmp/found/<target>
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz (installed
# here when missing: cargo install cargo-fuzz --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-30}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: the fuzz targets need Rust nightly: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(peer_batch handshake config request_json)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
found=${NEW_CORPUS:-$scratch}
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${SECS}s"
  mkdir -p "$found/$t"
  # The first corpus directory receives new inputs (a scratch one unless NEW_CORPUS is set);
  # the committed one is only read.
  rc=0
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$found/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E 'DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|panicked|ERROR|deadly' "$scratch/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$scratch/$t.log" >&2
    echo "error: fuzz target $t failed; its input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
