"""Zero-downtime release benchmark: the deploy role releases v1 -> v2 on a lab droplet while
HTTP clients hammer it through the droplet's nginx.

    .venv/bin/python bench/pm2_release/run.py [--host ops-lab-droplet2] [--clients 4] [--skip-fork]

For each pm2 exec mode (cluster with 2 instances, then fork with 1):
  1. clean the droplet's app directory and pm2 app, deploy v1 (not measured);
  2. baseline: the same clients for 10 s with no release (requests/s, failures);
  3. release: the clients run while `ansible-playbook playbooks/deploy.yml -e deploy_version=v2`
     runs, and 2 s after it ends. A failure is any answer other than HTTP 200 (nginx's 502 when
     no app listens) or no answer within 5 s.
Printed per mode: requests, failures, versions served, the playbook's wall time, the window in
which v1 and v2 answered side by side, and the ratio of requests/s during the release to the
baseline. The droplet's app is removed at the end.

Needs the lab (`python -m lab up`). Not collected by pytest, never run by `make test`. Figures
measured on a shared, busy machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab import control, droplets  # noqa: E402
from lab.core import collection_path  # noqa: E402

_COLLECTIONS = collection_path()

BASE = "/var/www/opslab-app"
APP = "opslab-app"
BIN = Path(sys.executable).parent
ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(_COLLECTIONS), ANSIBLE_NOCOLOR="1")


class Load:
    """`clients` threads doing GET /api/version in a loop; every answer is recorded."""

    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.results: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _client in range(clients)]

    def _worker(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310 - lab URL
                    code, version = resp.status, json.loads(resp.read()).get("version")
            except urllib.error.HTTPError as exc:
                code, version = exc.code, None
            except OSError:
                code, version = 0, None
            with self.lock:
                self.results.append((start, code, version))

    def __enter__(self):
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.ended = time.monotonic()

    def summary(self) -> dict:
        failures = [r for r in self.results if r[1] != 200]
        versions: dict = {}
        for _start, code, version in self.results:
            if code == 200:
                versions[version] = versions.get(version, 0) + 1
        old = [r[0] for r in self.results if r[2] == "1.0.0"]
        new = [r[0] for r in self.results if r[2] == "2.0.0"]
        overlap = max(0.0, max(old) - min(new)) if old and new else 0.0
        failed_at = [r[0] for r in failures]
        gap = max(failed_at) - min(failed_at) if failed_at else 0.0
        elapsed = self.ended - self.started
        return {
            "requests": len(self.results), "failures": len(failures),
            "failure_codes": sorted({r[1] for r in failures}), "versions": versions,
            "rps": len(self.results) / elapsed if elapsed else 0.0, "seconds": elapsed,
            "overlap_s": overlap, "failure_window_s": gap,
        }


def ssh(lab: dict, host: dict, command: str) -> None:
    subprocess.run(droplets.ssh_command(lab["key"], host["ssh_port"], command),
                   capture_output=True, text=True, timeout=120, check=False)


def clean(lab: dict, host: dict) -> None:
    ssh(lab, host, f"pm2 delete {APP} >/dev/null 2>&1; pm2 save --force >/dev/null 2>&1; sudo rm -rf {BASE}")


def deploy(host: dict, version: str, mode: str, instances: int) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventories" / "lab"), "playbooks/deploy.yml",
         "--limit", host["name"], "-e", f"deploy_version={version}",
         "-e", f"deploy_droplet_exec_mode={mode}", "-e", f"deploy_droplet_instances={instances}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, check=False, timeout=900,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"deploy {version} ({mode}) failed:\n{proc.stdout[-3000:]}")
    return elapsed, proc


def measure(lab: dict, host: dict, mode: str, instances: int, clients: int) -> dict:
    url = f"http://127.0.0.1:{host['nginx_port']}/api/version"
    clean(lab, host)
    deploy(host, "v1", mode, instances)
    with Load(url, clients) as base:
        time.sleep(10)
    with Load(url, clients) as load:
        release_s, _proc = deploy(host, "v2", mode, instances)
        time.sleep(2)
    return {"mode": mode, "instances": instances, "baseline": base.summary(),
            "release": load.summary(), "release_s": release_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--host", default="ops-lab-droplet2")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip-fork", action="store_true")
    args = parser.parse_args()

    state = control.up(["postgres", "redis", "droplets"], quiet=True)
    droplets.release_archives()
    lab = state["droplets"]
    host = next(h for h in lab["hosts"] if h["name"] == args.host)
    runs = []
    try:
        runs.append(measure(lab, host, "cluster", 2, args.clients))
        if not args.skip_fork:
            runs.append(measure(lab, host, "fork", 1, args.clients))
    finally:
        clean(lab, host)

    print(f"\npm2 release v1 -> v2 through nginx on {args.host}, {args.clients} clients "
          f"(shared, busy machine: {os.getloadavg()[0]:.1f} load)\n")
    print("| exec mode | requests | failed | failure codes | failures span | served v1 / v2 | "
          "release (playbook) | v1+v2 overlap | req/s release / baseline | baseline failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        rel, base = run["release"], run["baseline"]
        ratio = rel["rps"] / base["rps"] if base["rps"] else 0.0
        served = f"{rel['versions'].get('1.0.0', 0)} / {rel['versions'].get('2.0.0', 0)}"
        print(f"| {run['mode']} ({run['instances']}) | {rel['requests']} | {rel['failures']} | "
              f"{rel['failure_codes'] or '-'} | {rel['failure_window_s']:.2f} s | {served} | "
              f"{run['release_s']:.1f} s | {rel['overlap_s']:.2f} s | {rel['rps']:.0f} / {base['rps']:.0f} = "
              f"{ratio:.2f} | {base['failures']} / {base['requests']} |")
    print("\n" + json.dumps(runs, indent=1, default=str))


if __name__ == "__main__":
    main()
