#!/usr/bin/env bash
# Snapshot bootstrap against catch-up from the log, on two `mrr serve` regions on loopback (no
# WAN emulation): ap-northeast takes RECORDS writes of VALUE_BYTES (default 200000 x 500), then
#  1. us-west is killed, ap-northeast takes CATCHUP more writes (default 100000), us-west is
#     restarted on its data and timed until it holds every write (the log catch-up rate);
#  2. us-west is killed, its data directory wiped, and restarted: it installs a snapshot of
#     ap-northeast (records, bytes and seconds from its log's "snapshot installed" line) while a
#     closed-loop load runs on ap-northeast for LOAD_S seconds (default 15), whose rate is
#     compared with the same load's rate before the wipe.
# RUNS (default 3) fresh clusters, one after the other; prints one line per run. Listens on
# 127.0.0.1:26100-26111 only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-200000}
VALUE_BYTES=${VALUE_BYTES:-500}
CATCHUP=${CATCHUP:-100000}
LOAD_S=${LOAD_S:-15}
RUNS=${RUNS:-3}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
W=$(mktemp -d /tmp/mrr-bootstrap.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_DIR:-}" ] || rm -rf "$W"' EXIT

configs() {
  local region api peer
  for region in ap-northeast us-west; do
    if [ "$region" = ap-northeast ]; then api=26100; peer=26101; else api=26110; peer=26111; fi
    cat > "$W/$region.yaml" <<CONF
cluster: bench
region: $region
secret: "bench-secret-0123456789"
insecure_plaintext: true
data_dir: $W/data-$region
listen: { api: 127.0.0.1:$api, peer: 127.0.0.1:$peer }
durability: fsync
regions:
  - name: ap-northeast
    endpoint: http://127.0.0.1:26101
    api: http://127.0.0.1:26100
  - name: us-west
    endpoint: http://127.0.0.1:26111
    api: http://127.0.0.1:26110
CONF
  done
  # The donor alone, for a load that must not wait on the region being bootstrapped.
  sed '/  - name: us-west/,$d' "$W/ap-northeast.yaml" > "$W/solo.yaml"
}

# applied PORT: the sum of the region's applied vector.
applied() {
  curl -s "http://127.0.0.1:$1/v1/status" | python3 -c "import json,sys; print(sum(json.load(sys.stdin)['applied'].values()))"
}

start() { # start REGION: starts it, logging at info to $W/REGION.log; sets PID_<region>
  MRR_LOG=info,fjall=warn,lsm_tree=warn,openraft=error $MRR serve -c "$W/$1.yaml" >>"$W/$1.log" 2>&1 &
  PIDS+=($!); eval "PID_${1//-/_}=$!"
}

wait_health() {
  for _ in $(seq 1 2400); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.05; done
  echo "no health on $1" >&2; exit 1
}

load() { # load CONFIG OPS KEYS OUT [extra bench args]: writes at ap-northeast only
  local config=$1 ops=$2 keys=$3 out=$4; shift 4
  $MRR bench -c "$config" --write-share ap-northeast=1 --keys "$keys" --max-ops "$ops" \
    --value-bytes "$VALUE_BYTES" --concurrency 32 --markdown "$out" "$@" >"$out.log" 2>&1 || true
}

rate_of() { { grep -oE 'writes: [0-9]+ \(([0-9]+)/s\)' "$1" | grep -oE '\([0-9]+' | tr -d '(' ; } || echo 0; }

for run in $(seq 1 "$RUNS"); do
  rm -rf "$W"/data-* "$W"/*.log "$W"/*.md; configs
  start ap-northeast; start us-west; wait_health 26100; wait_health 26110
  load "$W/ap-northeast.yaml" "$RECORDS" "$RECORDS" "$W/fill.md" --duration 900s
  # The donor's closed-loop rate without a bootstrap, for the comparison below.
  load "$W/solo.yaml" 10000000 "$RECORDS" "$W/before.md" --duration "${LOAD_S}s"

  # 1. Catch-up from the log.
  kill -9 "$PID_us_west"; wait "$PID_us_west" 2>/dev/null || true
  load "$W/solo.yaml" "$CATCHUP" "$RECORDS" "$W/catchup.md" --duration 900s
  want=$(applied 26100); t0=$(date +%s%3N); start us-west; wait_health 26110
  until [ "$(applied 26110)" -ge "$want" ]; do sleep 0.05; done
  catchup_ms=$(( $(date +%s%3N) - t0 ))
  behind=$CATCHUP

  # 2. Snapshot bootstrap of a wiped directory, under load at the donor.
  kill -9 "$PID_us_west"; wait "$PID_us_west" 2>/dev/null || true
  rm -rf "$W/data-us-west"
  : > "$W/us-west.log"
  load "$W/solo.yaml" 10000000 "$RECORDS" "$W/during.md" --duration "${LOAD_S}s" & LP=$!; PIDS+=($LP)
  sleep 1
  start us-west
  wait "$LP" || true
  wait_health 26110
  cp "$W/during.md.log" "$W/during.keep" 2>/dev/null || true
  line=$(grep -m1 'snapshot installed' "$W/us-west.log" || true)
  records=$(echo "$line" | grep -oE 'records=[0-9]+' | cut -d= -f2 || true)
  bytes=$(echo "$line" | grep -oE 'bytes=[0-9]+' | cut -d= -f2 || true)
  ms=$(echo "$line" | grep -oE 'elapsed_ms=[0-9]+' | cut -d= -f2 || true)
  if [ -z "$ms" ]; then echo "run $run: no snapshot installed:"; tail -20 "$W/us-west.log"; exit 1; fi
  python3 - "$run" "$records" "$bytes" "$ms" "$behind" "$catchup_ms" "$(rate_of "$W/before.md")" "$(rate_of "$W/during.md")" <<'PY'
import sys
run, records, nbytes, ms, behind, cms, before, during = sys.argv[1:]
records, nbytes, ms, behind, cms = int(records), int(nbytes), max(int(ms), 1), int(behind), max(int(cms), 1)
snap = records / (ms / 1000)
log = behind / (cms / 1000)
print(f"run {run}: snapshot {records} records, {nbytes/1e6:.1f} MB in {ms/1000:.2f} s = {nbytes/1e6/(ms/1000):.1f} MB/s, "
      f"{snap:.0f} records/s; log catch-up {behind} changes in {cms/1000:.2f} s = {log:.0f} changes/s "
      f"(snapshot/log {snap/log:.2f}); donor writes/s before {before}, during {during} ({int(during)/max(int(before),1):.2f})")
PY
  kill "$PID_ap_northeast" "$PID_us_west" 2>/dev/null || true
  wait "$PID_ap_northeast" "$PID_us_west" 2>/dev/null || true
done
