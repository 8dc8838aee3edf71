#!/usr/bin/env bash
# MRR's strong tier against etcd on this machine, in the same run: three members each, every
# peer path through `mrr wan-proxy` at DELAY_MS (default 50) one way, both fsyncing, driven by
# the same client (`mrr strong-bench`, JSON over HTTP/1.1). Measures strong-write p50/p99 at the
# leader and from another member, throughput with 64 requests in flight, linearizable-read
# latency at the leader and elsewhere (medians of RUNS interleaved rounds, default 3), and
# failover over KILLS kill -9s of the leader each (default 20). Needs etcd (Debian's
# etcd-server; installed with apt-get when missing and running as root). Listens on
# 127.0.0.1:27000-27122 only; stops what it started by pid. Prints JSON lines and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; KILLS=${KILLS:-20}; DELAY_MS=${DELAY_MS:-50}
if ! command -v etcd >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y etcd-server >/dev/null
  else
    echo "etcd is not installed: install Debian's etcd-server (apt-get install etcd-server) and run again" >&2
    exit 1
  fi
fi
if [ -z "${MRR:-}" ]; then MRR=./target/release/mrr; cargo build --release -q -p mrr-cli; fi
W=$(mktemp -d /tmp/mrr-strong.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT
MRR="$MRR" W="$W" RUNS="$RUNS" KILLS="$KILLS" DELAY_MS="$DELAY_MS" python3 bench/strong_compare.py
