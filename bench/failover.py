"""Driver of bench/failover.sh: starts the three regions, kills and restarts the coordinator."""
import json, os, subprocess, sys, time, urllib.request
AUTH = {"authorization": f"Bearer {os.environ['MRR_KEY']}"}  # the key `mrr dev` admits

MRR, W, KILLS = os.environ["MRR"], os.environ["W"], int(os.environ["KILLS"])
REGIONS = {"ap-northeast": 7800, "us-west": 7810, "eu-central": 7820}
procs = {}


def start(region):
    log = open(f"{W}/{region}.log", "a")
    procs[region] = subprocess.Popen([MRR, "serve", "-c", f"{W}/cluster/{region}.yaml"], stdout=log, stderr=log,
                                     env={**os.environ, "MRR_LOG": "warn"})


def coordinator(region):
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{REGIONS[region]}/v1/cluster/coordinator", headers=AUTH), timeout=1) as r:
            return json.load(r).get("coordinator")
    except OSError:
        return None


def wait(check, what, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = check()
        if v:
            return v
        time.sleep(0.01)
    sys.exit(f"timed out waiting for {what}")


try:
    for r in REGIONS:
        start(r)
    preferred = "ap-northeast"
    others = [r for r in REGIONS if r != preferred]
    all_on_preferred = lambda: all(coordinator(r) == preferred for r in REGIONS)
    wait(all_on_preferred, "the first election")
    failovers = []
    for i in range(KILLS):
        time.sleep(1.0)
        procs[preferred].kill()  # SIGKILL, by the child's own pid
        procs[preferred].wait()
        t0 = time.monotonic()

        def agreed():
            views = [coordinator(r) for r in others]
            return views[0] not in (None, preferred) and views[0] == views[1]

        wait(agreed, "a new coordinator")
        ms = (time.monotonic() - t0) * 1000
        failovers.append(ms)
        print(f"kill {i + 1}: new coordinator known in both other regions after {ms:.0f} ms", flush=True)
        start(preferred)
        wait(all_on_preferred, "leadership back at the coordinator")
    f = sorted(failovers)
    pct = lambda p: f[min(len(f) - 1, int(round(p / 100 * (len(f) - 1))))]
    print(f"failover over {len(f)} kills: p50 {pct(50):.0f} ms, p99 {pct(99):.0f} ms, max {f[-1]:.0f} ms")
finally:
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
