"""Driver of bench/flash_sale.sh: `mrr dev`, then `mrr flash-bench` per mode, interleaved."""
import json, os, statistics, subprocess, sys, time, urllib.request

MRR, W = os.environ["MRR"], os.environ["W"]
RUNS, STOCK, BUYERS, SECS = (int(os.environ[k]) for k in ("RUNS", "STOCK", "BUYERS", "SECS"))
BASE = 17600
APIS = [f"http://127.0.0.1:{BASE + 10 * k}" for k in range(3)]

log = open(f"{W}/dev.log", "a")
dev = subprocess.Popen([MRR, "dev", "--base-port", str(BASE), "--data-dir", f"{W}/data"], stdout=log, stderr=log,
                       env={**os.environ, "MRR_LOG": "warn"})
try:
    end = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(APIS[0] + "/v1/cluster/coordinator", timeout=1) as r:
                if json.load(r).get("coordinator"):
                    break
        except OSError:
            pass
        if time.monotonic() > end:
            sys.exit("mrr dev did not elect a coordinator within 60 s")
        time.sleep(0.05)
    rows = {"eventual": [], "strong": [], "escrow": []}
    modes = list(rows)
    for run in range(RUNS):
        # Rotated, so that no mode always runs first or last.
        for mode in modes[run % 3:] + modes[:run % 3]:
            out = subprocess.run([MRR, "flash-bench", "--apis", ",".join(APIS), "--mode", mode, "--stock", str(STOCK),
                                  "--buyers", str(BUYERS), "--duration", f"{SECS}s", "--item", f"sale-{mode}-{run}"],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)
            rows[mode].append(r)
            print(json.dumps({"round": run, **r}), flush=True)
    summary = {}
    for mode, rs in rows.items():
        summary[mode] = {
            "units_sold": statistics.median(r["units_sold"] for r in rs),
            "oversell": [r["oversell"] for r in rs],
            "unaccounted": [r["unaccounted"] for r in rs],
            "regions": [{"api": rs[0]["regions"][k]["api"],
                         "p50_ms": statistics.median(r["regions"][k]["p50_ms"] for r in rs),
                         "p99_ms": statistics.median(r["regions"][k]["p99_ms"] for r in rs),
                         "refused_for_rights": statistics.median(r["regions"][k]["refused_for_rights"] for r in rs)}
                        for k in range(3)],
        }
    print(json.dumps(summary, indent=1))
finally:
    dev.kill()  # by its own pid
    dev.wait()
