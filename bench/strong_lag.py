"""Driver of bench/strong_lag.sh: eventual lag with strong load off and on, interleaved rounds.
Prints one JSON line per round and the medians per mode and pair."""
import json, os, re, statistics, subprocess, sys, time, urllib.request
AUTH = {"authorization": f"Bearer {os.environ['MRR_KEY']}"}  # the key `mrr dev` admits

MRR, W = os.environ["MRR"], os.environ["W"]
RUNS, RATE, SECS, CONC = (int(os.environ[k]) for k in ("RUNS", "RATE", "SECS", "STRONG_CONC"))
BASE = 17300
procs = {}


def get(url, timeout=1):
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=timeout) as r:
        return json.load(r)


def wait(check, what, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def cpu_s(pid):
    # utime + stime of the process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat).
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


subprocess.run([MRR, "dev", "--write-configs", f"{W}/cfg", "--base-port", str(BASE), "--data-dir", f"{W}/data"],
               check=True, capture_output=True)
regions = sorted(f[:-5] for f in os.listdir(f"{W}/cfg") if f.endswith(".yaml"))
try:
    for r in regions:
        out = open(f"{W}/{r}.log", "a")
        procs[r] = subprocess.Popen([MRR, "serve", "-c", f"{W}/cfg/{r}.yaml"], stdout=out, stderr=out,
                                    env={**os.environ, "MRR_LOG": "warn"})
    cfg = f"{W}/cfg/{regions[0]}.yaml"
    # Every config lists every region's API address under `regions:`.
    apis = dict(re.findall(r"- name: (\S+)\n\s+endpoint: \S+\n\s+api: (\S+)", open(cfg).read()))
    wait(lambda: all(get(apis[r] + "/v1/cluster/coordinator").get("coordinator") for r in regions), "a coordinator")
    coordinator = get(apis[regions[0]] + "/v1/cluster/coordinator")["coordinator"]
    rows = []
    for run in range(2 * RUNS):
        mode = ["off", "on"][run % 2] if (run // 2) % 2 == 0 else ["on", "off"][run % 2]
        cpu0 = sum(cpu_s(p.pid) for p in procs.values())
        strong = None
        if mode == "on":
            strong = subprocess.Popen([MRR, "strong-bench", "--system", "mrr", "--url", apis[coordinator],
                                       "--concurrency", str(CONC), "--ops", "1000000", "--duration", f"{SECS + 4}s"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(2)  # the strong load is running before the measured window opens
        res = subprocess.run([MRR, "bench", "-c", cfg, "--rate", str(RATE), "--duration", f"{SECS}s",
                              "--topic", "bench", "--json", f"{W}/lag-{run}.json"],
                             check=True, capture_output=True, text=True)
        strong_ops = None
        if strong is not None:
            out, _ = strong.communicate(timeout=SECS + 60)
            strong_ops = json.loads(out)["ops_per_s"]
        cpu = sum(cpu_s(p.pid) for p in procs.values()) - cpu0
        rep = json.load(open(f"{W}/lag-{run}.json"))
        row = {"round": run, "mode": mode, "cpu_s": round(cpu, 2), "strong_ops_per_s": strong_ops,
               "writes_per_s": round(rep["writes_per_s"], 1),
               "lag_p99_ms": {f"{l['source']}>{l['target']}": l["lag"]["p99_ms"] for l in rep["replication_lag"]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for mode in ("off", "on"):
        rs = [r for r in rows if r["mode"] == mode]
        summary[mode] = {"cpu_s": statistics.median(r["cpu_s"] for r in rs),
                         "lag_p99_ms": {p: statistics.median(r["lag_p99_ms"][p] for r in rs) for p in rs[0]["lag_p99_ms"]}}
    summary["on_minus_off_ms"] = {p: round(summary["on"]["lag_p99_ms"][p] - summary["off"]["lag_p99_ms"][p], 1)
                                  for p in summary["off"]["lag_p99_ms"]}
    print(json.dumps(summary, indent=1))
finally:
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
