#!/usr/bin/env python3
"""etcd_lock benchmark driver (called by bench/run.sh; see bench/README.md).

Runs every workload against the etcd and PostgreSQL that run.sh started,
interleaving the extension with the reference workloads round by round,
then writes results.json, prints the table and the targets, and draws
latency.png. Configuration comes from the environment (run.sh sets it).
"""
import bisect
import resource
import glob
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request

ENV = os.environ
OUT = ENV.get("BENCH_OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
WORK = ENV.get("BENCH_WORK", "")
RAW = os.path.join(OUT, "raw")
CLIENT = ENV.get("BENCH_CLIENT", "")
SHAPES = ENV.get("BENCH_SHAPES", "")
GO_MUTEX = ENV.get("GO_MUTEX", "")
FLOOR = ENV.get("HTTP_FLOOR", "")
ETCD = ENV.get("ETCD_ENDPOINT", "").rstrip("/")
ETCD_HOSTPORT = re.sub(r"^https?://", "", ETCD)
ETCD_PID = int(ENV.get("BENCH_ETCD_PID") or 0)      # 0: not ours, never signalled
PM_PID = int(ENV.get("BENCH_POSTMASTER_PID") or 0)
QUICK = ENV.get("QUICK", "0") not in ("", "0")
LP = ENV.get("BENCH_LOCK_PREFIX", "/etcd_lock_bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

if QUICK:
    CFG = dict(rounds=int(ENV.get("ROUNDS", 1)), pair_n=300, xact_n=300, shapes_n=300,
               contend_c=[4, 16], contend_secs=2, contend_go_secs=2,
               distinct_c=[8, 32], distinct_secs=2, distinct_go_n={8: 200, 32: 60},
               idle_holders=50, idle_sessions=50, idle_secs=15,
               abort_iters=10, abort_locks=10, leak_cycles=10000, leak_warmup=500,
               first_sessions=50, handoff_n=300)
else:
    CFG = dict(rounds=int(ENV.get("ROUNDS", 3)), pair_n=1500, xact_n=1500, shapes_n=1500,
               contend_c=[4, 16], contend_secs=5, contend_go_secs=4,
               distinct_c=[8, 32], distinct_secs=5, distinct_go_n={8: 1200, 32: 350},
               idle_holders=500, idle_sessions=50, idle_secs=60,
               abort_iters=20, abort_locks=10, leak_cycles=100000, leak_warmup=1000,
               first_sessions=200, handoff_n=1000)

CHILDREN = set()


GC_OFF = "-c etcd_lock.group_commit=off"


def log(msg):
    print(time.strftime("[%H:%M:%S] ") + msg, file=sys.stderr, flush=True)


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def kill_children():
    for p in list(CHILDREN):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=10)
            except Exception:
                pass
        CHILDREN.discard(p)
    etcd_continue()


def etcd_continue():
    if ETCD_PID:
        try:
            os.kill(ETCD_PID, signal.SIGCONT)
        except ProcessLookupError:
            pass


def run(cmd, timeout, cwd=None, check=True):
    """Runs cmd (list), returns stdout; bounded by timeout seconds."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    CHILDREN.add(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError("timed out after %ss: %s" % (timeout, " ".join(cmd)))
    except BaseException:
        p.kill()            # interrupted (SIGTERM -> SystemExit): no orphans
        p.wait()
        raise
    finally:
        CHILDREN.discard(p)
    if check and p.returncode != 0:
        raise RuntimeError("%s exited %s: %s" % (" ".join(cmd), p.returncode, (err or out)[-2000:]))
    return out


def psql(sql, timeout=60):
    return run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], timeout).strip()


def pct(sorted_vals, q):
    """Same index rule as the references: sorted[n*q/100] (p50 = sorted[n/2])."""
    n = len(sorted_vals)
    if n == 0:
        return None
    return sorted_vals[min(n - 1, n * q // 100)]


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.eE+-]+)", line)}


def save_samples(name, vals):
    with open(os.path.join(RAW, name + ".txt"), "w") as f:
        f.write("\n".join("%.1f" % v for v in vals))
        f.write("\n")


# ------------------------------------------------------------ tools

def pgbench(tag, script, clients, transactions=None, seconds=None, pgoptions=None):
    """Runs pgbench with a per-transaction log; returns stats + latencies (us).
    pgoptions: PGOPTIONS for its sessions (e.g. group commit off)."""
    if pgoptions is not None:
        old = os.environ.get("PGOPTIONS")
        os.environ["PGOPTIONS"] = pgoptions
        try:
            return pgbench(tag, script, clients, transactions, seconds)
        finally:
            if old is None:
                os.environ.pop("PGOPTIONS", None)
            else:
                os.environ["PGOPTIONS"] = old
    prefix = os.path.join(RAW, tag)
    for f in glob.glob(prefix + ".*"):
        os.unlink(f)
    cmd = ["pgbench", "-n", "-f", script, "-c", str(clients), "-j", "1", "--log", "--log-prefix=" + prefix]
    if transactions:
        cmd += ["-t", str(transactions)]
        timeout = 60 + transactions * clients * 0.05
    else:
        cmd += ["-T", str(seconds)]
        timeout = 60 + seconds * 3
    out = run(cmd, timeout)
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not m or (failed and int(failed.group(1)) > 0):
        raise RuntimeError("pgbench %s: unexpected output:\n%s" % (tag, out))
    lat = []
    for f in glob.glob(prefix + ".*"):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(float(parts[2]))
    lat.sort()
    if transactions and len(lat) != transactions * clients:
        raise RuntimeError("pgbench %s: %d logged transactions, expected %d" % (tag, len(lat), transactions * clients))
    return dict(n=len(lat), p50_us=pct(lat, 50), p99_us=pct(lat, 99), ops_per_s=float(m.group(1))), lat


def go_mutex(mode, n, c=None, lock="/go"):
    cmd = [GO_MUTEX, "-mode", mode, "-n", str(n), "-ep", ETCD_HOSTPORT, "-lock", lock]
    if c:
        cmd += ["-c", str(c)]
    out = run(cmd, 120 + n * (c or 1) * 0.2)
    line = [l for l in out.splitlines() if l.startswith("go-mutex")][-1]
    v = kv(line)
    return dict(n=int(v["n"]), p50_us=v["p50_us"], p99_us=v["p99_us"], ops_per_s=v["ops_per_s"], line=line)


def floor(n):
    out = run([FLOOR, ETCD, str(n)], 60 + n * 0.05)
    line = [l for l in out.splitlines() if l.startswith("floor")][-1]
    v = kv(line)
    return dict(n=int(v["n"]), p50_us=v["p50"], p99_us=v["p99"], ops_per_s=v["ops_per_s"], line=line)


def shapes(n, lock):
    out = run([SHAPES, ETCD, str(n), lock], 60 + n * 0.05)
    line = [l for l in out.splitlines() if l.startswith("shapes")][-1]
    v = kv(line)
    return dict(n=int(v["n"]), p50_us=v["pair_p50_us"], p99_us=v["pair_p99_us"],
                acquire_p50_us=v["acquire_p50_us"], release_p50_us=v["release_p50_us"],
                ops_per_s=v["ops_per_s"], line=line)


def handoff_floor(n, key):
    out = run([SHAPES, "handoff", ETCD, str(n), key], 60 + n * 0.05)
    v = kv([l for l in out.splitlines() if l.startswith("handoff")][-1])
    return dict(n=int(v["n"]), p50_us=v["p50_us"], p99_us=v["p99_us"])


def distinct_floor(secs, c, prefix):
    out = run([SHAPES, "distinct", ETCD, str(secs), str(c), prefix], secs * 3 + 60)
    v = kv([l for l in out.splitlines() if l.startswith("distinct")][-1])
    return dict(c=int(v["c"]), ops_per_s=v["ops_per_s"], p50_us=v["p50_us"])


SQL_RT_RUNS = [0]


def sql_round_trip(n=500):
    """p50 of one trivial SQL statement over pgbench's connection (one round trip)"""
    script = write_script("select1.sql", "SELECT 1;\n")
    SQL_RT_RUNS[0] += 1
    st, _ = pgbench("sql_rt_%d" % SQL_RT_RUNS[0], script, 1, transactions=n)
    return st["p50_us"]


def write_script(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def summarize(rounds, keys=("p50_us", "p99_us", "ops_per_s")):
    s = {k: med([r.get(k) for r in rounds]) for k in keys}
    s["rounds"] = rounds
    return s


# ------------------------------------------------------------ etcd / proc

def etcd_metrics():
    with urllib.request.urlopen(ETCD + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = {
        "keepalive_msgs": r'^grpc_server_msg_received_total\{grpc_method="LeaseKeepAlive"[^}]*\} (\S+)',
        # each HTTP POST to /v3/lease/keepalive is one LeaseKeepAlive stream:
        # one per renewal when sent one-shot, one in all when streamed
        "keepalive_streams": r'^grpc_server_started_total\{grpc_method="LeaseKeepAlive"[^}]*\} (\S+)',
        "lease_renewed": r"^etcd_debugging_lease_renewed_total (\S+)",
        "lease_granted": r"^etcd_debugging_lease_granted_total (\S+)",
        "lease_revoked": r"^etcd_debugging_lease_revoked_total (\S+)",
    }
    res = {}
    for k, pat in want.items():
        m = re.search(pat, text, re.M)
        res[k] = float(m.group(1)) if m else None
    return res


def etcd_txns():
    """etcd's own count of the Txn requests it handled (every gRPC code)."""
    with urllib.request.urlopen(ETCD + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r'^grpc_server_handled_total\{[^}]*grpc_method="Txn"[^}]*\} (\S+)', text, re.M))


def etcd_post(path, body):
    req = urllib.request.Request(ETCD + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


def b64(s):
    import base64
    return base64.b64encode(s.encode()).decode()


def etcd_count_prefix(pfx):
    end = pfx[:-1] + chr(ord(pfx[-1]) + 1)
    r = etcd_post("/v3/kv/range", {"key": b64(pfx), "range_end": b64(end), "count_only": True})
    return int(r.get("count", 0))


def etcd_lease_count():
    return len(etcd_post("/v3/lease/leases", {}).get("leases", []))


def proc_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime


def proc_stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()


def pg_ticks():
    """CPU ticks of our PostgreSQL: postmaster (with its reaped children,
    i.e. exited backends) plus its live children."""
    if not PM_PID:
        return None
    f = proc_stat_fields(PM_PID)
    total = sum(int(x) for x in f[11:15])
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                g = proc_stat_fields(int(d))
            except (OSError, IndexError):
                continue
            if int(g[1]) == PM_PID:
                total += sum(int(x) for x in g[11:15])
    return total


def machine_busy_ticks():
    """(busy ticks of all CPUs, of which niced user time)"""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]) - v[3] - v[4], v[1]       # minus idle and iowait; guest is in user


def all_proc_ticks():
    res = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    raw = f.read()
                comm = raw[raw.index("(") + 1:raw.rindex(")")]
                g = raw.rsplit(")", 1)[1].split()
                res[int(d)] = (int(g[11]) + int(g[12]), comm, int(g[1]))
            except (OSError, ValueError, IndexError):
                continue
    return res


def background_cpu(a, b, wall):
    """CPU used during the run by processes that are not ours (alive at both
    ends): other workloads sharing this machine skew the figures."""
    ours = {os.getpid(), PM_PID, ETCD_PID}
    rows = []
    for pid, (t1, comm, ppid) in b.items():
        if pid in ours or ppid in ours or pid not in a:
            continue
        d = t1 - a[pid][0]
        if d > 0:
            rows.append((d, pid, comm))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    return dict(total_cores=round(total / CLK_TCK / wall, 3),
                top=[dict(pid=p, comm=c, cores=round(d / CLK_TCK / wall, 3)) for d, p, c in rows[:6]])


def pm_client_backends():
    """Client backends of our postmaster (all connect over the unix socket,
    so their process title contains "[local]")."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(proc_stat_fields(int(d))[1]) != PM_PID:
                    continue
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if b"[local]" in f.read():
                        n += 1
            except (OSError, IndexError, ValueError):
                continue
    return n


def cpu_snap():
    """Waits (at most 3 s) until the backends of the previous client are gone
    (so their CPU is in the postmaster's reaped-children time), then samples."""
    if PM_PID:
        deadline = time.monotonic() + 3
        while pm_client_backends() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    etcd = None
    if ETCD_PID:
        try:
            etcd = proc_ticks(ETCD_PID)
        except OSError:
            pass
    return dict(t=time.monotonic(), etcd=etcd, pg=pg_ticks(), client=ru.ru_utime + ru.ru_stime,
                machine=machine_busy_ticks())


def cpu_per_op(a, b, ops):
    """CPU microseconds per operation spent by etcd, PostgreSQL, the client
    program (pgbench / go-mutex / ...), and everything else on the machine."""
    if not ops:
        return None
    us = 1e6 / CLK_TCK
    res = dict(wall_s=round(b["t"] - a["t"], 3))
    res["machine_us"] = (b["machine"][0] - a["machine"][0]) * us / ops
    res["machine_busy_pct"] = 100.0 * (b["machine"][0] - a["machine"][0]) / CLK_TCK / (b["t"] - a["t"]) / (os.cpu_count() or 1)
    res["niced_us"] = (b["machine"][1] - a["machine"][1]) * us / ops
    res["etcd_us"] = (b["etcd"] - a["etcd"]) * us / ops if a["etcd"] is not None and b["etcd"] is not None else None
    res["postgres_us"] = (b["pg"] - a["pg"]) * us / ops if a["pg"] is not None else None
    res["client_us"] = (b["client"] - a["client"]) * 1e6 / ops
    known = sum(v for v in (res["etcd_us"], res["postgres_us"], res["client_us"]) if v is not None)
    res["other_us"] = res["machine_us"] - known - res["niced_us"]
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}


def proc_ppid(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def worker_pid():
    """The etcd_lock worker among the children of OUR postmaster."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            if proc_ppid(pid) != PM_PID:
                continue
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if "etcd_lock worker" in cmd:
            found.append(pid)
    if len(found) != 1:
        raise RuntimeError("expected one etcd_lock worker under postmaster %d, found %s" % (PM_PID, found))
    return found[0]


def smaps(pid):
    res = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                res[m.group(1)] = int(m.group(2))
    res["Private"] = res.get("Private_Clean", 0) + res.get("Private_Dirty", 0)
    return res


# ------------------------------------------------------------ workloads

def wl_pair(R):
    n, xn = CFG["pair_n"], CFG["xact_n"]
    scripts = {
        "etcd_lock": write_script("pair_lock.sql", "SELECT etcd_lock('%s/pair');\nSELECT etcd_unlock('%s/pair');\n" % (LP, LP)),
        "etcd_try_lock": write_script("pair_try.sql", "SELECT etcd_try_lock('%s/pairtry');\nSELECT etcd_unlock('%s/pairtry');\n" % (LP, LP)),
        "advisory": write_script("pair_adv.sql", "SELECT pg_advisory_lock(1);\nSELECT pg_advisory_unlock(1);\n"),
        "xact": write_script("xact.sql", "\\set n random(1, 1000)\nBEGIN;\nSELECT etcd_xact_lock('%s/bx/' || :n);\nCOMMIT;\n" % LP),
        "shared": write_script("pair_shared.sql", "SELECT etcd_lock_shared('%s/pairsh');\nSELECT etcd_unlock_shared('%s/pairsh');\n" % (LP, LP)),
        "semaphore": write_script("pair_sem.sql", "SELECT etcd_semaphore('%s/pairsem', 3);\nSELECT etcd_unlock_semaphore('%s/pairsem');\n" % (LP, LP)),
    }
    scripts["etcd_lock_gc_off"] = scripts["etcd_lock"]
    rounds = {k: [] for k in ("etcd_lock", "etcd_lock_gc_off", "etcd_try_lock", "advisory", "xact", "shared", "semaphore", "go", "floor", "shapes")}
    samples = {k: [] for k in ("etcd_lock", "etcd_lock_gc_off", "etcd_try_lock", "advisory", "xact", "shared", "semaphore")}
    for r in range(CFG["rounds"]):
        log("pair round %d/%d" % (r + 1, CFG["rounds"]))
        order = ["etcd_lock", "go", "floor", "etcd_lock_gc_off", "etcd_try_lock", "advisory", "xact", "shapes", "shared", "semaphore"]
        if r % 2 == 1:
            # group commit on and off in ABBA order over the rounds
            order[0], order[3] = order[3], order[0]
        for k in order:
            c0 = cpu_snap()
            if k == "go":
                res = go_mutex("pair", n, lock=LP + "/gopair")
            elif k == "floor":
                res = floor(n)
            elif k == "shapes":
                res = shapes(n, LP + "/shapes")
            else:
                res, lat = pgbench("pair_%s_r%d" % (k, r), scripts[k], 1, transactions=xn if k == "xact" else n,
                                   pgoptions=GC_OFF if k.endswith("_gc_off") else None)
                samples[k] += lat
            res["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), res["n"])
            res["round"] = r + 1
            rounds[k].append(res)
    for k, v in samples.items():
        save_samples("pair_" + k, v)
    s = {k: summarize(v) for k, v in rounds.items()}
    for k in s:
        s[k]["cpu_per_op"] = cpu_median(rounds[k])
    s["shapes"]["acquire_p50_us"] = med([x["acquire_p50_us"] for x in rounds["shapes"]])
    s["shapes"]["release_p50_us"] = med([x["release_p50_us"] for x in rounds["shapes"]])
    for k in ("etcd_lock", "etcd_try_lock"):
        e = s[k]
        e["ext_cost_vs_floor"] = ratio(e["p50_us"] - s["advisory"]["p50_us"], s["floor"]["p50_us"])
        e["vs_go"] = ratio(e["p50_us"], s["go"]["p50_us"])
        e["vs_floor"] = ratio(e["p50_us"], s["floor"]["p50_us"])
        # per-round paired ratios, to show their spread
        e["ext_cost_vs_floor_by_round"] = [ratio(a["p50_us"] - b["p50_us"], c["p50_us"]) for a, b, c in
                                           zip(rounds[k], rounds["advisory"], rounds["floor"])]
        e["vs_go_by_round"] = [ratio(a["p50_us"], g["p50_us"]) for a, g in zip(rounds[k], rounds["go"])]
        # where the pair's time goes (p50s): SQL round trips, etcd for these
        # request shapes, and what is left (the extension's client side)
        e["breakdown_p50_us"] = dict(
            sql_round_trips=s["advisory"]["p50_us"],
            etcd_gateway_requests=s["shapes"]["p50_us"],
            extension_client_side=e["p50_us"] - s["advisory"]["p50_us"] - s["shapes"]["p50_us"])
    # the new primitives' uncontended pairs, against the exclusive pair
    for k in ("shared", "semaphore"):
        s[k]["vs_exclusive"] = ratio(s[k]["p50_us"], s["etcd_lock"]["p50_us"])
        s[k]["vs_exclusive_by_round"] = [ratio(a["p50_us"], b["p50_us"]) for a, b in zip(rounds[k], rounds["etcd_lock"])]
    # group commit adds no wait to a session alone (issue 21): on / off
    s["etcd_lock"]["vs_gc_off"] = ratio(s["etcd_lock"]["p50_us"], s["etcd_lock_gc_off"]["p50_us"])
    s["etcd_lock"]["vs_gc_off_by_round"] = [ratio(a["p50_us"], b["p50_us"]) for a, b in zip(rounds["etcd_lock"], rounds["etcd_lock_gc_off"])]
    s["xact"]["vs_go"] = ratio(s["xact"]["p50_us"], s["go"]["p50_us"])
    s["xact"]["vs_floor"] = ratio(s["xact"]["p50_us"], s["floor"]["p50_us"])
    s["shapes"]["vs_floor"] = ratio(s["shapes"]["p50_us"], s["floor"]["p50_us"])
    s["go"]["vs_floor"] = ratio(s["go"]["p50_us"], s["floor"]["p50_us"])
    s["config"] = dict(n=n, xact_n=xn, rounds=CFG["rounds"])
    R["pair"] = s


def cpu_median(rounds):
    cs = [r.get("cpu_per_op") for r in rounds if r.get("cpu_per_op")]
    if not cs:
        return None
    return {k: med([c.get(k) for c in cs]) for k in cs[0]}


def r2a_latencies(path):
    """Release-to-acquire: each acquisition minus the latest release before it."""
    acqs, rels, unlock, lockcall = [], [], [], []
    with open(path) as f:
        for line in f:
            s, call, acq, rel, reld = (int(x) for x in line.split())
            acqs.append(acq)
            rels.append((rel, reld))
            unlock.append((reld - rel) / 1e3)
            lockcall.append((acq - call) / 1e3)
    acqs.sort()
    rels.sort()
    rel_starts = [r[0] for r in rels]
    lat, wake = [], []
    for t in acqs:
        i = bisect.bisect_right(rel_starts, t) - 1
        if i >= 0:
            lat.append((t - rels[i][0]) / 1e3)
            # from the moment the releasing session got its unlock answer
            wake.append((t - rels[i][1]) / 1e3)
    lat.sort()
    wake.sort()
    unlock.sort()
    extra = dict(unlock_call_p50_us=pct(unlock, 50), unlock_call_p99_us=pct(unlock, 99),
                 unlock_return_to_acquire_p50_us=pct(wake, 50),
                 lock_calls_ge_900ms=sum(1 for x in lockcall if x >= 900000))
    return lat, len(acqs), extra


def wl_contend(R):
    script = write_script("contend.sql", "SELECT etcd_lock('%s/bc');\nSELECT etcd_unlock('%s/bc');\n" % (LP, LP))
    res = {}
    for c in CFG["contend_c"]:
        rounds = {"pgbench": [], "client": [], "go": [], "handoff_floor": [], "sql_rt": []}
        pb_samples, r2a_samples = [], []
        for r in range(CFG["rounds"]):
            log("contend c=%d round %d/%d" % (c, r + 1, CFG["rounds"]))
            # group commit off beside on, in ABBA order over the rounds
            if r % 2 == 1:
                off, _ = pgbench("contend_gcoff_c%d_r%d" % (c, r), script, c, seconds=CFG["contend_secs"], pgoptions=GC_OFF)
            c0 = cpu_snap()
            st, lat = pgbench("contend_c%d_r%d" % (c, r), script, c, seconds=CFG["contend_secs"])
            st["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), st["n"])
            st["stalls_ge_900ms"] = sum(1 for x in lat if x >= 900000)
            st["round"] = r + 1
            rounds["pgbench"].append(st)
            pb_samples += lat
            if r % 2 == 0:
                off, _ = pgbench("contend_gcoff_c%d_r%d" % (c, r), script, c, seconds=CFG["contend_secs"], pgoptions=GC_OFF)
            off["round"] = r + 1
            rounds.setdefault("pgbench_gc_off", []).append(off)
            ev = os.path.join(RAW, "contend_events_c%d_r%d.txt" % (c, r))
            out = run([CLIENT, "contend", "-c", str(c), "-T", str(CFG["contend_secs"]), "-lock", LP + "/bcl", "-out", ev],
                      CFG["contend_secs"] * 3 + 90)
            v = kv(out)
            lat2, nacq, extra = r2a_latencies(ev)
            r2a_samples += lat2
            cl = dict(round=r + 1, acquisitions=nacq, handoffs_per_s=v.get("handoffs_per_s"),
                      r2a_p50_us=pct(lat2, 50), r2a_p99_us=pct(lat2, 99))
            cl.update(extra)
            rounds["client"].append(cl)
            c0 = cpu_snap()
            g = go_mutex("contend", CFG["contend_go_secs"] * 10, c=c, lock=LP + "/gocontend")
            g["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), g["n"])
            g["round"] = r + 1
            rounds["go"].append(g)
            rounds["handoff_floor"].append(handoff_floor(CFG["handoff_n"], LP + "/handoff_floor"))
            if not R.get("pair"):
                rounds["sql_rt"].append(sql_round_trip())
        save_samples("contend_pair_c%d" % c, pb_samples)
        save_samples("contend_r2a_c%d" % c, r2a_samples)
        e = dict(handoffs_per_s=med([x["ops_per_s"] for x in rounds["pgbench"]]),
                 pair_p50_us=med([x["p50_us"] for x in rounds["pgbench"]]),
                 pair_p99_us=med([x["p99_us"] for x in rounds["pgbench"]]),
                 r2a_p50_us=med([x["r2a_p50_us"] for x in rounds["client"]]),
                 r2a_p99_us=med([x["r2a_p99_us"] for x in rounds["client"]]),
                 client_handoffs_per_s=med([x["handoffs_per_s"] for x in rounds["client"]]),
                 unlock_call_p50_us=med([x["unlock_call_p50_us"] for x in rounds["client"]]),
                 unlock_return_to_acquire_p50_us=med([x["unlock_return_to_acquire_p50_us"] for x in rounds["client"]]),
                 stalls_ge_900ms=sum(x["stalls_ge_900ms"] for x in rounds["pgbench"]),
                 client_stalls_ge_900ms=sum(x["lock_calls_ge_900ms"] for x in rounds["client"]),
                 cpu_per_op=cpu_median(rounds["pgbench"]))
        go = summarize(rounds["go"])
        go["cpu_per_op"] = cpu_median(rounds["go"])
        e["vs_go"] = ratio(e["handoffs_per_s"], go["ops_per_s"])
        e["vs_go_by_round"] = [ratio(a["ops_per_s"], g["ops_per_s"]) for a, g in zip(rounds["pgbench"], rounds["go"])]
        e["handoffs_per_s_gc_off"] = med([x["ops_per_s"] for x in rounds["pgbench_gc_off"]])
        e["vs_gc_off"] = ratio(e["handoffs_per_s"], e["handoffs_per_s_gc_off"])
        e["vs_gc_off_by_round"] = [ratio(a["ops_per_s"], b["ops_per_s"]) for a, b in zip(rounds["pgbench"], rounds["pgbench_gc_off"])]
        e["rounds_pgbench"] = rounds["pgbench"]
        e["rounds_client"] = rounds["client"]
        # one SQL round trip: half the advisory-lock pair (two statements)
        # of the pair workload when it ran, else pgbench's SELECT 1
        adv = R.get("pair", {}).get("advisory", {}).get("p50_us")
        hf = dict(p50_us=med([x["p50_us"] for x in rounds["handoff_floor"]]),
                  p99_us=med([x["p99_us"] for x in rounds["handoff_floor"]]),
                  sql_round_trip_p50_us=adv / 2 if adv else med(rounds["sql_rt"]),
                  sql_round_trip_source="pair advisory p50 / 2" if adv else "pgbench SELECT 1 p50",
                  rounds=rounds["handoff_floor"])
        # the most handoffs/s a session-per-holder scheme can reach: each
        # handoff is a delete seen by a watcher, plus the SQL round trip that
        # returns the lock call to its client
        hf["handoffs_per_s_bound"] = 1e6 / (hf["p50_us"] + hf["sql_round_trip_p50_us"])
        e["vs_handoff_bound"] = ratio(e["handoffs_per_s"], hf["handoffs_per_s_bound"])
        e["r2a_vs_handoff_floor"] = ratio(e["r2a_p50_us"], hf["p50_us"])
        res["c%d" % c] = dict(ext=e, go=go, handoff_floor=hf)
    res["config"] = dict(seconds=CFG["contend_secs"], go_n_per_session=CFG["contend_go_secs"] * 10, rounds=CFG["rounds"])
    R["contend"] = res


def wl_distinct(R):
    script = write_script("distinct.sql", "SELECT etcd_lock('%s/bd/' || :client_id);\nSELECT etcd_unlock('%s/bd/' || :client_id);\n" % (LP, LP))
    res = {}
    for c in CFG["distinct_c"]:
        rounds = {"ext": [], "go": [], "floor": []}
        samples = []
        for r in range(CFG["rounds"]):
            log("distinct c=%d round %d/%d" % (c, r + 1, CFG["rounds"]))
            # with group commit and without (issue 21: the capacity table),
            # in ABBA order over the rounds
            for gc in ((True, False) if r % 2 == 0 else (False, True)):
                c0, t0 = cpu_snap(), etcd_txns()
                st, lat = pgbench("distinct_%sc%d_r%d" % ("" if gc else "gcoff_", c, r), script, c,
                                  seconds=CFG["distinct_secs"], pgoptions=None if gc else GC_OFF)
                st["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), st["n"])
                st["etcd_txns_per_op"] = (etcd_txns() - t0) / st["n"] if st["n"] else None
                st["round"] = r + 1
                if gc:
                    rounds["ext"].append(st)
                    samples += lat
                else:
                    rounds.setdefault("ext_gc_off", []).append(st)
            c0 = cpu_snap()
            g = go_mutex("distinct", CFG["distinct_go_n"][c], c=c, lock=LP + "/godistinct")
            g["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), g["n"])
            g["round"] = r + 1
            rounds["go"].append(g)
            c0 = cpu_snap()
            fl = distinct_floor(CFG["distinct_secs"], c, LP + "/bdfloor")
            fl["cpu_per_op"] = cpu_per_op(c0, cpu_snap(), fl["ops_per_s"] * CFG["distinct_secs"])
            fl["round"] = r + 1
            rounds["floor"].append(fl)
        save_samples("distinct_c%d" % c, samples)
        e, go = summarize(rounds["ext"]), summarize(rounds["go"])
        floor_s = summarize(rounds["floor"], keys=("ops_per_s", "p50_us"))
        floor_s["cpu_per_op"] = cpu_median(rounds["floor"])
        e["vs_floor"] = ratio(e["ops_per_s"], floor_s["ops_per_s"])
        e["vs_floor_by_round"] = [ratio(a["ops_per_s"], f["ops_per_s"]) for a, f in zip(rounds["ext"], rounds["floor"])]
        e["cpu_per_op"], go["cpu_per_op"] = cpu_median(rounds["ext"]), cpu_median(rounds["go"])
        e["etcd_txns_per_op"] = med([x["etcd_txns_per_op"] for x in rounds["ext"]])
        off = summarize(rounds["ext_gc_off"])
        off["cpu_per_op"] = cpu_median(rounds["ext_gc_off"])
        off["etcd_txns_per_op"] = med([x["etcd_txns_per_op"] for x in rounds["ext_gc_off"]])
        e["vs_gc_off"] = ratio(e["ops_per_s"], off["ops_per_s"])
        ee, ge = (e["cpu_per_op"] or {}).get("etcd_us"), (go["cpu_per_op"] or {}).get("etcd_us")
        e["etcd_cpu_vs_go"] = ratio(ee, ge) if ee and ge else None
        e["vs_go"] = ratio(e["ops_per_s"], go["ops_per_s"])
        e["vs_go_by_round"] = [ratio(a["ops_per_s"], g["ops_per_s"]) for a, g in zip(rounds["ext"], rounds["go"])]
        res["c%d" % c] = dict(ext=e, ext_gc_off=off, go=go, floor=floor_s)
    res["config"] = dict(seconds=CFG["distinct_secs"], go_n_per_session=CFG["distinct_go_n"], rounds=CFG["rounds"])
    R["distinct"] = res


def lease_ttl_s():
    v = psql("SELECT setting || ' ' || coalesce(unit, '') FROM pg_settings WHERE name = 'etcd_lock.lease_ttl'").split()
    mult = {"s": 1, "ms": 0.001, "min": 60}.get(v[1] if len(v) > 1 else "s", 1)
    return float(v[0]) * mult


def wl_idle(R):
    nh, ni, secs = CFG["idle_holders"], CFG["idle_sessions"], CFG["idle_secs"]
    ttl = lease_ttl_s()
    pidfile = os.path.join(WORK, "idle_pids.txt")
    log("idle: opening %d lock-holding + %d never-locking sessions" % (nh, ni))
    p = subprocess.Popen([CLIENT, "hold", "-n", str(nh), "-idle", str(ni), "-lock", LP + "/bi",
                          "-pidfile", pidfile, "-max-secs", str(secs + 300)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    CHILDREN.add(p)
    ok = False
    try:
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline and p.poll() is None:
            rl, _, _ = select.select([p.stdout], [], [], 1.0)
            if rl:
                line = p.stdout.readline().strip()
                if line == "ready":
                    break
        if line != "ready":
            raise RuntimeError("hold did not get ready: %s" % (p.stderr.read() if p.poll() is not None else "timeout"))
        holders, idles = [], []
        with open(pidfile) as f:
            for l in f:
                kind, pid = l.split()
                (holders if kind == "H" else idles).append(int(pid))
        wpid = worker_pid()
        leases_in_etcd = etcd_lease_count()
        # one TTL/3 of settling: the burst of grants at connect time is over
        time.sleep(min(ttl / 3, 5))
        # a whole number of renewal periods, so each lease renews the same
        # number of times inside the window
        period = ttl / 3
        window = max(1, round(secs / period)) * period
        m0, w0, t0 = etcd_metrics(), proc_ticks(wpid), time.monotonic()
        e0 = proc_ticks(ETCD_PID) if ETCD_PID else None
        time.sleep(window)
        m1, w1, t1 = etcd_metrics(), proc_ticks(wpid), time.monotonic()
        e1 = proc_ticks(ETCD_PID) if ETCD_PID else None
        mem_h = [smaps(pid) for pid in holders]
        mem_i = [smaps(pid) for pid in idles]
        tokens_ok = psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        ok = True
    finally:
        if not ok:
            p.kill()
        try:
            p.stdin.close()
        except Exception:
            pass
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        CHILDREN.discard(p)
    wall = t1 - t0
    ka = (m1["keepalive_msgs"] - m0["keepalive_msgs"]) / wall if m0["keepalive_msgs"] is not None else None
    ren = (m1["lease_renewed"] - m0["lease_renewed"]) / wall if m0["lease_renewed"] is not None else None
    per_lease = ka * (ttl / 3) / nh if ka is not None and nh else None
    mem = {}
    for key in ("Rss", "Pss", "Private", "Anonymous"):
        h = med([x.get(key) for x in mem_h])
        i = med([x.get(key) for x in mem_i])
        mem[key] = dict(holder_median_kib=h, idle_median_kib=i, per_session_kib=(h - i) if h is not None and i is not None else None)
    R["idle"] = dict(
        holders=nh, idle_sessions=ni, seconds=round(wall, 2), lease_ttl_s=ttl, leases_in_etcd_at_start=leases_in_etcd,
        client_backends_seen=int(tokens_ok),
        keepalive_requests_per_s=ka, lease_renewals_per_s=ren,
        keepalive_http_requests_per_s=((m1["keepalive_streams"] - m0["keepalive_streams"]) / wall
                                       if m0.get("keepalive_streams") is not None else None),
        expected_keepalives_per_s=nh / (ttl / 3),
        keepalives_per_lease_per_ttl3=per_lease, window_periods=max(1, round(secs / (ttl / 3))),
        worker_pid=wpid, worker_cpu_pct=100.0 * (w1 - w0) / CLK_TCK / wall,
        worker_cpu_s=(w1 - w0) / CLK_TCK,
        etcd_cpu_pct=(100.0 * (e1 - e0) / CLK_TCK / wall) if e0 is not None else None,
        memory=mem, per_session_kib=mem["Pss"]["per_session_kib"],
        metrics_before=m0, metrics_after=m1)


def parse_abort(path):
    rb, base = [], []
    with open(path) as f:
        for line in f:
            k, v = line.split()
            (rb if k == "rollback" else base).append(float(v))
    rb.sort()
    base.sort()
    return dict(n=len(rb), p50_us=pct(rb, 50), p99_us=pct(rb, 99), max_us=rb[-1] if rb else None,
                baseline_no_locks_p50_us=pct(base, 50)), rb


def wait_keys_gone(pfx, secs):
    deadline = time.monotonic() + secs
    n = etcd_count_prefix(pfx)
    while n > 0 and time.monotonic() < deadline:
        time.sleep(0.25)
        n = etcd_count_prefix(pfx)
    return n


def wl_abort(R):
    it, nl = CFG["abort_iters"], CFG["abort_locks"]
    res = dict(iterations=it, locks_per_txn=nl)
    log("abort: ROLLBACK of %d xact locks, etcd up" % nl)
    f = os.path.join(RAW, "abort_up.txt")
    run([CLIENT, "abort", "-iters", str(it), "-locks", str(nl), "-lock", LP + "/baup", "-out", f], 120 + it * 5)
    res["etcd_up"], rb = parse_abort(f)
    save_samples("abort_up", rb)
    res["etcd_up"]["keys_left_after_10s"] = wait_keys_gone(LP + "/baup/", 10)
    if ETCD_PID:
        log("abort: ROLLBACK of %d xact locks, etcd stopped (SIGSTOP pid %d)" % (nl, ETCD_PID))
        f = os.path.join(RAW, "abort_down.txt")
        try:
            run([CLIENT, "abort", "-iters", str(it), "-locks", str(nl), "-lock", LP + "/badown",
                 "-etcd-pid", str(ETCD_PID), "-out", f], 120 + it * 5)
        finally:
            etcd_continue()
        res["etcd_down"], rb = parse_abort(f)
        save_samples("abort_down", rb)
        res["etcd_down"]["keys_left_after_10s"] = wait_keys_gone(LP + "/badown/", 10)
    else:
        res["etcd_down"] = dict(skipped="ETCD_ENDPOINT was given: not our etcd, so it is not stopped")
    # etcd refusing connections: the instance is pointed at a loopback port
    # nothing listens on for the ROLLBACK, then back (bench_client)
    log("abort: ROLLBACK of %d xact locks, etcd refusing connections" % nl)
    f = os.path.join(RAW, "abort_refused.txt")
    run([CLIENT, "abort", "-iters", str(it), "-locks", str(nl), "-lock", LP + "/barefused",
         "-refuse-endpoint", "http://127.0.0.1:9", "-out", f], 120 + it * 5)
    res["etcd_refusing"], rb = parse_abort(f)
    save_samples("abort_refused", rb)
    res["etcd_refusing"]["keys_left_after_10s"] = wait_keys_gone(LP + "/barefused/", 10)
    R["abort"] = res


def wl_leak(R):
    n = CFG["leak_cycles"]
    log("leak: %d etcd_lock/etcd_unlock cycles in one session" % n)
    f = os.path.join(RAW, "leak.txt")
    run([CLIENT, "leak", "-n", str(n), "-warmup", str(CFG["leak_warmup"]), "-lock", LP + "/bl", "-out", f,
         "-max-secs", str(int(n * 0.02 + 60))], n * 0.02 + 120)
    samples, cycles, secs = [], None, None
    with open(f) as fh:
        for line in fh:
            if line.startswith("sample"):
                samples.append({k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)})
            elif line.startswith("cycles"):
                parts = line.split()
                cycles, secs = int(parts[1]), float(parts[3])
    first, last = samples[0], samples[-1]
    R["leak"] = dict(cycles=cycles, warmup=CFG["leak_warmup"], seconds=secs,
                     cycles_per_s=cycles / secs if secs else None,
                     rss_before_kib=first["VmRSS"], rss_after_kib=last["VmRSS"],
                     rss_growth_kib=last["VmRSS"] - first["VmRSS"],
                     anon_growth_kib=last["RssAnon"] - first["RssAnon"],
                     pss_growth_kib=last["Pss"] - first["Pss"],
                     vmdata_growth_kib=last["VmData"] - first["VmData"],
                     samples=samples)


def wl_first(R):
    n = CFG.get("first_sessions", 200)
    log("first: %d new sessions, each timing its first etcd_lock and a second (warm) one" % n)
    f = os.path.join(RAW, "first.txt")
    run([CLIENT, "first", "-n", str(n), "-lock", LP + "/bf", "-out", f], n * 0.5 + 60)
    firsts, warms = [], []
    with open(f) as fh:
        for line in fh:
            a, b = line.split()
            firsts.append(float(a))
            warms.append(float(b))
    firsts.sort()
    warms.sort()
    R["first"] = dict(sessions=n, first_p50_us=pct(firsts, 50), first_p99_us=pct(firsts, 99),
                      warm_p50_us=pct(warms, 50), warm_p99_us=pct(warms, 99),
                      first_vs_warm=(pct(firsts, 50) / pct(warms, 50)) if warms and pct(warms, 50) else None)


# ------------------------------------------------------------ report

def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return ("%." + str(digits) + "f") % v


def fx(v):
    return "n/a" if v is None else "%.2fx" % v


def targets(R):
    T = []

    def add(name, value, op, limit, unit=""):
        if value is None or op is None:
            ok = None
        else:
            ok = value <= limit if op == "<=" else value < limit if op == "<" else value >= limit
        T.append(dict(target=name, value=value, op=op, limit=limit, unit=unit,
                      result="PASS" if ok else ("MISS" if ok is not None else ("REPORT" if op is None and value is not None else "N/A"))))

    p = R.get("pair")
    if p:
        e, sh = p["etcd_lock"], p["shapes"]
        own = e["p50_us"] - p["advisory"]["p50_us"]
        add("pair: etcd_lock own cost (pair p50 - advisory p50) / shapes floor p50", ratio(own, sh["p50_us"]), "<=", 1.05, "x")
        add("pair: shapes floor p50 / plain floor p50 (no cheaper correct shape found: report)", sh.get("vs_floor"), "<=", 1.15, "x")
        add("pair: etcd_lock pair p50 / go pair p50 (gateway-bound, for readers)", e["vs_go"], None, None, "x")
        for k in ("shared", "semaphore"):
            if k in p:
                add("pair: %s pair p50 / exclusive pair p50" % k, p[k].get("vs_exclusive"), None, None, "x")
    fl = R.get("first")
    if fl:
        add("first: first etcd_lock of a new session p50 / a warm one's p50", fl["first_vs_warm"], "<=", 1.15, "x")
    c = R.get("contend")
    if c:
        for cc in (4, 16):
            k = "c%d" % cc
            if k in c:
                add("contend c=%d: release-to-acquire p50 / handoff floor p50" % cc, c[k]["ext"]["r2a_vs_handoff_floor"], "<=", 1.3, "x")
                add("contend c=%d: handoffs/s / (1 / (handoff floor + one SQL round trip))" % cc, c[k]["ext"]["vs_handoff_bound"], ">=", 0.7, "x")
                add("contend c=%d: handoffs/s / go handoffs/s (go bound by etcd's 100 ms catch-up, for readers)" % cc, c[k]["ext"]["vs_go"], None, None, "x")
    d = R.get("distinct")
    if d:
        for cc, lim in ((8, 0.9), (32, 0.8)):
            k = "c%d" % cc
            if k in d:
                add("distinct c=%d: acquisitions/s / distinct floor" % cc, d[k]["ext"].get("vs_floor"), ">=", lim, "x")
                add("distinct c=%d: acquisitions/s / go (gateway-bound, for readers)" % cc, d[k]["ext"]["vs_go"], None, None, "x")
    # issue 21 (group commit): its table, every figure from this run
    if d:
        for cc, lim in ((8, 1.0), (32, 1.2)):
            k = "c%d" % cc
            if k in d:
                add("21: distinct c=%d: acquisitions/s / go's client" % cc, d[k]["ext"]["vs_go"], ">=", lim, "x")
        if "c32" in d:
            add("21: distinct c=32: etcd Txn requests per lock+unlock (etcd's counter)", d["c32"]["ext"].get("etcd_txns_per_op"), "<=", 0.5)
            add("21: distinct c=32: etcd CPU per lock+unlock / go's client's", d["c32"]["ext"].get("etcd_cpu_vs_go"), "<=", 1.0, "x")
            add("21: distinct c=32: acquisitions/s, group commit on / off (for readers)", d["c32"]["ext"].get("vs_gc_off"), None, None, "x")
    if d:
        # capacity: lock+unlock pairs per second one etcd core serves, from
        # etcd's CPU per pair in this run (one member, local disk)
        for cc in (8, 32):
            k = "c%d" % cc
            if k not in d:
                continue
            for label, side in (("on", d[k]["ext"]), ("off", d[k].get("ext_gc_off", {})), ("go client", d[k]["go"])):
                us = (side.get("cpu_per_op") or {}).get("etcd_us")
                add("21: capacity c=%d, group commit %s: lock+unlock/s per etcd core" % (cc, label) if label != "go client"
                    else "21: capacity c=%d, etcd's Go client: lock+unlock/s per etcd core" % cc,
                    1e6 / us if us else None, None, None, "/s")
    if p and "vs_gc_off" in p["etcd_lock"]:
        add("21: pair p50, group commit on / off (same run: no added wait)", p["etcd_lock"]["vs_gc_off"], "<=", 1.03, "x")
        prev = R.get("previous", {}).get("pair_p50_us")
        if prev:
            add("21: pair p50 / the previous full run's (%s us; machine drift included)" % fmt(prev),
                ratio(p["etcd_lock"]["p50_us"], prev), None, None, "x")
    if c:
        for cc in (4, 16):
            k = "c%d" % cc
            if k in c and "vs_gc_off" in c[k]["ext"]:
                add("21: contend c=%d: handoffs/s, group commit on / off (same run: not lower)" % cc,
                    c[k]["ext"]["vs_gc_off"], ">=", 0.97, "x")
    i = R.get("idle")
    if i:
        # a lease renewed exactly once per TTL/3 shows k or k+1 renewals in
        # a window of k periods: the window's resolution is 1/k
        k = i.get("window_periods") or max(1, round(i["seconds"] / (i["lease_ttl_s"] / 3)))
        add("idle: keepalives per lease per TTL/3 (%d-period window, +1/%d resolution)" % (k, k),
            i["keepalives_per_lease_per_ttl3"], "<=", round(1.0 + 1.0 / k, 3))
        add("idle: worker CPU (%% of a core, %d holders)" % i["holders"], i["worker_cpu_pct"], "<=", 0.5, "%")
        add("idle: memory per lock-holding session (Pss, holder - idle)", i["per_session_kib"], "<", 256, "KiB")
    a = R.get("abort")
    if a:
        # ROLLBACK waits for the worker's first attempt at the releases
        # (etcd_lock.release_wait, 1 s): one round trip to etcd (the shapes
        # floor's release request) + 1 ms with etcd up, 1 ms when etcd
        # refuses, the release wait when it hangs
        rtt = p["shapes"]["release_p50_us"] if p else None
        up = a["etcd_up"].get("p50_us")
        add("abort: ROLLBACK p50 with 10 xact locks, etcd up, minus 1 RTT (%s us)" % fmt(rtt),
            (up - rtt) if up is not None and rtt is not None else None, "<=", 1000, "us")
        if "etcd_refusing" in a:
            add("abort: ROLLBACK p50 with 10 xact locks, etcd refusing", a["etcd_refusing"].get("p50_us"), "<=", 1000, "us")
        add("abort: ROLLBACK p50 with 10 xact locks, etcd frozen (release_wait 1 s, +10 ms)", a["etcd_down"].get("p50_us"), "<=", 1010000, "us")
    l = R.get("leak")
    if l:
        add("leak: backend RSS growth over %d cycles" % l["cycles"], l["rss_growth_kib"], "<", 1024, "KiB")
    return T


def cpu_str(c):
    if not c:
        return "cpu n/a"
    return "etcd=%s pg=%s client=%s (machine %s%% busy)" % (
        fmt(c.get("etcd_us")), fmt(c.get("postgres_us")), fmt(c.get("client_us")), fmt(c.get("machine_busy_pct")))


def ckeys(d):
    return sorted((k for k in d if re.fullmatch(r"c\d+", k)), key=lambda s: int(s[1:]))


def table(R):
    L = []
    p = R.get("pair")
    if p:
        e = p["etcd_lock"]
        L.append("pair etcd_lock/unlock          p50_us=%s p99_us=%s ops_per_s=%s ext_cost_vs_floor=%s vs_go=%s vs_floor=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"]), fx(e["ext_cost_vs_floor"]), fx(e["vs_go"]), fx(e["vs_floor"])))
        e = p["etcd_try_lock"]
        L.append("pair etcd_try_lock/unlock      p50_us=%s p99_us=%s ops_per_s=%s ext_cost_vs_floor=%s vs_go=%s vs_floor=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"]), fx(e["ext_cost_vs_floor"]), fx(e["vs_go"]), fx(e["vs_floor"])))
        e = p["xact"]
        L.append("pair xact txn (BEGIN;xact_lock;COMMIT) p50_us=%s p99_us=%s ops_per_s=%s vs_go=%s vs_floor=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"]), fx(e["vs_go"]), fx(e["vs_floor"])))
        for k, label in (("shared", "etcd_lock_shared/unlock_shared"), ("semaphore", "etcd_semaphore(3)/unlock_semaphore")):
            if k in p:
                e = p[k]
                L.append("pair %-34s p50_us=%s p99_us=%s ops_per_s=%s vs_exclusive_pair=%s"
                         % (label, fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"]), fx(e.get("vs_exclusive"))))
        e = p["advisory"]
        L.append("pair pg_advisory_lock/unlock   p50_us=%s p99_us=%s ops_per_s=%s (SQL round-trip cost)"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"])))
        e = p["go"]
        L.append("pair go-mutex (reference)      p50_us=%s p99_us=%s ops_per_s=%s vs_floor=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"]), fx(e["vs_floor"])))
        e = p["floor"]
        L.append("pair http-floor (reference)    p50_us=%s p99_us=%s ops_per_s=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["ops_per_s"])))
        e = p["shapes"]
        b = p["etcd_lock"]["breakdown_p50_us"]
        L.append("pair ext request shapes, raw curl (diagnostic) p50_us=%s p99_us=%s (acquire %s + release %s) vs_floor=%s"
                 % (fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["acquire_p50_us"]), fmt(e["release_p50_us"]), fx(e["vs_floor"])))
        L.append("pair etcd_lock breakdown p50_us: sql_round_trips=%s + etcd_gateway_requests=%s + extension_client_side=%s"
                 % (fmt(b["sql_round_trips"]), fmt(b["etcd_gateway_requests"]), fmt(b["extension_client_side"])))
        for k, label in (("etcd_lock", "etcd_lock"), ("advisory", "advisory"), ("xact", "xact"), ("go", "go-mutex"), ("floor", "http-floor"), ("shapes", "shapes")):
            L.append("  pair cpu_us_per_op %-10s %s" % (label, cpu_str(p[k].get("cpu_per_op"))))
    c = R.get("contend")
    if c:
        for k in ckeys(c):
            e, g = c[k]["ext"], c[k]["go"]
            L.append("contend %-3s etcd_lock          handoffs_per_s=%s pair_p50_us=%s pair_p99_us=%s release_to_acquire_p50_us=%s p99_us=%s vs_go=%s"
                     % (k.replace("c", "c="), fmt(e["handoffs_per_s"]), fmt(e["pair_p50_us"]), fmt(e["pair_p99_us"]),
                        fmt(e["r2a_p50_us"]), fmt(e["r2a_p99_us"]), fx(e["vs_go"])))
            L.append("contend %-3s go-mutex           handoffs_per_s=%s pair_p50_us=%s pair_p99_us=%s"
                     % (k.replace("c", "c="), fmt(g["ops_per_s"]), fmt(g["p50_us"]), fmt(g["p99_us"])))
            L.append("  contend %s: 1s-stalled lock calls pgbench=%s client=%s; handoff = unlock call p50 %s us + unlock-return-to-next-acquire p50 %s us; libpq client %s handoffs/s"
                     % (k, e["stalls_ge_900ms"], e["client_stalls_ge_900ms"], fmt(e["unlock_call_p50_us"]),
                        fmt(e["unlock_return_to_acquire_p50_us"]), fmt(e["client_handoffs_per_s"])))
            hf = c[k].get("handoff_floor")
            if hf:
                L.append("contend %-3s handoff floor      delete->watch event p50_us=%s p99_us=%s; SQL round trip p50_us=%s; bound %s handoffs/s; ext r2a/floor=%s ext/bound=%s"
                         % (k.replace("c", "c="), fmt(hf["p50_us"]), fmt(hf["p99_us"]), fmt(hf["sql_round_trip_p50_us"]),
                            fmt(hf["handoffs_per_s_bound"]), fx(e.get("r2a_vs_handoff_floor")), fx(e.get("vs_handoff_bound"))))
            L.append("  contend %s cpu_us_per_op ext %s" % (k, cpu_str(e.get("cpu_per_op"))))
            L.append("  contend %s cpu_us_per_op go  %s" % (k, cpu_str(g.get("cpu_per_op"))))
    d = R.get("distinct")
    if d:
        for k in ckeys(d):
            e, g = d[k]["ext"], d[k]["go"]
            L.append("distinct %-3s etcd_lock         acquisitions_per_s=%s p50_us=%s p99_us=%s vs_go=%s"
                     % (k.replace("c", "c="), fmt(e["ops_per_s"]), fmt(e["p50_us"]), fmt(e["p99_us"]), fx(e["vs_go"])))
            L.append("distinct %-3s go-mutex          acquisitions_per_s=%s p50_us=%s p99_us=%s"
                     % (k.replace("c", "c="), fmt(g["ops_per_s"]), fmt(g["p50_us"]), fmt(g["p99_us"])))
            f = d[k].get("floor")
            if f:
                L.append("distinct %-3s distinct floor    pairs_per_s=%s p50_us=%s; ext/floor=%s"
                         % (k.replace("c", "c="), fmt(f["ops_per_s"]), fmt(f["p50_us"]), fx(e.get("vs_floor"))))
                L.append("  distinct %s cpu_us_per_op floor %s" % (k, cpu_str(f.get("cpu_per_op"))))
            L.append("  distinct %s cpu_us_per_op ext %s" % (k, cpu_str(e.get("cpu_per_op"))))
            L.append("  distinct %s cpu_us_per_op go  %s" % (k, cpu_str(g.get("cpu_per_op"))))
    i = R.get("idle")
    if i:
        m = i["memory"]
        L.append("idle %d holders %ss             keepalive_req_per_s=%s (expected %s) keepalive_http_requests_per_s=%s per_lease_per_ttl3=%s worker_cpu_pct=%s etcd_cpu_pct=%s"
                 % (i["holders"], fmt(i["seconds"]), fmt(i["keepalive_requests_per_s"], 1), fmt(i["expected_keepalives_per_s"], 1),
                    fmt(i.get("keepalive_http_requests_per_s"), 2),
                    fmt(i["keepalives_per_lease_per_ttl3"], 3), fmt(i["worker_cpu_pct"], 2), fmt(i["etcd_cpu_pct"], 1)))
        L.append("idle memory per session KiB (holder - never-locked): Pss=%s Rss=%s Private=%s Anonymous=%s (holder Pss %s, idle Pss %s)"
                 % (fmt(m["Pss"]["per_session_kib"]), fmt(m["Rss"]["per_session_kib"]), fmt(m["Private"]["per_session_kib"]),
                    fmt(m["Anonymous"]["per_session_kib"]), fmt(m["Pss"]["holder_median_kib"]), fmt(m["Pss"]["idle_median_kib"])))
    a = R.get("abort")
    if a:
        for k in ("etcd_up", "etcd_refusing", "etcd_down"):
            if k not in a:
                continue
            e = a[k]
            if "skipped" in e:
                L.append("abort %-9s skipped: %s" % (k, e["skipped"]))
            else:
                L.append("abort %-9s ROLLBACK(10 xact locks) p50_us=%s p99_us=%s max_us=%s (no-lock ROLLBACK p50_us=%s) keys_left=%s"
                         % (k, fmt(e["p50_us"]), fmt(e["p99_us"]), fmt(e["max_us"]), fmt(e["baseline_no_locks_p50_us"]),
                            e["keys_left_after_10s"]))
    fl = R.get("first")
    if fl:
        L.append("first %d new sessions           first_lock_p50_us=%s p99_us=%s warm_lock_p50_us=%s p99_us=%s first/warm=%s"
                 % (fl["sessions"], fmt(fl["first_p50_us"]), fmt(fl["first_p99_us"]), fmt(fl["warm_p50_us"]),
                    fmt(fl["warm_p99_us"]), fx(fl["first_vs_warm"])))
    l = R.get("leak")
    if l:
        L.append("leak %d cycles one session      rss_growth_kib=%s anon_growth_kib=%s pss_growth_kib=%s (rss %s -> %s KiB, %s cycles/s)"
                 % (l["cycles"], l["rss_growth_kib"], l["anon_growth_kib"], l["pss_growth_kib"], l["rss_before_kib"],
                    l["rss_after_kib"], fmt(l["cycles_per_s"])))
    return L


def load_samples(name):
    path = os.path.join(RAW, name + ".txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return sorted(float(x) for x in f if x.strip())


def plot(R, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ecdf(ax, vals, label, **kw):
        if not vals:
            return
        n = len(vals)
        ax.plot(vals, [(i + 1) / n for i in range(n)], label="%s (n=%d)" % (label, n), **kw)

    def marks(ax, st, label, color):
        if not st or st.get("p50_us") is None:
            return
        ax.axvline(st["p50_us"], color=color, ls="--", lw=1.2, label="%s p50 %.0f us" % (label, st["p50_us"]))
        ax.axvline(st["p99_us"], color=color, ls=":", lw=1.2, label="%s p99 %.0f us" % (label, st["p99_us"]))

    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    ax = axes[0]
    p = R.get("pair")
    if p:
        ecdf(ax, load_samples("pair_etcd_lock"), "ext etcd_lock+unlock", color="C0")
        ecdf(ax, load_samples("pair_etcd_try_lock"), "ext etcd_try_lock+unlock", color="C9")
        ecdf(ax, load_samples("pair_xact"), "ext BEGIN;xact_lock;COMMIT", color="C2")
        ecdf(ax, load_samples("pair_advisory"), "pg_advisory pair (SQL only)", color="C7")
        marks(ax, p["go"], "go-mutex", "C1")
        marks(ax, p["floor"], "http-floor", "C3")
    ax.set_title("pair: one session, uncontended acquire+release")
    ax = axes[1]
    c = R.get("contend")
    if c:
        for k, col, gcol in (("c4", "C0", "C1"), ("c16", "C4", "C5")):
            if k in c:
                ecdf(ax, load_samples("contend_pair_%s" % k), "ext %s lock wait+unlock" % k, color=col)
                marks(ax, c[k]["go"], "go-mutex %s" % k, gcol)
    ax.set_title("contend: per-pair latency (wait + release), one lock")
    ax = axes[2]
    if c:
        for k, col in (("c4", "C0"), ("c16", "C4")):
            if k in c:
                ecdf(ax, load_samples("contend_r2a_%s" % k), "ext %s release->next acquire" % k, color=col)
        ax.axvline(3000, color="k", ls="--", lw=1, label="target p50 < 3 ms")
    ax.set_title("contend: release-to-acquire handoff latency (ext only)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("latency (us, log scale)")
        ax.set_ylabel("fraction of operations <= x")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    m = R.get("machine", {})
    fig.suptitle("etcd_lock benchmark %s — %s cores, %s, %s (go-mutex / http-floor print only p50/p99: dashed/dotted lines)"
                 % (R.get("finished_at", ""), m.get("nproc", "?"), m.get("etcd_version", "etcd ?"), m.get("postgres_version", "")),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine_info():
    def cmd(c):
        try:
            return subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30).stdout.strip()
        except Exception as e:
            return "unavailable: %s" % e
    repo = ENV.get("BENCH_REPO", ".")
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = cmd(["sh", "-c", "awk '/MemTotal/ {print $2 \" kB\"}' /proc/meminfo"])
    return dict(
        nproc=cmd(["nproc"]), uname=cmd(["uname", "-a"]), cpu_model=cpu, mem_total=mem,
        etcd_version=cmd(["etcd", "--version"]).splitlines()[0] if cmd(["etcd", "--version"]) else "",
        etcd_version_full=cmd(["etcd", "--version"]),
        etcd_server_version=cmd(["curl", "-s", ETCD + "/version"]),
        postgres_version=cmd([os.path.join(ENV.get("PGBIN", "/usr/lib/postgresql/15/bin"), "postgres"), "--version"]),
        pgbench_version=cmd(["pgbench", "--version"]),
        go_version=cmd(["go", "version"]),
        curl_version=cmd(["curl", "--version"]).splitlines()[0],
        extension_version=psql("SELECT extversion FROM pg_extension WHERE extname = 'etcd_lock'"),
        git_commit=cmd(["git", "-C", repo, "rev-parse", "HEAD"]),
        git_status_porcelain=cmd(["git", "-C", repo, "status", "--porcelain"]).splitlines(),
        etcd_endpoint=ETCD, etcd_started_by_bench=bool(ETCD_PID))


def scan_pg_log():
    path = ENV.get("BENCH_PG_LOG")
    res = dict(path=path)
    if not path or not os.path.exists(path):
        return res
    pats = {"panic": "PANIC", "crash": "terminated by signal", "fatal": "FATAL", "error": "ERROR",
            "warning": "WARNING", "worker_could_not": "etcd_lock worker: could not"}
    counts = {k: 0 for k in pats}
    first = []
    with open(path, errors="replace") as f:
        for line in f:
            hit = False
            for k, p in pats.items():
                if p in line:
                    counts[k] += 1
                    hit = True
            if hit and len(first) < 20:
                first.append(line.rstrip())
    res.update(counts=counts, first_lines=first)
    return res


def main():
    # our own process group: run.sh's cleanup can end every process this
    # driver started (pgbench, go-mutex, bench_client ...) by that group id
    try:
        os.setpgrp()
    except OSError:
        pass
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.makedirs(RAW, exist_ok=True)
    R = dict(command=ENV.get("BENCH_COMMAND", "bash bench/run.sh"), quick=QUICK,
             started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), config=CFG,
             machine=machine_info(), lock_prefix=LP, errors={})
    # the previous full run's figures (bench/latest), for issue 21's "vs the
    # previous full run" (reported; the judged figure is on / off in this run)
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "latest", "results.json")) as f:
            prev = json.load(f)
        R["previous"] = dict(started_at=prev.get("started_at"),
                             pair_p50_us=prev.get("pair", {}).get("etcd_lock", {}).get("p50_us"),
                             contend_handoffs_per_s={k: v["ext"]["handoffs_per_s"] for k, v in prev.get("contend", {}).items()
                                                     if re.fullmatch(r"c\d+", k)})
    except (OSError, ValueError, KeyError, TypeError):
        R["previous"] = {}
    t_start = time.monotonic()
    bg0 = all_proc_ticks()
    R["lease_ttl_s"] = lease_ttl_s()
    only = [w for w in ENV.get("BENCH_ONLY", "").split(",") if w]
    try:
        for name, fn in (("pair", wl_pair), ("contend", wl_contend), ("distinct", wl_distinct),
                         ("idle", wl_idle), ("abort", wl_abort), ("leak", wl_leak), ("first", wl_first)):
            if only and name not in only:
                continue
            t = time.monotonic()
            try:
                fn(R)
            except (Exception, KeyboardInterrupt) as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                R["errors"][name] = "".join(traceback.format_exception_only(type(e), e)).strip()
                log("ERROR in %s: %s" % (name, R["errors"][name]))
                traceback.print_exc()
            R.setdefault("workload_seconds", {})[name] = round(time.monotonic() - t, 1)
    finally:
        kill_children()
    R["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    R["duration_s"] = round(time.monotonic() - t_start, 1)
    R["background_cpu"] = background_cpu(bg0, all_proc_ticks(), R["duration_s"])
    R["postgres_log"] = scan_pg_log()
    write_json(R)          # first the figures, whatever happens to the report
    return report(R)


def write_json(R):
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(R, f, indent=1, sort_keys=False)
        f.write("\n")


def report(R):
    """Targets, table, plot; rewrites results.json with them. Prints the table."""
    try:
        R["targets"] = targets(R)
        lines = table(R)
    except Exception as e:
        R["errors"]["report"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        traceback.print_exc()
        write_json(R)
        return 1
    R["table"] = lines
    try:
        plot(R, os.path.join(OUT, "latency.png"))
        R["plot"] = "latency.png"
    except Exception as e:
        R["errors"]["plot"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        log("ERROR drawing the plot: %s" % R["errors"]["plot"])
    write_json(R)
    print()
    print("== etcd_lock benchmark (%s, rounds=%d), %s s of workloads ==" % ("QUICK" if R["quick"] else "full", R["config"]["rounds"], R["duration_s"]))
    for l in lines:
        print(l)
    print()
    print("== targets ==")
    for t in R["targets"]:
        v = t["value"]
        vs = "n/a" if v is None else ("%.3f" % v if abs(v) < 100 else "%.0f" % v)
        if t["op"] is None:
            print("%-6s %-62s %s%s" % (t["result"], t["target"], vs, t["unit"]))
        else:
            print("%-6s %-62s %s %s %s%s" % (t["result"], t["target"], vs, t["op"], t["limit"], t["unit"]))
    bg = R.get("background_cpu")
    if bg:
        print()
        print("other processes on this machine during the run used %.2f cores: %s" % (
            bg["total_cores"], ", ".join("%s(%d) %.2f" % (t["comm"], t["pid"], t["cores"]) for t in bg["top"][:4])))
    pl = R.get("postgres_log", {}).get("counts")
    if pl:
        print()
        print("postgres log: " + " ".join("%s=%d" % kv for kv in pl.items()))
    if R["errors"]:
        print()
        for k, v in R["errors"].items():
            print("ERROR %s: %s" % (k, v))
    return 1 if R["errors"] else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        # re-render the table and the plot from an existing results.json
        with open(os.path.join(OUT, "results.json")) as f:
            R = json.load(f)
        for k in ("plot", "report"):
            R["errors"].pop(k, None)
        sys.exit(report(R))
    sys.exit(main())
