#!/usr/bin/env bash
# Anti-entropy cost, on three `mrr serve` regions on loopback (no WAN emulation): ap-northeast
# takes RECORDS writes of VALUE_BYTES (default 1000000 x 100), every region applies them, then
#  1. a repair run from ap-northeast with both peers finds nothing (the scrub's cost: every
#     record read and hashed on both sides, the trees exchanged);
#  2. eu-central is stopped, one of its records corrupted on disk (`examples/corrupt_record.rs`,
#     a value changed under its version), and restarted; the run from ap-northeast finds that
#     one record among all of them and has it replaced by the majority's copy.
# Prints, per run, each step's wall time (`mrr repair`'s own elapsed per peer) and the bytes
# exchanged with eu-central. RUNS (default 3) fresh clusters, one after the other. Listens on
# 127.0.0.1:26300-26321 only; stops what it started by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
VALUE_BYTES=${VALUE_BYTES:-100}
RUNS=${RUNS:-3}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
if [ -z "${CORRUPT:-}" ]; then
  cargo build --release -q -p mrr-cli --example corrupt_record; CORRUPT=./target/release/examples/corrupt_record
fi
W=$(mktemp -d /tmp/mrr-anti-entropy.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_DIR:-}" ] || rm -rf "$W"' EXIT
REGIONS=(ap-northeast us-west eu-central)

configs() {
  local k region
  for k in 0 1 2; do
    region=${REGIONS[$k]}
    {
      echo "cluster: bench"
      echo "region: $region"
      echo 'secret: "bench-secret-0123456789"'
      echo "insecure_plaintext: true"
      echo "data_dir: $W/data-$region"
      echo "listen: { api: 127.0.0.1:$((26300 + 10 * k)), peer: 127.0.0.1:$((26301 + 10 * k)) }"
      echo "durability: fsync"
      echo "regions:"
      for j in 0 1 2; do
        echo "  - name: ${REGIONS[$j]}"
        echo "    endpoint: http://127.0.0.1:$((26301 + 10 * j))"
        echo "    api: http://127.0.0.1:$((26300 + 10 * j))"
      done
    } > "$W/$region.yaml"
  done
}

start() { # start K: starts region K, logging to $W/<region>.log; sets PID_K
  MRR_LOG=info,fjall=warn,lsm_tree=warn,openraft=error $MRR serve -c "$W/${REGIONS[$1]}.yaml" >>"$W/${REGIONS[$1]}.log" 2>&1 &
  PIDS+=($!); eval "PID_$1=$!"
}

wait_health() {
  for _ in $(seq 1 2400); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.05; done
  echo "no health on $1" >&2; exit 1
}

applied() { curl -s "http://127.0.0.1:$1/v1/status" | python3 -c "import json,sys; print(sum(json.load(sys.stdin)['applied'].values()))"; }

repair() { # repair OUT [args]: a run from ap-northeast, its JSON report in OUT, wall ms printed
  local out=$1; shift
  local t0; t0=$(date +%s%3N)
  $MRR repair --json -e http://127.0.0.1:26300 "$@" > "$out"
  echo $(( $(date +%s%3N) - t0 ))
}

for run in $(seq 1 "$RUNS"); do
  rm -rf "$W"/data-* "$W"/*.log "$W"/*.json; configs
  for k in 0 1 2; do start $k; done
  for k in 0 1 2; do wait_health $((26300 + 10 * k)); done
  $MRR bench -c "$W/ap-northeast.yaml" --write-share ap-northeast=1 --keys "$RECORDS" --max-ops "$RECORDS" \
    --distribution sequential --value-bytes "$VALUE_BYTES" --concurrency 32 --duration 1800s > "$W/fill.log" 2>&1 || true
  want=$(applied 26300)
  for port in 26310 26320; do until [ "$(applied $port)" -ge "$want" ]; do sleep 0.2; done; done

  clean_ms=$(repair "$W/clean.json")

  kill "$PID_2"; wait "$PID_2" 2>/dev/null || true
  key=$(curl -s "http://127.0.0.1:26320/v1/records/bench?limit=1" 2>/dev/null | python3 -c "import json,sys; print('bench/'+json.load(sys.stdin)['records'][0]['id'])" 2>/dev/null \
    || curl -s "http://127.0.0.1:26300/v1/records/bench?limit=1" | python3 -c "import json,sys; r=json.load(sys.stdin)['records']; print('bench/'+r[len(r)//2]['id'])")
  $CORRUPT "$W/data-eu-central" "$key" change >/dev/null
  start 2; wait_health 26320
  sleep 2 # let eu-central's peers reconnect: the run compares with every peer that answers
  bad_ms=$(repair "$W/bad.json")

  python3 - "$run" "$RECORDS" "$clean_ms" "$bad_ms" "$W/clean.json" "$W/bad.json" "$key" <<'PY'
import json, sys
run, records, clean_ms, bad_ms, clean, bad, key = sys.argv[1:]
clean, bad = json.load(open(clean)), json.load(open(bad))
def eu(r): return next(p for p in r["peers"] if p["peer"] == "eu-central")
c, b = eu(clean), eu(bad)
assert c["keys_differing"] == 0 and not c["error"], c
assert b["repaired_there"] == [key], b
print(f"run {run}: {records} records; nothing to find: {int(clean_ms)/1000:.2f} s "
      f"({c['records_here']} compared with eu-central in {c['elapsed_ms']/1000:.2f} s, {c['bytes_sent']} B sent, {c['bytes_received']} B received); "
      f"one bad record: {int(bad_ms)/1000:.2f} s (eu-central {b['elapsed_ms']/1000:.2f} s, {b['buckets_differing']} bucket, "
      f"{b['bytes_sent']} B sent, {b['bytes_received']} B received), {key} repaired in eu-central")
PY
  for k in 0 1 2; do eval "p=\$PID_$k"; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
done
