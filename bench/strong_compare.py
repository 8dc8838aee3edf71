"""Driver of bench/strong_compare.sh: MRR's strong tier and etcd, three members each, every
peer path through `mrr wan-proxy` at DELAY_MS one way; the same client (`mrr strong-bench`)
for both. Runs RUNS interleaved rounds (the order alternates), then KILLS failovers each.
Prints one JSON line per measurement and writes the medians to $W/summary.json."""
import base64, json, os, statistics, subprocess, sys, time, urllib.request

MRR, W = os.environ["MRR"], os.environ["W"]
RUNS, KILLS, DELAY = int(os.environ["RUNS"]), int(os.environ["KILLS"]), int(os.environ["DELAY_MS"])
NAMES = ["ap-northeast", "us-west", "eu-central"]
procs, proxies = {}, []


def spawn(args, log, env=None):
    out = open(f"{W}/{log}.log", "a")
    return subprocess.Popen(args, stdout=out, stderr=out, env={**os.environ, **(env or {})})


def post(url, body=None, timeout=1):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait(check, what, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            v = check()
        except OSError:
            v = None
        if v is not None and v is not False:
            return v
        time.sleep(0.01)
    sys.exit(f"timed out waiting for {what}")


# --- MRR: api 27100+10k, peer 27101+10k, proxy 27102+10k in front of each peer listener.
def mrr_api(k):
    return f"http://127.0.0.1:{27100 + 10 * k}"


def mrr_config(k):
    regions = "".join(
        f"  - name: {n}\n    endpoint: http://127.0.0.1:{27102 + 10 * j}\n    api: {mrr_api(j)}\n"
        + ("    role: coordinator\n" if j == 0 else "")
        for j, n in enumerate(NAMES))
    path = f"{W}/mrr-{NAMES[k]}.yaml"
    open(path, "w").write(
        f"cluster: strong-bench\nregion: {NAMES[k]}\nsecret: \"strong-bench-secret-0123\"\ninsecure_plaintext: true\ndata_dir: {W}/mrr-data-{k}\n"
        f"listen: {{ api: 127.0.0.1:{27100 + 10 * k}, peer: 127.0.0.1:{27101 + 10 * k} }}\ndurability: fsync\n"
        f"regions:\n{regions}topics:\n  stock: {{ consistency: strong }}\n"
        f"consensus:\n  rtt_ms: {2 * DELAY}\n  return_after_ms: 1000\n")
    return path


def mrr_start(k):
    procs[("mrr", k)] = spawn([MRR, "serve", "-c", mrr_config(k)], f"mrr-{k}", {"MRR_LOG": os.environ.get("BENCH_MRR_LOG", "warn")})


def mrr_leader(k):
    return NAMES.index(c) if (c := post(mrr_api(k) + "/v1/cluster/coordinator").get("coordinator")) else None


# --- etcd: client 27000+10k, peer 27001+10k, proxy 27002+10k (the advertised peer URL).
def etcd_url(k):
    return f"http://127.0.0.1:{27000 + 10 * k}"


def etcd_start(k, state="new"):
    cluster = ",".join(f"e{j}=http://127.0.0.1:{27002 + 10 * j}" for j in range(3))
    procs[("etcd", k)] = spawn([
        "etcd", "--name", f"e{k}", "--data-dir", f"{W}/etcd-data-{k}",
        "--listen-client-urls", etcd_url(k), "--advertise-client-urls", etcd_url(k),
        "--listen-peer-urls", f"http://127.0.0.1:{27001 + 10 * k}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{27002 + 10 * k}",
        "--initial-cluster", cluster, "--initial-cluster-state", state,
        "--initial-cluster-token", "strong-bench", "--log-level", "warn",
        # etcd's own tuning guide: heartbeat about the round trip, election ten times that.
        "--heartbeat-interval", str(2 * DELAY), "--election-timeout", str(20 * DELAY),
    ], f"etcd-{k}")


def etcd_ids():
    return {post(etcd_url(k) + "/v3/maintenance/status", {})["header"]["member_id"]: k for k in range(3)}


def etcd_leader(k, ids):
    return ids.get(post(etcd_url(k) + "/v3/maintenance/status", {}).get("leader"))


def kill(key):
    procs[key].kill()  # SIGKILL, by the child's own pid
    procs[key].wait()


def bench(system, url, op, concurrency, ops):
    out = subprocess.run([MRR, "strong-bench", "--system", system, "--url", url, "--op", op,
                          "--concurrency", str(concurrency), "--ops", str(ops), "--duration", "60s"],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    if r["errors"]:
        sys.exit(f"{system} {op}: {r['errors']} errors: {out.stderr}")
    return r


def measure(system, leader, follower):
    url = mrr_api if system == "mrr" else etcd_url
    rows = {
        "write_leader": bench(system, url(leader), "write", 1, 100),
        "write_follower": bench(system, url(follower), "write", 1, 100),
        "write_64_in_flight": bench(system, url(leader), "write", 64, 6000),
        "read_leader": bench(system, url(leader), "read", 1, 300),
        "read_follower": bench(system, url(follower), "read", 1, 100),
    }
    for name, r in rows.items():
        print(json.dumps({"system": system, "case": name, **r}), flush=True)
    return rows


def failovers(system):
    times = []
    for i in range(KILLS):
        if system == "mrr":
            wait(lambda: all(mrr_leader(k) == 0 for k in range(3)), "leadership at the coordinator")
            leader, leader_of = 0, mrr_leader
        else:
            ids = wait(lambda: etcd_ids() if len(etcd_ids()) == 3 else None, "three etcd members")
            leader = wait(lambda: etcd_leader(0, ids), "an etcd leader")
            leader_of = lambda k: etcd_leader(k, ids)
        time.sleep(1.0)
        kill((system, leader))
        t0 = time.monotonic()
        others = [k for k in range(3) if k != leader]

        def agreed():
            views = [leader_of(k) for k in others]
            return views[0] not in (None, leader) and views[0] == views[1]

        wait(agreed, f"{system}: a new leader")
        times.append((time.monotonic() - t0) * 1000)
        print(json.dumps({"system": system, "case": "failover", "kill": i + 1, "ms": round(times[-1])}), flush=True)
        (mrr_start if system == "mrr" else lambda k: etcd_start(k, "existing"))(leader)
    return times


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


try:
    for k in range(3):
        proxies.append(spawn([MRR, "wan-proxy", "--listen", f"127.0.0.1:{27102 + 10 * k}",
                              "--upstream", f"127.0.0.1:{27101 + 10 * k}", "--delay-ms", str(DELAY)], f"proxy-mrr-{k}"))
        proxies.append(spawn([MRR, "wan-proxy", "--listen", f"127.0.0.1:{27002 + 10 * k}",
                              "--upstream", f"127.0.0.1:{27001 + 10 * k}", "--delay-ms", str(DELAY)], f"proxy-etcd-{k}"))
    for k in range(3):
        mrr_start(k)
        etcd_start(k)
    wait(lambda: all(mrr_leader(k) == 0 for k in range(3)), "MRR's first election")
    ids = wait(lambda: etcd_ids() if len(etcd_ids()) == 3 else None, "etcd to start")
    # etcd elects whom it likes; measure at whichever member leads, from another one.
    rounds = {"mrr": [], "etcd": []}
    for run in range(RUNS):
        for system in (["mrr", "etcd"] if run % 2 == 0 else ["etcd", "mrr"]):
            leader = 0 if system == "mrr" else wait(lambda: etcd_leader(0, ids), "an etcd leader")
            rounds[system].append(measure(system, leader, (leader + 1) % 3))
    summary = {"delay_ms": DELAY, "runs": RUNS}
    for system, rs in rounds.items():
        summary[system] = {
            case: {m: statistics.median(r[case][m] for r in rs) for m in ("p50_ms", "p99_ms", "ops_per_s")}
            for case in rs[0]
        }
    for system in ("mrr", "etcd"):
        f = failovers(system)
        summary[system]["failover"] = {"kills": len(f), "p50_ms": pct(f, 50), "p99_ms": pct(f, 99), "max_ms": max(f)}
    json.dump(summary, open(f"{W}/summary.json", "w"), indent=1)
    print(json.dumps(summary, indent=1))
finally:
    for p in list(procs.values()) + proxies:
        if p.poll() is None:
            p.kill()
            p.wait()
