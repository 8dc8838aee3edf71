#!/usr/bin/env bash
# The article's flash sale on `mrr dev` (three regions in one process, 55/75/115 ms one way):
# one item with STOCK units (default 10,000), BUYERS buyers per region (default 16) for SECS
# seconds (default 20), sold `eventual` (a PN-counter on a merge topic: read locally, decrement
# locally), `strong` (an atomic update through the strong tier) and `escrow` (a bounded field:
# decremented locally against the region's rights, which move on their own), in RUNS
# interleaved rounds each (default 3). Prints one JSON line per round (per-region decrement latency, units sold,
# final stock, oversell) and the medians. CUT=1 cuts the coordinator (ap-northeast) off from
# both other regions 5 s into every round for 5 s (CUT_AT, CUT_FOR). Listens on
# 127.0.0.1:17600-17621 only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; STOCK=${STOCK:-10000}; BUYERS=${BUYERS:-16}; SECS=${SECS:-20}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
# `mrr dev` admits this key (and makes the tools it runs send it): one per run unless given.
export MRR_KEY="${MRR_KEY:-mrr_bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
W=$(mktemp -d /tmp/mrr-flash.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT
MRR="$MRR" W="$W" RUNS="$RUNS" STOCK="$STOCK" BUYERS="$BUYERS" SECS="$SECS" python3 bench/flash_sale.py
