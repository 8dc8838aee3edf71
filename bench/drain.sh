#!/usr/bin/env bash
# Does replication keep up after a burst? Three `mrr serve` regions at `mrr dev`'s delays
# (55/75/115 ms one way), a closed-loop load from every region (`mrr bench --keys 20000
# --concurrency 32 --value-bytes 200`, first --max-ops 40000 then OPS, default 400000), then
# every second: each region's backlog to each peer, its window, base RTT and queue estimate,
# until every backlog is 0 or DRAIN_S (300) seconds pass. Prints the seconds each burst took
# to drain after its load ended. TRACE=file appends per-second samples
# (seconds since the burst started, ops, api port, peer, backlog, window, base RTT ms, queue ms).
# Listens on 127.0.0.1:7800-7821 only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
OPS=${OPS:-400000}
DRAIN_S=${DRAIN_S:-300}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
# `mrr dev` admits this key (and makes the tools it runs send it): one per run unless given.
export MRR_KEY="${MRR_KEY:-mrr_bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
W=$(mktemp -d /tmp/mrr-drain.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
$MRR dev --write-configs "$W/cluster" >/dev/null
for r in ap-northeast us-west eu-central; do
  MRR_LOG=warn $MRR serve -c "$W/cluster/$r.yaml" 2>"$W/$r.log" & PIDS+=($!)
done
for port in 7800 7810 7820; do
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
done
sleep 2

# sample: one line per (region, peer): backlog window base_rtt queue
sample() {
  for port in 7800 7810 7820; do
    curl -s "http://127.0.0.1:$port/metrics" | python3 -c '
import sys, re
port = sys.argv[1]
m = {}
for line in sys.stdin:
    g = re.match(r"(mrr_peer_(backlog_changes|window_bytes|base_rtt_seconds|queue_delay_seconds))\{peer=\"([^\"]+)\"\} (\S+)", line)
    if g:
        m.setdefault(g.group(3), {})[g.group(2)] = float(g.group(4))
for peer, v in sorted(m.items()):
    print(port, peer, int(v.get("backlog_changes", 0)), int(v.get("window_bytes", 0)),
          round(v.get("base_rtt_seconds", 0) * 1000), round(v.get("queue_delay_seconds", 0) * 1000))
' "$port"
  done
}

burst() {
  local ops=$1 backlog sampler=
  if [ -n "${TRACE:-}" ]; then
    (t0=$(date +%s); while :; do sample | sed "s/^/$(( $(date +%s) - t0 )) $ops /" >>"$TRACE"; sleep 1; done) &
    sampler=$!; PIDS+=($sampler)
  fi
  if $MRR bench -c "$W/cluster/ap-northeast.yaml" --keys 20000 --max-ops "$ops" --concurrency 32 \
    --value-bytes 200 --duration 600s --markdown "$W/bench-$ops.md" >"$W/bench-$ops.log" 2>&1; then
    echo "burst of $ops: $(grep -oE 'writes: [0-9]+ \([0-9]+/s\)' "$W/bench-$ops.md"); $(grep -oE 'all regions caught up [0-9.]+ s after the last ack' "$W/bench-$ops.md")"
    [ -z "$sampler" ] || kill "$sampler"
    return
  fi
  # mrr bench waited 120 s after its last ack; go on watching the backlog.
  echo "burst of $ops: $(tail -1 "$W/bench-$ops.log")"
  for s in $(seq 0 "$DRAIN_S"); do
    backlog=$(sample | awk '{b += $3} END {print b + 0}')
    if [ "$backlog" = 0 ]; then echo "  drained $((120 + s)) s after the last ack"; return; fi
    if [ $((s % 10)) = 0 ]; then sample | sed "s/^/  t=$((120 + s))s /"; fi
    sleep 1
  done
  echo "  still $backlog behind $((120 + DRAIN_S)) s after the last ack"
  [ -z "$sampler" ] || kill "$sampler"
}
burst 40000
burst "$OPS"
