#!/usr/bin/env bash
# WAN catch-up of one region after a cut: two `mrr serve` regions behind `mrr wan-proxy`
# (50 ms one way), the path cut while BACKLOG_S seconds of writes at RATE/s pile up, then
# mended; prints how long the reader took to hold every write. PERF=1 also records a CPU
# profile of both nodes during the catch-up (needs `perf`, Debian package linux-perf);
# WINDOW_LOG=file samples changes sent and the lower lanes' window every 50 ms after the mend.
# QUEUE_TARGET=100ms sets lanes.queue_delay_target (default 25ms).
# Listens on 127.0.0.1:26000-26012 only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
RATE=${RATE:-3000}
BACKLOG_S=${BACKLOG_S:-20}
# MRR=path/to/mrr runs another build (e.g. the previous release, side by side).
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
W=$(mktemp -d /tmp/mrr-catchup.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT


mrr_two_region_configs "$W"
$MRR wan-proxy --listen 127.0.0.1:26002 --upstream 127.0.0.1:26011 --delay-ms 50 >/dev/null 2>&1 & P1=$!; PIDS+=($P1)
$MRR wan-proxy --listen 127.0.0.1:26012 --upstream 127.0.0.1:26001 --delay-ms 50 >/dev/null 2>&1 & P2=$!; PIDS+=($P2)
MRR_LOG=warn $MRR serve -c "$W/ap-northeast.yaml" 2>"${DBG_LOG:-$W/a.log}" & A=$!; PIDS+=($A)
MRR_LOG=warn $MRR serve -c "$W/us-west.yaml" 2>"$W/b.log" & B=$!; PIDS+=($B)
for _ in $(seq 1 200); do curl -sf http://127.0.0.1:26010/health >/dev/null && break; sleep 0.05; done
sleep 1
kill -USR1 "$P1" "$P2"
$MRR bench -c "$W/ap-northeast.yaml" --write-share ap-northeast=1,us-west=0 --rate "$RATE" --duration "${BACKLOG_S}s" \
  --concurrency 16 >"$W/bench.log" 2>&1 & BP=$!; PIDS+=($BP)
sleep $((BACKLOG_S + 1))
if [ "${PERF:-0}" = 1 ]; then
  perf record -F 499 -e cpu-clock -g -p "$B" -o perf.reader.data -- sleep 6 >/dev/null 2>&1 & PIDS+=($!)
  perf record -F 499 -e cpu-clock -g -p "$A" -o perf.writer.data -- sleep 6 >/dev/null 2>&1 & PIDS+=($!)
  sleep 0.5
fi
want=$(mrr_applied 26000); behind=$(( want - $(mrr_applied 26010) ))
t0=$(date +%s%3N); kill -USR2 "$P1" "$P2"
if [ -n "${WINDOW_LOG:-}" ]; then
  # ms since the mend, changes sent to the reader so far, the lower lanes' window in bytes.
  (for _ in $(seq 1 100); do
    m=$(curl -s http://127.0.0.1:26000/metrics)
    sent=$(awk '/^mrr_peer_sent_changes_total\{peer="us-west"/ {s += $2} END {printf "%d", s}' <<<"$m")
    win=$(awk '/^mrr_peer_window_bytes\{peer="us-west"/ {print $2}' <<<"$m")
    echo "$(( $(date +%s%3N) - t0 )) $sent $win"; sleep 0.05
  done) >"$WINDOW_LOG" & PIDS+=($!)
fi
for _ in $(seq 1 6000); do [ "$(mrr_applied 26010)" -ge "$want" ] && break; sleep 0.02; done
took=$(( $(date +%s%3N) - t0 ))
# Summed over lanes (one series per lane since lanes exist, one before).
sent=$(curl -s http://127.0.0.1:26000/metrics | awk '/^mrr_peer_sent_bytes_total\{peer="us-west"[,}]/ {s += $2} END {printf "%d", s}')
echo "{\"backlog\":$behind,\"catch_up_ms\":$took,\"changes_per_s\":$(( behind * 1000 / (took > 0 ? took : 1) )),\"bytes_sent_total\":$sent}"
