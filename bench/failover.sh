#!/usr/bin/env bash
# Coordinator failover on three `mrr serve` processes at `mrr dev`'s delays (55/75/115 ms one
# way): kill -9 the coordinator KILLS times (default 20); each time, the time from the kill until
# both survivors name the same new coordinator (polled every 10 ms on /v1/cluster/coordinator),
# then restart it and wait for leadership to return (consensus.return_after_ms: 1000 here).
# Prints every failover and p50/p99/max. Listens on 127.0.0.1:7800-7821 only; stops what it
# started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${KILLS:-20}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
# `mrr dev` admits this key (and makes the tools it runs send it): one per run unless given.
export MRR_KEY="${MRR_KEY:-mrr_bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
W=$(mktemp -d /tmp/mrr-failover.XXXXXX)
trap 'rm -rf "$W"' EXIT
$MRR dev --write-configs "$W/cluster" >/dev/null
for r in ap-northeast us-west eu-central; do
  python3 - "$W/cluster/$r.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read().replace("consensus:\n", "consensus:\n  return_after_ms: 1000\n")
open(p, "w").write(s)
PY
done
MRR="$MRR" W="$W" KILLS="$KILLS" python3 bench/failover.py
