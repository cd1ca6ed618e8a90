"""Bench: one rollback decision + status read, k8s_rollback vs the runbook's kubectl commands.

Against the SIMULATED cluster of the tests (tests/k8s_sim, manual controller ticks), each round
rolls `web` back to its previous revision and reads the rollout status once:
  baseline  kubectl rollout undo deployment/web && kubectl rollout status --watch=false
  core      k8s_rollback's core in-process (real kubeconfig loading, HTTP to the fake server)
  module    ops.runbooks.k8s_rollback through ansible-playbook (what a playbook pays)
Prints the median seconds per round, the ratio to kubectl and API requests per round.
Run: .venv/bin/python bench/k8s_rollback/run.py [rounds]   (not collected by pytest)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab.core import collection_path  # noqa: E402

LINK = collection_path()
sys.path.insert(0, str(LINK))

from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import connect  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_rollback import Rollout  # noqa: E402
from ansible_collections.ops.runbooks.plugins.modules.k8s_rollback import ApiClientWrapper  # noqa: E402

from tests.k8s_sim import FakeApiServer, deployment, rollout, write_kubeconfig  # noqa: E402
from tests.k8s_sim.ansible_run import run_module  # noqa: E402


def main(rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="k8s-bench-"))
    srv = FakeApiServer(seed="bench").start()
    deployment(srv)
    rollout(srv, "deployments", "web", "web:v2")
    kc = write_kubeconfig(tmp / "kubeconfig", srv.url, token="t")  # noqa: S106 (fake server token)
    kubectl = shutil.which("kubectl")
    env = dict(os.environ, KUBECONFIG=str(kc), HOME=str(tmp))
    params = {"kubeconfig": str(kc), "context": None, "host": None, "api_key": None, "validate_certs": None,
              "ca_cert": None, "client_cert": None, "client_key": None}
    ansible_env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(LINK), ANSIBLE_NOCOLOR="1")
    venv_bin = Path(sys.executable).parent

    def with_kubectl():
        for args in (["rollout", "undo", "deployment/web"], ["rollout", "status", "deployment/web", "--watch=false"]):
            subprocess.run([kubectl, "--cache-dir", str(tmp / "cache"), *args], env=env, check=True,
                           capture_output=True)

    def with_core():
        client = ApiClientWrapper(connect(params))
        Rollout(client, "Deployment", "default", "web").undo(wait=False)

    def with_module():
        res, _proc = run_module(venv_bin, ansible_env, {"name": "web", "kubeconfig": str(kc), "wait": False})
        assert res.get("changed"), res

    rows = []
    for label, fn, n in (("kubectl undo + status (baseline)", with_kubectl, rounds),
                         ("k8s_rollback core, in-process", with_core, rounds),
                         ("k8s_rollback via ansible-playbook", with_module, max(3, rounds // 3))):
        if label.startswith("kubectl") and not kubectl:
            print("kubectl not found: no baseline")
            return
        times, reqs = [], []
        for _i in range(n):
            before = len(srv.requests)
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            reqs.append(len(srv.requests) - before)
            srv.controller.tick(20)
        rows.append((label, statistics.median(times), statistics.median(reqs), n))
    srv.stop()
    base = rows[0][1]
    print(f"{'what':36} {'median s':>9} {'x kubectl':>10} {'API requests':>13} {'rounds':>7}")
    for label, med, req, n in rows:
        print(f"{label:36} {med:9.3f} {med / base:10.2f} {req:13.0f} {n:7d}")
    print(json.dumps({label: round(med, 4) for label, med, _r, _n in rows}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
