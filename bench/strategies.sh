#!/usr/bin/env bash
# Cost of each conflict rule on the write path: closed-loop durable writes to a `timestamp`
# topic (bench), a `merge` topic (profiles) and a `custom` topic (orders, the sample handler)
# of `mrr dev`, side by side. RUNS fresh clusters; each runs the three topics in a rotated
# order so that none always goes first on an empty store. Listens on 127.0.0.1:27100-27321
# only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
MRR=./target/release/mrr
# `mrr dev` admits this key (and makes the tools it runs send it): one per run unless given.
export MRR_KEY="${MRR_KEY:-mrr_bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
cargo build --release -q -p mrr-cli
W=$(mktemp -d /tmp/mrr-strategies.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"' EXIT
ORDERS=("bench profiles orders" "profiles orders bench" "orders bench profiles")
for run in $(seq 1 "$RUNS"); do
  dir="$W/run$run"
  "$MRR" dev --base-port $((27000 + run * 100)) --data-dir "$dir" > "$W/dev$run.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 150); do grep -q "cluster is up" "$W/dev$run.log" && break; sleep 0.2; done
  grep -q "cluster is up" "$W/dev$run.log" || { echo "dev cluster did not start:" >&2; cat "$W/dev$run.log" >&2; exit 1; }
  for topic in ${ORDERS[$(( (run - 1) % 3 ))]}; do
    "$MRR" bench -c "$dir/configs/ap-northeast.yaml" --topic "$topic" --duration "$DURATION" \
      --concurrency 16 --seed "$run" > "$W/$topic-$run.txt"
    rate=$(grep -o '([0-9]*/s)' "$W/$topic-$run.txt" | tr -d '(/s)')
    p50=$(awk -F'|' '/write latency/ {gsub(/ /,"",$4); print $4}' "$W/$topic-$run.txt")
    echo "run $run topic $topic writes/s $rate write-p50-ms $p50"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
