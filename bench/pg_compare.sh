#!/usr/bin/env bash
# MRR vs PostgreSQL 15 logical replication, side by side, same machine, same run.
#
# Both systems replicate one writer region to one reader region through the same emulated WAN:
# `mrr wan-proxy`, 50 ms one way in each direction (kernel netem is not available everywhere).
# Same record size (100-byte payload), same durability (fsync before ack: PostgreSQL
# synchronous_commit=on, fsync=on; MRR durability: fsync). Three measures per system:
#   1. replication lag p50/p99 at 1,000 writes/s offered for 30 s,
#   2. the highest sustained durable write rate (closed loop, 16 clients, 30 s),
#   3. catch-up rate after the reader was cut off for 60 s while 1,000 writes/s continued.
# Prints one JSON line per measure and system; RUNS (default 3) repeats everything.
#
# Needs root (PostgreSQL runs as the `postgres` user), postgresql-15 and python3; installs
# postgresql-15 with apt-get when it is missing. Listens on 127.0.0.1 ports 25432-25434 and
# 26000-26012 only. Every process it starts is stopped by its own pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

RUNS=${RUNS:-3}
RATE=${RATE:-1000}
DURATION_S=${DURATION_S:-30}
CUT_S=${CUT_S:-60}
DELAY_MS=${DELAY_MS:-50}
PGBIN=/usr/lib/postgresql/15/bin
MRR=./target/release/mrr

if [ ! -x "$PGBIN/postgres" ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "error: PostgreSQL 15 missing: sudo apt-get install postgresql-15" >&2; exit 2
  fi
fi
[ "$(id -u)" = 0 ] || { echo "error: run as root (PostgreSQL is started as user postgres)" >&2; exit 2; }
cargo build --release -q -p mrr-cli

WORK=$(mktemp -d /tmp/mrr-pgcmp.XXXXXX)
chmod 755 "$WORK"
chown postgres "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for d in pub sub; do
    [ -d "$WORK/$d" ] && su postgres -c "$PGBIN/pg_ctl -D $WORK/$d -m immediate stop" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
psql_pub() { su postgres -c "psql -X -q -A -t -h 127.0.0.1 -p 25432 -d postgres -c \"$1\""; }
psql_sub() { su postgres -c "psql -X -q -A -t -h 127.0.0.1 -p 25433 -d postgres -c \"$1\""; }

proxy() { # listen upstream: starts a proxy, leaves its pid in PROXY_PID
  $MRR wan-proxy --listen "$1" --upstream "$2" --delay-ms "$DELAY_MS" >/dev/null 2>>"$WORK/proxy.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
}

pg_setup() {
  for d in pub sub; do
    rm -rf "${WORK:?}/$d"
    su postgres -c "$PGBIN/initdb -D $WORK/$d -A trust -U postgres" >/dev/null
  done
  cat >> "$WORK/pub/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 25432
unix_socket_directories = '$WORK'
wal_level = logical
synchronous_commit = on
fsync = on
max_connections = 64
CONF
  cat >> "$WORK/sub/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 25433
unix_socket_directories = '$WORK'
synchronous_commit = on
fsync = on
CONF
  for d in pub sub; do su postgres -c "$PGBIN/pg_ctl -D $WORK/$d -l $WORK/$d.log -w start" >/dev/null; done
  proxy 127.0.0.1:25434 127.0.0.1:25432; PG_PROXY=$PROXY_PID
  psql_pub "create table t (id bigserial primary key, payload text not null, written_at timestamptz not null default clock_timestamp()); create publication p for table t;"
  psql_sub "create table t (id bigint primary key, payload text not null, written_at timestamptz not null, applied_at timestamptz not null default clock_timestamp());"
  psql_sub "create subscription s connection 'host=127.0.0.1 port=25434 dbname=postgres user=postgres' publication p;"
  echo "insert into t(payload) values (repeat('x', 100));" > "$WORK/ins.sql"
  chmod 644 "$WORK/ins.sql"
}

pg_wait_caught_up() { # until the subscriber has every row
  local want; want=$(psql_pub "select count(*) from t")
  for _ in $(seq 1 6000); do
    [ "$(psql_sub "select count(*) from t")" -ge "$want" ] && return 0
    sleep 0.05
  done
  echo "error: PostgreSQL subscriber did not catch up" >&2; return 1
}

pg_run() {
  pg_setup
  psql_pub "insert into t(payload) values ('warm-up')"; pg_wait_caught_up
  # 1. lag at RATE
  psql_sub "truncate t"; psql_pub "truncate t"
  su postgres -c "$PGBIN/pgbench -n -h 127.0.0.1 -p 25432 -c 8 -j 2 -R $RATE -T $DURATION_S -f $WORK/ins.sql postgres" >"$WORK/pgbench-lag.log" 2>&1
  pg_wait_caught_up
  psql_sub "select json_build_object('system','postgresql','measure','lag','rate',$RATE,'rows',count(*),
    'p50_ms',round((percentile_cont(0.5) within group (order by extract(epoch from applied_at - written_at)*1000))::numeric,2),
    'p99_ms',round((percentile_cont(0.99) within group (order by extract(epoch from applied_at - written_at)*1000))::numeric,2)) from t"
  # 2. highest sustained durable write rate
  su postgres -c "$PGBIN/pgbench -n -h 127.0.0.1 -p 25432 -c 16 -j 2 -T $DURATION_S -f $WORK/ins.sql postgres" >"$WORK/pgbench-max.log" 2>&1
  local tps; tps=$(grep -oP 'tps = \K[0-9.]+' "$WORK/pgbench-max.log" | head -1)
  local t0; t0=$(now_ms); pg_wait_caught_up; local drain=$(( $(now_ms) - t0 ))
  echo "{\"system\":\"postgresql\",\"measure\":\"max_write_rate\",\"writes_per_s\":$tps,\"subscriber_caught_up_after_ms\":$drain}"
  # 3. catch-up after a cut of CUT_S while RATE writes/s continue
  kill -USR1 "$PG_PROXY"
  su postgres -c "$PGBIN/pgbench -n -h 127.0.0.1 -p 25432 -c 8 -j 2 -R $RATE -T $CUT_S -f $WORK/ins.sql postgres" >"$WORK/pgbench-cut.log" 2>&1
  local backlog; backlog=$(( $(psql_pub "select count(*) from t") - $(psql_sub "select count(*) from t") ))
  t0=$(now_ms); kill -USR2 "$PG_PROXY"; pg_wait_caught_up; local took=$(( $(now_ms) - t0 ))
  echo "{\"system\":\"postgresql\",\"measure\":\"catch_up\",\"cut_s\":$CUT_S,\"backlog\":$backlog,\"catch_up_ms\":$took,\"rows_per_s\":$(( backlog * 1000 / (took > 0 ? took : 1) ))}"
  for d in pub sub; do su postgres -c "$PGBIN/pg_ctl -D $WORK/$d -m fast stop" >/dev/null; done
  kill "$PG_PROXY"
}


