"""Queues a backlog and measures the lag of writes made while it drains (see bench/lanes.sh).

Every loop is bounded: the backlog by --bulk, the probes by --urgent and a 30 s wait each.
"""
import argparse
import json
import random
import time
import urllib.request


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def backlog(writer):
    _, status = call("GET", writer + "/v1/status")
    return sum(p["backlog_changes"] for p in status["peers"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=int, default=1)
    ap.add_argument("--mode", choices=["lanes", "one-lane"], required=True)
    ap.add_argument("--bulk", type=int, required=True)
    ap.add_argument("--urgent", type=int, required=True)
    ap.add_argument("--writer", required=True)
    ap.add_argument("--reader", required=True)
    a = ap.parse_args()
    lanes = a.mode == "lanes"
    rng = random.Random(7)
    bulk_meta = {"regions": ["*"], "syncFlags": ["BULK"] if lanes else []}
    urgent_meta = {"regions": ["*"], "syncFlags": ["SYNC_PRIORITY=1"] if lanes else []}
    for start in range(0, a.bulk, 1000):
        items = [
            {"topic": "events", "record": {"id": f"e{i}", "payload": "%064x" % rng.getrandbits(256), "__metadata": bulk_meta}}
            for i in range(start, min(start + 1000, a.bulk))
        ]
        code, _ = call("POST", a.writer + "/v1/batch", {"items": items})
        assert code == 200, code
    queued = backlog(a.writer)
    # Probes are written every 100 ms whether or not earlier ones have arrived, so that every
    # probe is made while the backlog drains, in both modes; the reader is polled in between.
    written, seen = {}, {}

    def poll():
        _, page = call("GET", f"{a.reader}/v1/records/stock?limit=1000")
        now = time.monotonic()
        for r in (page or {}).get("records", []):
            seen.setdefault(r["id"], now)

    for i in range(a.urgent):
        code, _ = call("PUT", f"{a.writer}/v1/records/stock/s{i}", {"qty": i, "__metadata": urgent_meta})
        assert code == 200, code
        written[f"s{i}"] = time.monotonic()
        next_write = written[f"s{i}"] + 0.1
        while time.monotonic() < next_write:
            poll()
            time.sleep(0.002)
    left = backlog(a.writer)
    deadline = time.monotonic() + 120
    while len(seen) < len(written) and time.monotonic() < deadline:
        poll()
        time.sleep(0.002)
    assert len(seen) == len(written), f"{len(written) - len(seen)} probes never arrived"
    lags = sorted((seen[k] - t) * 1000 for k, t in written.items())
    pct = lambda p: round(lags[min(len(lags) - 1, int(len(lags) * p / 100))], 1)
    print(json.dumps({"run": a.run, "mode": a.mode, "bulk_queued_at_start": queued, "bulk_left_after_probes": left,
                      "urgent_lag_ms_p50": pct(50), "urgent_lag_ms_p99": pct(99), "urgent_lag_ms_max": round(lags[-1], 1)}))

if __name__ == "__main__":
    main()
