"""Benchmark of ops.runbooks.redis_cache_flush against the runbook's pipeline.

    .venv/bin/python bench/redis_flush/run.py [--keys 1000000] [--other 200000] [--repeat 3]

Starts PRIVATE redis-server instances (a standalone one, then a 3-master cluster) on free
ports in a temp dir and stops them by pid at the end; never touches the shared lab.

For each run the keys are (re)loaded with `redis-cli --pipe`: `p:<i>` (the ones to delete)
and `o:<i>` (must survive). Measured in the same script, on the same server:

- runbook:  `redis-cli --scan --pattern 'p:*' | xargs redis-cli del` (000 runbook)
- module:   the module's flush (connect, SCAN, UNLINK - `CacheFlusher.run`, the code the module
            runs) with max_keys above the key count, so the whole count-first path is included
- ansible:  the same flush through `ansible-playbook` (adds Ansible's process start-up)
- floor:    Redis server CPU (INFO CPU used_cpu_user + used_cpu_sys delta) consumed while the
            module flushes: the work the server must do anyway; also shown for a server-side
            Lua SCAN+UNLINK loop that involves no client work at all
- latency:  a separate process sends GET/PING every 0.5 ms during each flush; p50/p99/max
- cluster:  the same on a private 3-master cluster, primaries in parallel (threads), against
            the same flush done one primary after the other

Not collected by pytest, never run by `make test`. Figures taken on a shared, busy machine are
noisy: each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))
from lab.core import collection_path  # noqa: E402

_COLLECTIONS = collection_path()
sys.path.insert(0, str(_COLLECTIONS))

import redis  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._redis_cache_flush import (  # noqa: E402
    CacheFlusher,
    hash_slot,
    primaries,
)
from ansible_collections.ops.runbooks.plugins.module_utils._redis_client import connect, is_cluster  # noqa: E402
from redis_private import HOST, PrivateRedis, resp_set  # noqa: E402

LUA_FLOOR = """
local cursor = ARGV[1]
local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local keys = reply[2]
for i = 1, #keys, 1000 do
  redis.call('UNLINK', unpack(keys, i, math.min(i + 999, #keys)))
end
return {reply[1], #keys}
"""


# ----------------------------------------------------------------------------- helpers

def params(port: int, cluster="auto") -> dict:
    return {"login_host": HOST, "login_port": port, "login_user": None, "login_password": None, "db": 0,
            "tls": False, "tls_ca_certs": None, "tls_certfile": None, "tls_keyfile": None, "url": None,
            "cluster": cluster, "socket_timeout": 30.0}


def server_cpu(ports) -> float:
    total = 0.0
    for port in ports:
        info = redis.Redis(host=HOST, port=port).info("cpu")
        total += info["used_cpu_user"] + info["used_cpu_sys"]
    return total


def probe(port: int, key: str, stop, out) -> None:
    """Another application: a GET or PING every 0.5 ms; put sorted latencies (ms) on `out`."""
    client = redis.Redis(host=HOST, port=port)
    client.ping()
    lat = []
    i = 0
    while not stop.is_set():
        began = time.perf_counter()
        if i % 2:
            client.ping()
        else:
            client.get(key)
        lat.append((time.perf_counter() - began) * 1000)
        i += 1
        time.sleep(0.0005)
    out.put(sorted(lat))


class Latency:
    def __init__(self, port: int, key: str = "o:1"):
        self.stop = multiprocessing.Event()
        self.out = multiprocessing.Queue()
        self.proc = multiprocessing.Process(target=probe, args=(port, key, self.stop, self.out), daemon=True)

    def __enter__(self):
        self.proc.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.lat = self.out.get(timeout=30)
        self.proc.join(10)

    def pct(self, q: float) -> float:
        lat = self.lat
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")


def dataset(n_match: int, n_other: int) -> list[bytes]:
    keys = [b"p:%d" % i for i in range(n_match)] + [b"o:%d" % i for i in range(n_other)]
    return keys


def load(ports_by_slot, keys: list[bytes], ports: list[int]) -> None:
    """Load keys with redis-cli --pipe; in a cluster, each key to the primary owning its slot."""
    per_port: dict[int, list[bytes]] = {p: [] for p in ports}
    for key in keys:
        port = ports_by_slot[hash_slot(key)] if ports_by_slot else ports[0]
        per_port[port].append(resp_set(key))
    procs = [subprocess.Popen(["redis-cli", "-h", HOST, "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL) for port in ports]
    for proc, port in zip(procs, ports, strict=True):
        proc.stdin.write(b"".join(per_port[port]))
        proc.stdin.close()
    for proc in procs:
        proc.wait()


def slot_map(port: int) -> list[int]:
    owners = [0] * 16384
    for start, end, master, *_replicas in redis.Redis(host=HOST, port=port).execute_command("CLUSTER SLOTS"):
        for slot in range(start, end + 1):
            owners[slot] = int(master[1])
    return owners


def latency_reset(ports) -> None:
    """Let Redis record every event that blocks its event loop for 1 ms or more."""
    for port in ports:
        client = redis.Redis(host=HOST, port=port)
        client.config_set("latency-monitor-threshold", 1)
        client.execute_command("LATENCY", "RESET")


def longest_command(ports) -> int:
    """Longest single command (ms) Redis saw since latency_reset(); 0 = none took 1 ms."""
    worst = 0
    for port in ports:
        for event, _when, _latest, most in redis.Redis(host=HOST, port=port).execute_command("LATENCY", "LATEST"):
            if event in (b"command", b"fast-command", "command", "fast-command"):
                worst = max(worst, int(most))
    return worst


def dbsize(ports) -> int:
    return sum(redis.Redis(host=HOST, port=p).dbsize() for p in ports)


# ------------------------------------------------------------------------------ flushes

def flush_runbook(port: int) -> None:
    subprocess.run(["bash", "-c", f"redis-cli -h {HOST} -p {port} --scan --pattern 'p:*' | "
                                  f"xargs redis-cli -h {HOST} -p {port} del > /dev/null"], check=True)


def flush_module(port: int, options: dict, sequential: bool = False) -> dict:
    client = connect(params(port))
    cluster = is_cluster(client)
    nodes = primaries(client, cluster, f"{HOST}:{port}")
    if not sequential:
        result = CacheFlusher(nodes, options, fallback=client if cluster else None).run()
    else:  # one primary after the other, for comparison
        result = {"deleted": 0}
        for node in nodes:
            result["deleted"] += CacheFlusher([node], options, fallback=client).run()["deleted"]
    client.close()
    return result


def flush_lua(ports: list[int], count: int) -> None:
    for port in ports:
        client = redis.Redis(host=HOST, port=port)
        script = client.register_script("#!lua flags=allow-cross-slot-keys\n" + LUA_FLOOR)
        cursor = b"0"
        while True:
            cursor, _n = script(args=[cursor, "p:*", count])
            if cursor in (b"0", 0, "0"):
                break


def flush_ansible(port: int, options: dict, tmp: Path) -> dict:
    out = tmp / "result.json"
    args = {"login_host": HOST, "login_port": port, **options}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"ops.runbooks.redis_cache_flush": args, "register": "r"},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"}}]}]
    (tmp / "play.yml").write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(_COLLECTIONS))
    subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                    str(tmp / "play.yml"), "-e", f"ansible_python_interpreter={sys.executable}"],
                   check=True, env=env, capture_output=True, cwd=REPO)
    return json.loads(out.read_text())


def measure(name, ports, keys, owners, flush, n_match, probe_port, probe_key="o:1") -> dict:
    load(owners, keys, ports)
    assert dbsize(ports) == len(keys), f"{name}: load incomplete"
    latency_reset(ports)
    cpu0 = server_cpu(ports)
    with Latency(probe_port, probe_key) as lat:
        began = time.perf_counter()
        flush()
        wall = time.perf_counter() - began
    cpu = server_cpu(ports) - cpu0
    worst = longest_command(ports)
    left = dbsize(ports)
    ok = left == len(keys) - n_match
    return {"name": name, "wall": wall, "cpu": cpu, "p50": lat.pct(0.50), "p99": lat.pct(0.99),
            "max": lat.lat[-1] if lat.lat else float("nan"), "ok": ok, "left": left, "cmd": worst}


def idle(port: int, seconds: float = 3.0) -> dict:
    """The probe with no flush running: how noisy the machine itself is."""
    cpu0 = server_cpu([port])
    with Latency(port) as lat:
        time.sleep(seconds)
    return {"name": f"idle: no flush ({seconds:.0f} s)", "wall": seconds, "cpu": server_cpu([port]) - cpu0,
            "p50": lat.pct(0.50), "p99": lat.pct(0.99), "max": lat.lat[-1], "ok": True, "cmd": 0}


def median_of(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for field in ("wall", "cpu", "p50", "p99", "max", "cmd"):
        out[field] = statistics.median(r[field] for r in runs)
    best = min(runs, key=lambda r: r["wall"])
    out["best"] = best["wall"]
    out["best_cpu"] = best["cpu"]
    out["ok"] = all(r["ok"] for r in runs)
    out["runs"] = len(runs)
    return out


def row(r: dict) -> str:
    return (f"| {r['name']:<44} | {r['wall']:7.2f} | {r['best']:7.2f} | {r['cpu']:7.2f} | {r['p50']:6.2f} | "
            f"{r['p99']:6.2f} | {r['max']:7.1f} | {r['cmd']:5.0f} | {'yes' if r['ok'] else 'NO'} |")


HEADER = ("| run | wall s (median) | wall s (best) | server CPU s | probe p50 ms | probe p99 ms | probe max ms "
          "| longest command ms | only p:* gone |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---|")


# --------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000, help="matching keys (p:*)")
    ap.add_argument("--other", type=int, default=200_000, help="keys that must survive (o:*)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1000, help="the module's batch_size (SCAN COUNT)")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--skip-ansible", action="store_true")
    args = ap.parse_args()
    n = args.keys
    keys = dataset(n, args.other)
    options = {"patterns": ["p:*"], "max_keys": n + args.other, "batch_size": args.batch_size}
    print(f"redis-py {redis.__version__}, hiredis parser: {redis.utils.HIREDIS_AVAILABLE}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {n:,} matching keys among "
          f"{n + args.other:,}; batch_size {args.batch_size}; median of {args.repeat}", flush=True)

    results = {}
    with PrivateRedis() as rd, tempfile.TemporaryDirectory() as tmp:
        ports = [rd.port]
        results["idle"] = median_of([idle(rd.port) for _run in range(args.repeat)])
        results["idle"]["best"], results["idle"]["best_cpu"] = 3.0, results["idle"]["cpu"]
        print(row(results["idle"]), flush=True)
        plan = [("runbook", "runbook: redis-cli --scan \\| xargs redis-cli del", lambda: flush_runbook(rd.port)),
                ("module", "module flush (SCAN + windowed UNLINK)", lambda: flush_module(rd.port, options)),
                ("module5k", "module flush, batch_size 5000",
                 lambda: flush_module(rd.port, {**options, "batch_size": 5000})),
                ("lua", "floor: server-side Lua SCAN+UNLINK", lambda: flush_lua(ports, args.batch_size))]
        if not args.skip_ansible:
            plan.append(("ansible", "module via ansible-playbook (incl. start-up)",
                         lambda: flush_ansible(rd.port, options, Path(tmp))))
        for key, label, flush in plan:
            runs = [measure(label, ports, keys, None, flush, n, rd.port) for _run in range(args.repeat)]
            results[key] = median_of(runs)
            print(row(results[key]), flush=True)

    if not args.skip_cluster:
        with PrivateRedis(cluster=True) as cl:
            owners = slot_map(cl.port)
            probe_key = next(f"o:{i}" for i in range(1000) if owners[hash_slot(b"o:%d" % i)] == cl.ports[0])
            for key, label, seq in (("cluster", "cluster, 3 primaries in parallel", False),
                                    ("cluster_seq", "cluster, one primary after the other", True)):
                runs = [measure(label, cl.ports, keys, owners, lambda s=seq: flush_module(cl.port, options, s), n,
                                cl.ports[0], probe_key) for _run in range(args.repeat)]
                results[key] = median_of(runs)
                print(row(results[key]), flush=True)

    print()
    print(HEADER)
    for r in results.values():
        print(row(r))
    mod, base, lua = results["module"], results["runbook"], results["lua"]
    print()
    print("ratios                                               median   best")
    print(f"module wall / floor (server CPU of the module's flush) {mod['wall'] / mod['cpu']:6.2f}x "
          f"{mod['best'] / mod['best_cpu']:6.2f}x  (target <= 1.4x)")
    print(f"module wall / Lua floor (server-only SCAN+UNLINK CPU)  {mod['wall'] / lua['cpu']:6.2f}x "
          f"{mod['best'] / lua['best_cpu']:6.2f}x")
    print(f"Lua wall / Lua CPU (no client at all: machine share)  {lua['wall'] / lua['cpu']:6.2f}x "
          f"{lua['best'] / lua['best_cpu']:6.2f}x")
    print(f"runbook pipeline wall / module wall                    {base['wall'] / mod['wall']:6.2f}x "
          f"{base['best'] / mod['best']:6.2f}x  (target >= 6x)")
    print(f"server CPU: runbook pipeline / module                  {base['cpu'] / mod['cpu']:6.2f}x")
    print(f"concurrent client p99 during the module flush: {mod['p99']:.2f} ms (target < 5 ms); "
          f"during the runbook pipeline {base['p99']:.2f} ms; with no flush at all {results['idle']['p99']:.2f} ms; "
          f"longest single command on the server during the module flush: {mod['cmd']:.0f} ms")
    if "ansible" in results:
        print(f"ansible-playbook end to end / module flush            "
              f"{results['ansible']['wall'] / mod['wall']:6.2f}x {results['ansible']['best'] / mod['best']:6.2f}x")
    if "cluster" in results:
        c, q = results["cluster"], results["cluster_seq"]
        print(f"cluster: one primary at a time / primaries in parallel {q['wall'] / c['wall']:6.2f}x "
              f"{q['best'] / c['best']:6.2f}x")
        print(f"cluster: parallel wall / server CPU of 3 primaries     {c['wall'] / c['cpu']:6.2f}x "
              f"{c['best'] / c['best_cpu']:6.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 CPUs shared with other work)")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