mrr_run() {
  rm -rf "$WORK"/mrr-*
  # The writer region reaches the reader through one proxy, the reader the writer through another.
  local to_reader to_writer
  proxy 127.0.0.1:26002 127.0.0.1:26011; to_reader=$PROXY_PID
  proxy 127.0.0.1:26012 127.0.0.1:26001; to_writer=$PROXY_PID
  mrr_two_region_configs "$WORK"
  MRR_LOG=warn $MRR serve -c "$WORK/ap-northeast.yaml" 2>>"$WORK/mrr-a.log" & local a=$!; PIDS+=($a)
  MRR_LOG=warn $MRR serve -c "$WORK/us-west.yaml" 2>>"$WORK/mrr-b.log" & local b=$!; PIDS+=($b)
  for _ in $(seq 1 200); do
    curl -sf http://127.0.0.1:26000/health >/dev/null && curl -sf http://127.0.0.1:26010/health >/dev/null && break; sleep 0.05
  done
  local bench="$MRR bench -c $WORK/ap-northeast.yaml --write-share ap-northeast=1,us-west=0 --value-bytes 100 --keys 100000000"
  # 1. lag at RATE
  $bench --rate "$RATE" --duration "${DURATION_S}s" --concurrency 8 --json "$WORK/lag.json" >/dev/null 2>&1
  python3 -c "import json; r=json.load(open('$WORK/lag.json')); l=[p for p in r['replication_lag'] if p['source']=='ap-northeast'][0]['lag']; print(json.dumps({'system':'mrr','measure':'lag','rate':$RATE,'rows':l['samples'],'p50_ms':l['p50_ms'],'p99_ms':l['p99_ms']}))"
  # 2. highest sustained durable write rate
  $bench --duration "${DURATION_S}s" --concurrency 16 --json "$WORK/max.json" >/dev/null 2>&1
  python3 -c "import json; r=json.load(open('$WORK/max.json')); print(json.dumps({'system':'mrr','measure':'max_write_rate','writes_per_s':round(r['writes_per_s'],1),'subscriber_caught_up_after_ms':round(r['converged_after_s']*1000)}))"
  # 3. catch-up after a cut of CUT_S while RATE writes/s continue
  kill -USR1 "$to_reader" "$to_writer"
  $bench --rate "$RATE" --duration "${CUT_S}s" --concurrency 8 --json "$WORK/cut.json" >/dev/null 2>&1 &
  local bench_pid=$!; PIDS+=($bench_pid)
  sleep "$CUT_S"
  # The bench's writes are done; wait until it has no more in flight.
  local have=0; local prev=-1
  while [ "$have" != "$prev" ]; do prev=$have; sleep 0.5; have=$(mrr_applied 26000); done
  local backlog=$(( have - $(mrr_applied 26010) ))
  local t0; t0=$(now_ms); kill -USR2 "$to_reader" "$to_writer"
  for _ in $(seq 1 12000); do [ "$(mrr_applied 26010)" -ge "$have" ] && break; sleep 0.05; done
  local took=$(( $(now_ms) - t0 ))
  echo "{\"system\":\"mrr\",\"measure\":\"catch_up\",\"cut_s\":$CUT_S,\"backlog\":$backlog,\"catch_up_ms\":$took,\"rows_per_s\":$(( backlog * 1000 / (took > 0 ? took : 1) ))}"
  wait "$bench_pid" || true
  kill "$a" "$b" "$to_reader" "$to_writer"; wait "$a" "$b" 2>/dev/null || true
}

for run in $(seq 1 "$RUNS"); do
  echo "# run $run" >&2
  mrr_run
  pg_run
done
