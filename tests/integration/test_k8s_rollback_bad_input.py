"""Bad input table for ops.runbooks.k8s_rollback against the SIMULATED cluster: every case fails
with a message saying what is wrong and what to do, no traceback, and nothing is changed
(no PATCH reaches the fake API server). Includes the EKS exec-plugin pitfall with a fake `aws`."""

from __future__ import annotations

import os
import socket

import pytest

from tests.k8s_sim import FakeApiServer, deployment, rollout, write_kubeconfig
from tests.k8s_sim.ansible_run import run_module, run_modules
from tests.k8s_sim.kubeconfig import write_fake_aws

TOKEN = "eks-token-k8s-aws-v1.c2VjcmV0"
EKS_ARGS = ["--region", "ap-southeast-2", "eks", "get-token", "--cluster-name", "liquid-abt-production"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    srv = FakeApiServer(seed="bad", auto_tick=0.05, token=TOKEN).start()
    deployment(srv, "web")
    rollout(srv, "deployments", "web", "web:v2")
    deployment(srv, "single")  # one revision only
    deployment(srv, "frozen")
    rollout(srv, "deployments", "frozen", "frozen:v2")
    srv.patch("deployments", "frozen", {"spec": {"paused": True}})
    tmp = tmp_path_factory.mktemp("kube")
    srv.kubeconfig = str(write_kubeconfig(tmp / "kubeconfig", srv.url, token=TOKEN))
    srv.tmp = tmp
    yield srv
    srv.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubeconfig(sim, case: str) -> tuple[str, dict]:
    """kubeconfig path and extra environment for the connection-level cases."""
    tmp = sim.tmp / case
    tmp.mkdir(exist_ok=True)
    bin_dir = tmp / "bin"
    path_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if case == "exec-fails":
        write_fake_aws(
            bin_dir, error='Unable to locate credentials. You can configure credentials by running "aws configure".'
        )
        return str(
            write_kubeconfig(tmp / "kc", sim.url, exec_args=EKS_ARGS, exec_env={"AWS_PROFILE": "prod"})
        ), path_env
    if case == "exec-missing":
        bin_dir.mkdir(exist_ok=True)
        return str(
            write_kubeconfig(tmp / "kc", sim.url, exec_args=EKS_ARGS, exec_command="aws-cli-not-installed")
        ), path_env
    if case == "exec-garbage":
        write_fake_aws(bin_dir, stdout=f"unexpected output {TOKEN}")
        return str(write_kubeconfig(tmp / "kc", sim.url, exec_args=EKS_ARGS)), path_env
    if case == "exec-works":
        write_fake_aws(bin_dir, token=TOKEN)
        return str(write_kubeconfig(tmp / "kc", sim.url, exec_args=EKS_ARGS)), path_env
    if case == "unreachable":
        return str(write_kubeconfig(tmp / "kc", f"http://127.0.0.1:{_closed_port()}", token=TOKEN)), {}
    if case == "wrong-token":
        return str(write_kubeconfig(tmp / "kc", sim.url, token="not-the-token")), {}
    if case == "no-kubeconfig":
        return str(tmp / "does-not-exist.yaml"), {}
    return sim.kubeconfig, {}


CASES = [
    # (id, module args, connection case, message fragments that must all appear)
    (
        "unknown kind",
        {"name": "web", "kind": "CronJob"},
        None,
        ["value of kind must be one of: Deployment, StatefulSet, DaemonSet, got: CronJob"],
    ),
    ("wrong type", {"name": "web", "to_revision": "latest"}, None, ["to_revision", "int"]),
    (
        "negative revision",
        {"name": "web", "to_revision": -1},
        None,
        ["unable to find specified revision -1 in history", "kubectl rollout history"],
    ),
    ("zero timeout", {"name": "web", "wait_timeout": 0}, None, ["wait_timeout must be a positive number"]),
    ("missing object", {"name": "nope"}, None, ['deployments.apps "nope" not found in namespace default']),
    (
        "missing namespace object",
        {"name": "web", "namespace": "prod"},
        None,
        ['deployments.apps "web" not found in namespace prod'],
    ),
    ("revision not found", {"name": "web", "to_revision": 9}, None, ["unable to find specified revision 9 in history"]),
    (
        "paused",
        {"name": "frozen"},
        None,
        ["you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume'"],
    ),
    ("no history", {"name": "single"}, None, ['no rollout history found for deployment "single"']),
    ("set options on undo", {"name": "web", "images": {"web": "web:v3"}}, None, ["only apply to action=set"]),
    (
        "unknown container",
        {"name": "web", "action": "set", "images": {"sidecar": "x:1"}},
        None,
        ["has no container sidecar", "its containers are web"],
    ),
    (
        "empty image",
        {"name": "web", "action": "set", "images": {"web": ""}},
        None,
        ["images values must be non-empty strings"],
    ),
    (
        "exec plugin fails",
        {"name": "web"},
        "exec-fails",
        [
            "exec plugin `aws --region ap-southeast-2 eks get-token --cluster-name liquid-abt-production`",
            "Unable to locate credentials",
            "exit status 255",
            "aws sts get-caller-identity",
        ],
    ),
    (
        "exec plugin not installed",
        {"name": "web"},
        "exec-missing",
        ["exec plugin `aws-cli-not-installed --region", "command not found on PATH"],
    ),
    (
        "exec plugin returns garbage",
        {"name": "web"},
        "exec-garbage",
        ["returned no usable token (its output is not shown"],
    ),
    (
        "unreachable API",
        {"name": "web"},
        "unreachable",
        ["cannot use the Kubernetes API", "check that the API server is reachable"],
    ),
    ("wrong token", {"name": "web"}, "wrong-token", ["(401)", "rejected the credentials"]),
    ("kubeconfig missing", {"name": "web"}, "no-kubeconfig", ["cannot use the Kubernetes API", "does-not-exist.yaml"]),
]


@pytest.fixture(scope="module")
def batch(sim, venv_bin, ansible_env):
    """The cases that need no special PATH run in one ansible-playbook; the others one by one.
    Returns {case id: (result, output, patches sent, deployments' resourceVersions before/after)}."""

    def versions():
        return {k: v["metadata"]["resourceVersion"] for k, v in sim.store.objects.items() if k[0] == "deployments"}

    out = {}
    plain = [c for c in CASES if c[2] in (None, "unreachable", "wrong-token", "no-kubeconfig")]
    before, patches = versions(), len(sim.patches)
    args = [dict(c[1], kubeconfig=_kubeconfig(sim, c[2] or "ok")[0]) for c in plain]
    results = run_modules(venv_bin, ansible_env, args)
    for case, res in zip(plain, results, strict=True):
        out[case[0]] = (res, res.pop("_output"), len(sim.patches) - patches, before, versions())
    for case in CASES:
        if case in plain:
            continue
        kubeconfig, extra_env = _kubeconfig(sim, case[2])
        before, patches = versions(), len(sim.patches)
        res, proc = run_module(venv_bin, ansible_env, dict(case[1], kubeconfig=kubeconfig), extra_env=extra_env)
        out[case[0]] = (res, proc.stdout + proc.stderr, len(sim.patches) - patches, before, versions())
    return out


@pytest.mark.parametrize("case_id,args,conn,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_clearly_and_changes_nothing(batch, case_id, args, conn, fragments):
    res, output, patches_sent, before, after = batch[case_id]
    assert res.get("failed"), res
    msg = " ".join(res["msg"].split())
    for frag in fragments:
        assert frag in msg, (frag, msg)
    # ansible-core 2.19 marks every failure "(traceback unavailable)": no Python traceback is shown
    assert "Traceback (most recent call last)" not in output, output
    assert res.get("exception") in (None, "(traceback unavailable)"), res
    assert res["changed"] is False
    assert patches_sent == 0 and after == before
    assert TOKEN not in output


def test_exec_plugin_that_works_authenticates(sim, venv_bin, ansible_env):
    kubeconfig, extra_env = _kubeconfig(sim, "exec-works")
    res, _proc = run_module(
        venv_bin, ansible_env, {"name": "web", "action": "status", "kubeconfig": kubeconfig}, extra_env=extra_env
    )
    assert not res.get("failed") and res["rollout"]["done"], res.get("msg")
