#!/usr/bin/env bash
# Does strong load slow the eventual tier? Three `mrr serve` processes at `mrr dev`'s delays
# (55/75/115 ms one way), RATE eventual writes/s from all regions (`mrr bench`, default 300) for
# SECS seconds per round (default 20), in RUNS interleaved rounds of each mode (default 5):
# "off" is the eventual load alone, "on" adds STRONG_CONC strong writers at the coordinator
# (`mrr strong-bench`, default 16). Reports the cross-region lag p99 per pair, its median per
# mode, and the CPU seconds the three nodes used per round. Listens on 127.0.0.1:17300-17322
# only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}; RATE=${RATE:-300}; SECS=${SECS:-20}; STRONG_CONC=${STRONG_CONC:-16}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
# `mrr dev` admits this key (and makes the tools it runs send it): one per run unless given.
export MRR_KEY="${MRR_KEY:-mrr_bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
W=$(mktemp -d /tmp/mrr-strong-lag.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT
MRR="$MRR" W="$W" RUNS="$RUNS" RATE="$RATE" SECS="$SECS" STRONG_CONC="$STRONG_CONC" python3 bench/strong_lag.py
