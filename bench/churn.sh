#!/usr/bin/env bash
# Disk under churn: three `mrr serve` regions (the `mrr dev` layout, WAN delays 55/75/115 ms, on
# 127.0.0.1:26200-26221) take a steady open-loop load of overwrites and deletes of a fixed key
# set (`mrr bench --rate RATE --keys KEYS --delete-ratio DELETE_RATIO`) for DURATION, all
# regions up. Every SAMPLE_S seconds it prints, per region, the data directory's size on disk
# against the live data (what a client can read: the id and payload of every record not
# deleted, as `GET /v1/records/bench` lists them at ap-northeast), with the changelog's bytes
# and the held tombstones from /metrics.
#   KEYS=200000 VALUE_BYTES=500 RATE=1000 DURATION=60m DELETE_RATIO=0.2 SAMPLE_S=300 bash bench/churn.sh
# Stops what it started by pid; KEEP_DIR=1 keeps the data and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-200000}
VALUE_BYTES=${VALUE_BYTES:-500}
RATE=${RATE:-1000}
DURATION=${DURATION:-60m}
DELETE_RATIO=${DELETE_RATIO:-0.2}
SAMPLE_S=${SAMPLE_S:-300}
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
W=$(mktemp -d /tmp/mrr-churn.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_DIR:-}" ] || rm -rf "$W"' EXIT
REGIONS=(ap-northeast us-west eu-central)
$MRR dev --write-configs "$W/configs" --base-port 26200 --data-dir "$W/data" >/dev/null
export MRR_KEY
MRR_KEY=$(cat "$W/configs/admin.key")
for r in "${REGIONS[@]}"; do
  MRR_LOG=info,fjall=warn,lsm_tree=warn,openraft=error $MRR serve -c "$W/configs/$r.yaml" >>"$W/$r.log" 2>&1 &
  PIDS+=($!)
done
for port in 26200 26210 26220; do
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done

# live_bytes: the id and payload bytes of every record ap-northeast lists (deleted ones are not).
live_bytes() {
  python3 - "$MRR_KEY" <<'PY'
import json, sys, urllib.request
key, after, total, n = sys.argv[1], "", 0, 0
while True:
    url = "http://127.0.0.1:26200/v1/records/bench?limit=1000" + (f"&after={after}" if after else "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    page = json.load(urllib.request.urlopen(req, timeout=30))
    records = page.get("records", [])
    for r in records:
        total += len(r["id"]) + len(json.dumps(r["value"], separators=(",", ":")))
        n += 1
    after = page.get("next_after") or page.get("next")
    if not records or not after:
        break
print(n, total)
PY
}

# metric PORT NAME: one unlabelled sample of /metrics.
metric() {
  curl -s -H "Authorization: Bearer $MRR_KEY" "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2; exit }'
}

sample() {
  local t=$1 live n port dir disk
  read -r n live < <(live_bytes)
  for k in 0 1 2; do
    port=$((26200 + 10 * k)); dir="$W/data/${REGIONS[$k]}"
    disk=$(du -sb "$dir" | cut -f1)
    awk -v t="$t" -v r="${REGIONS[$k]}" -v disk="$disk" -v live="$live" -v n="$n" \
      -v clog="$(metric $port mrr_changelog_bytes)" -v tomb="$(metric $port mrr_tombstones)" 'BEGIN {
        printf "%6d s  %-12s disk %7.1f MB  live %6.1f MB (%d records)  disk/live %5.2f  changelog %6.1f MB  tombstones %d\n",
          t, r, disk / 1e6, live / 1e6, n, disk / (live > 0 ? live : 1), clog / 1e6, tomb }'
  done
}

echo "churn: $KEYS keys of $VALUE_BYTES B, $RATE writes/s over three regions, $DELETE_RATIO of them deletes, for $DURATION"
start=$(date +%s)
$MRR bench -c "$W/configs/ap-northeast.yaml" --rate "$RATE" --duration "$DURATION" --keys "$KEYS" \
  --value-bytes "$VALUE_BYTES" --delete-ratio "$DELETE_RATIO" --concurrency 16 --markdown "$W/bench.md" >"$W/bench.out" 2>&1 &
BENCH=$!
PIDS+=($BENCH)
while kill -0 "$BENCH" 2>/dev/null; do
  for _ in $(seq 1 "$SAMPLE_S"); do kill -0 "$BENCH" 2>/dev/null || break; sleep 1; done
  sample $(( $(date +%s) - start ))
done
wait "$BENCH" || { cat "$W/bench.out"; exit 1; }
# Retention catches up within a few seconds of the load's end: the last sample after it.
sleep 10
sample $(( $(date +%s) - start ))
cat "$W/bench.md"
