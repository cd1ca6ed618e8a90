"""The deploy role on deploy_platform=eks, run from inventories/lab (host lab-eks) against a
SIMULATED cluster (tests/k8s_sim: fake API server + deterministic controller; no real EKS).

The `pg_lab` fixture is only used because bringing a lab part up writes the lab inventory
(inventories/lab/hosts.yml, which declares lab-eks); lab-eks itself needs nothing from the lab.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.k8s_sim import FakeApiServer, deployment, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
NS, APP, REPOSITORY = "opslab", "opslab-api", "registry.lab.invalid/opslab-api"
TOKEN = "lab-eks-token-3c9d"


@pytest.fixture
def cluster(tmp_path, pg_lab):
    srv = FakeApiServer(seed="deploy-eks", auto_tick=0.05, token=TOKEN).start()
    deployment(srv, APP, image=f"{REPOSITORY}:v1", replicas=2, ns=NS, progressDeadlineSeconds=30)
    srv.kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", srv.url, token=TOKEN))
    yield srv
    srv.stop()


def image(srv) -> str:
    return srv.get("deployments", APP, NS)["spec"]["template"]["spec"]["containers"][0]["image"]


def playbook(venv_bin, env, srv, play, *extra, check=False):
    cmd = [
        str(venv_bin / "ansible-playbook"),
        "-i",
        "inventories/lab",
        str(play),
        "--limit",
        "lab-eks",
        "-e",
        f"deploy_eks_kubeconfig={srv.kubeconfig}",
        *extra,
    ]
    if check:
        cmd += ["--check", "--diff"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    proc.text = " ".join((proc.stdout + proc.stderr).split()).replace('\\"', '"')  # JSON-escaped quotes
    return proc


def recap(proc) -> dict:
    m = re.search(r"lab-eks\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout)
    assert m, proc.stdout
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


def test_deploy_check_real_and_again(cluster, venv_bin, ansible_env):
    deploy = REPO / "playbooks" / "deploy.yml"
    check = playbook(venv_bin, ansible_env, cluster, deploy, "-e", "deploy_version=v2", check=True)
    assert check.returncode == 0, check.stdout
    assert recap(check)["changed"] == 1 and image(cluster) == f"{REPOSITORY}:v1" and cluster.patches == []
    assert f"{REPOSITORY}:v1 -> {REPOSITORY}:v2 (would change)" in check.text

    real = playbook(
        venv_bin, ansible_env, cluster, deploy, "-e", "deploy_version=v2", "-e", '{"deploy_eks_env": {"RELEASE": "v2"}}'
    )
    assert real.returncode == 0, real.stdout
    assert image(cluster) == f"{REPOSITORY}:v2" and recap(real)["changed"] == 1
    assert f'deployment "{APP}" successfully rolled out' in real.text
    container = cluster.get("deployments", APP, NS)["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "RELEASE", "value": "v2"}]
    assert cluster.get("deployments", APP, NS)["status"]["availableReplicas"] == 2

    again = playbook(
        venv_bin, ansible_env, cluster, deploy, "-e", "deploy_version=v2", "-e", '{"deploy_eks_env": {"RELEASE": "v2"}}'
    )
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout
    assert len(cluster.patches) == 1


def test_failed_rollout_is_rolled_back_automatically(cluster, venv_bin, ansible_env):
    cluster.controller.never_available.add(f"{REPOSITORY}:v3-broken")
    proc = playbook(venv_bin, ansible_env, cluster, REPO / "playbooks" / "deploy.yml", "-e", "deploy_version=v3-broken")
    assert proc.returncode == 2, proc.stdout
    assert (
        f'Deploying {REPOSITORY}:v3-broken to {NS}/{APP} failed: deployment "{APP}" exceeded its progress deadline'
        in proc.text
    )
    assert f'Rolled back to revision 1 ({REPOSITORY}:v1): deployment "{APP}" successfully rolled out' in proc.text
    assert image(cluster) == f"{REPOSITORY}:v1"
    d = cluster.get("deployments", APP, NS)
    assert d["status"]["availableReplicas"] == 2 and d["status"]["updatedReplicas"] == 2


@pytest.fixture
def health():
    """A health URL whose answer the test sets: (HTTP status, JSON body)."""
    state = {"answer": (200, {"status": "healthy"}), "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            state["hits"] += 1
            code, body = state["answer"]
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}/api/health"
    yield state
    srv.shutdown()
    srv.server_close()


def test_failed_health_check_after_a_good_rollout_rolls_back(cluster, health, venv_bin, ansible_env):
    deploy = REPO / "playbooks" / "deploy.yml"
    url = f"deploy_health_url={health['url']}"
    ok = playbook(venv_bin, ansible_env, cluster, deploy, "-e", "deploy_version=v2", "-e", url)
    assert ok.returncode == 0 and image(cluster) == f"{REPOSITORY}:v2" and health["hits"] >= 1, ok.stdout
    health["answer"] = (200, {"status": "degraded"})  # v3 rolls out fine but the app says it is not healthy
    bad = playbook(venv_bin, ansible_env, cluster, deploy, "-e", "deploy_version=v3", "-e", url,
                   "-e", "deploy_health_timeout=1")
    assert bad.returncode == 2, bad.stdout
    assert f"Deploying {REPOSITORY}:v3 to {NS}/{APP} failed" in bad.text
    assert f"Rolled back to revision 2 ({REPOSITORY}:v2)" in bad.text
    assert image(cluster) == f"{REPOSITORY}:v2"


def test_rollback_playbook_goes_to_the_previous_revision(cluster, venv_bin, ansible_env):
    ok = playbook(venv_bin, ansible_env, cluster, REPO / "playbooks" / "deploy.yml", "-e", "deploy_version=v2")
    assert ok.returncode == 0 and image(cluster) == f"{REPOSITORY}:v2", ok.stdout
    back = playbook(venv_bin, ansible_env, cluster, REPO / "playbooks" / "rollback.yml")
    assert back.returncode == 0, back.stdout
    assert image(cluster) == f"{REPOSITORY}:v1"
    assert f"deployment.apps/{APP} rolled back (revision 2 -> 1, {REPOSITORY}:v1)" in back.text


def test_restart_and_scale_task_files(cluster, venv_bin, ansible_env, tmp_path):
    play = tmp_path / "ops.yml"
    play.write_text(
        textwrap.dedent("""\
        - name: Restart then scale on the simulated cluster
          hosts: eks
          gather_facts: false
          tasks:
            - name: Restart
              ansible.builtin.include_role:
                name: ops.runbooks.deploy
                tasks_from: eks_restart.yml
            - name: Scale
              ansible.builtin.include_role:
                name: ops.runbooks.deploy
                tasks_from: eks_scale.yml
        """)
    )
    proc = playbook(venv_bin, ansible_env, cluster, play, "-e", "deploy_eks_replicas=4")
    assert proc.returncode == 0, proc.stdout
    d = cluster.get("deployments", APP, NS)
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
    assert d["spec"]["replicas"] == 4 and d["status"]["availableReplicas"] == 4
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    no_count = playbook(venv_bin, ansible_env, cluster, play)
    assert no_count.returncode == 2 and "eks_scale.yml needs deploy_eks_replicas" in no_count.text


def test_precheck_refuses_a_missing_deployment(cluster, venv_bin, ansible_env):
    proc = playbook(
        venv_bin,
        ansible_env,
        cluster,
        REPO / "playbooks" / "deploy.yml",
        "-e",
        "deploy_version=v2",
        "-e",
        "deploy_app_name=not-there",
    )
    assert proc.returncode == 2 and 'deployments.apps "not-there" not found in namespace opslab' in proc.text
    assert cluster.patches == []
