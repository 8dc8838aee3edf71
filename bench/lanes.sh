#!/usr/bin/env bash
# Urgent lag behind a bulk backlog on a capped link, with and without lanes. Two `mrr serve`
# regions whose emulated link ap-northeast -> us-west has 50 ms of delay and a 256 kB/s cap
# (us-west -> ap-northeast: 50 ms, uncapped). Per run and per mode, a fresh pair; BULK
# changes are queued, then URGENT writes are made one every 100 ms while they drain (without
# waiting for earlier ones), and each one's lag is the time from its acknowledgement to its
# first read in us-west (polled every 2 ms). Modes, in the same run:
#   lanes:   the backlog carries syncFlags [BULK], the probes [SYNC_PRIORITY=1];
#   one-lane: neither carries flags (every change in the normal lane: a single FIFO stream,
#            which is what replication was before lanes).
# Listens on 127.0.0.1:26100-26111 only; stops what it started by its pid.
# QUEUE_TARGET=100ms sets lanes.queue_delay_target (default 25ms); MODES=lanes runs one mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
RUNS=${RUNS:-3}
BULK=${BULK:-20000}
URGENT=${URGENT:-50}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
W=$(mktemp -d /tmp/mrr-lanes.XXXXXX)
PIDS=()
cleanup() { [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

configs() {
  local dir=$1 region api peer link
  for region in ap-northeast us-west; do
    if [ "$region" = ap-northeast ]; then
      api=26100; peer=26101; link='{ us-west: { delay_ms: 50, bandwidth_bytes_per_s: 262144 } }'
    else
      api=26110; peer=26111; link='{ ap-northeast: { delay_ms: 50 } }'
    fi
    cat > "$dir/$region.yaml" <<CONF
cluster: lanes-bench
region: $region
secret: "bench-secret-0123456789"
insecure_plaintext: true
data_dir: $dir/mrr-$region
listen: { api: 127.0.0.1:$api, peer: 127.0.0.1:$peer }
durability: fsync
links: $link
$(mrr_lanes_config)
regions:
  - name: ap-northeast
    endpoint: http://127.0.0.1:26101
  - name: us-west
    endpoint: http://127.0.0.1:26111
CONF
  done
}

for run in $(seq 1 "$RUNS"); do
  for mode in ${MODES:-lanes one-lane}; do
    d="$W/$run-$mode"; mkdir -p "$d"; configs "$d"
    MRR_LOG=warn $MRR serve -c "$d/ap-northeast.yaml" 2>"$d/a.log" & A=$!; PIDS+=("$A")
    MRR_LOG=warn $MRR serve -c "$d/us-west.yaml" 2>"$d/b.log" & B=$!; PIDS+=("$B")
    for _ in $(seq 1 200); do
      curl -sf http://127.0.0.1:26100/health >/dev/null && curl -sf http://127.0.0.1:26110/health >/dev/null && break
      sleep 0.05
    done
    python3 bench/lanes_probe.py --run "$run" --mode "$mode" --bulk "$BULK" --urgent "$URGENT" \
      --writer http://127.0.0.1:26100 --reader http://127.0.0.1:26110
    kill "$A" "$B"; wait "$A" "$B" 2>/dev/null || true
    PIDS=()
  done
done
