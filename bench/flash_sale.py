"""Driver of bench/flash_sale.sh: `mrr dev`, then `mrr flash-bench` per mode, interleaved.

With CUT=1 the coordinator (ap-northeast) is cut off from both other regions CUT_AT seconds
into every round (default 5) for CUT_FOR seconds (default 5), then healed: the strong tier
fails over and back; escrow and eventual go on (the cut region sells what it holds)."""
import json, os, statistics, subprocess, sys, threading, time, urllib.request

MRR, W = os.environ["MRR"], os.environ["W"]
RUNS, STOCK, BUYERS, SECS = (int(os.environ[k]) for k in ("RUNS", "STOCK", "BUYERS", "SECS"))
BASE = 17600
APIS = [f"http://127.0.0.1:{BASE + 10 * k}" for k in range(3)]

AUTH = {"authorization": f"Bearer {os.environ['MRR_KEY']}"}  # the key `mrr dev` admits
CUT = os.environ.get("CUT") == "1"
CUT_AT, CUT_FOR = float(os.environ.get("CUT_AT", "5")), float(os.environ.get("CUT_FOR", "5"))
# mrr dev's one-way delays from ap-northeast (each node shapes its own outgoing links).
DELAYS = {("ap-northeast", "us-west"): 55, ("ap-northeast", "eu-central"): 115}
REGIONS = ["ap-northeast", "us-west", "eu-central"]


def link(api, peer, delay_ms, partitioned):
    body = json.dumps({"delay_ms": delay_ms, "partitioned": partitioned}).encode()
    req = urllib.request.Request(f"{api}/v1/admin/links/{peer}", data=body, method="PUT",
                                 headers={"content-type": "application/json", **AUTH})
    urllib.request.urlopen(req, timeout=5).read()


def cut_coordinator(partitioned):
    for (a, b), ms in DELAYS.items():
        link(APIS[REGIONS.index(a)], b, ms, partitioned)
        link(APIS[REGIONS.index(b)], a, ms, partitioned)


def cut_then_heal(stop):
    if stop.wait(CUT_AT):
        return
    cut_coordinator(True)
    stop.wait(CUT_FOR)
    cut_coordinator(False)


log = open(f"{W}/dev.log", "a")
dev = subprocess.Popen([MRR, "dev", "--base-port", str(BASE), "--data-dir", f"{W}/data"], stdout=log, stderr=log,
                       env={**os.environ, "MRR_LOG": "warn"})
try:
    end = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(APIS[0] + "/v1/cluster/coordinator", headers=AUTH), timeout=1) as r:
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
            stop = threading.Event()
            cutter = threading.Thread(target=cut_then_heal, args=(stop,)) if CUT else None
            if cutter:
                cutter.start()
            try:
                out = subprocess.run([MRR, "flash-bench", "--apis", ",".join(APIS), "--mode", mode, "--stock",
                                      str(STOCK), "--buyers", str(BUYERS), "--duration", f"{SECS}s", "--item",
                                      f"sale-{mode}-{run}"], check=True, capture_output=True, text=True)
            finally:
                stop.set()
                if cutter:
                    cutter.join()
            r = json.loads(out.stdout)
            if CUT:
                r["coordinator_cut"] = {"at_s": CUT_AT, "for_s": CUT_FOR}
            rows[mode].append(r)
            print(json.dumps({"round": run, **r}), flush=True)
    summary = {}
    for mode, rs in rows.items():
        summary[mode] = {
            "units_sold": statistics.median(r["units_sold"] for r in rs),
            "oversell": [r["oversell"] for r in rs],
            "unaccounted": [r["unaccounted"] for r in rs],
            "in_doubt": [r["in_doubt"] for r in rs],
            "buyer_failures": [r["buyer_failures"] for r in rs],
            "seconds": statistics.median(r["seconds"] for r in rs),
            "regions": [{"api": rs[0]["regions"][k]["api"],
                         "p50_ms": statistics.median(r["regions"][k]["p50_ms"] for r in rs),
                         "p99_ms": statistics.median(r["regions"][k]["p99_ms"] for r in rs),
                         "refused_for_rights": statistics.median(r["regions"][k]["refused_for_rights"] for r in rs),
                         # The share of attempts that needed rights from elsewhere (refused here).
                         "refused_share": statistics.median(
                             r["regions"][k]["refused_for_rights"]
                             / max(1, r["regions"][k]["refused_for_rights"] + r["regions"][k]["decrements"])
                             for r in rs)}
                        for k in range(3)],
        }
    print(json.dumps(summary, indent=1))
    # What must hold in every round: strong and escrow never oversell, and every unit that left
    # the stock is one a buyer was told it got, or one of a decrement whose outcome it never
    # learned.
    broken = [f"{m} round {k}: oversell {r['oversell']}, unaccounted {r['unaccounted']}, in doubt {r['in_doubt']}"
              for m, rs in rows.items() for k, r in enumerate(rs)
              if (m != "eventual" and r["oversell"] > 0) or not 0 <= r["unaccounted"] <= r["in_doubt"]]
    if broken:
        sys.exit("flash sale broke an invariant:\n" + "\n".join(broken))
finally:
    dev.kill()  # by its own pid
    dev.wait()
