"""ops.runbooks.k8s_rollback through Ansible against the SIMULATED cluster (tests/k8s_sim):
a fake API server + deterministic controller, reached through a generated kubeconfig (the
kubernetes client's real config-loading path). No real cluster is involved."""

from __future__ import annotations

import pytest

from tests.k8s_sim import FakeApiServer, daemonset, deployment, rollout, statefulset, write_kubeconfig
from tests.k8s_sim.ansible_run import run_module

TOKEN = "sim-token-7f3a9c1e5b"


@pytest.fixture
def sim(tmp_path):
    srv = FakeApiServer(seed="it", auto_tick=0.05, token=TOKEN).start()
    srv.kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", srv.url, token=TOKEN))
    yield srv
    srv.stop()


@pytest.fixture
def run(sim, venv_bin, ansible_env):
    def _run(check=False, diff=False, **args):
        args.setdefault("kubeconfig", sim.kubeconfig)
        return run_module(venv_bin, ansible_env, args, check=check, diff=diff)[0]

    return _run


def _image(srv, name="web", plural="deployments"):
    return srv.get(plural, name)["spec"]["template"]["spec"]["containers"][0]["image"]


def test_check_mode_predicts_the_real_run_and_a_repeat_changes_nothing(sim, run):
    deployment(sim, annotations={"team": "payments"})
    rollout(sim, "deployments", "web", "web:v2", annotations={"added-after-v1": "x"})
    before = sim.get("deployments", "web")

    check = run(check=True, diff=True, name="web", to_revision=1)
    assert check["changed"] and not check.get("failed"), check
    assert sim.patches == [] and sim.get("deployments", "web") == before  # nothing sent
    assert check["diff"]["before"]["template"]["spec"]["containers"][0]["image"] == "web:v2"
    assert check["diff"]["after"]["template"]["spec"]["containers"][0]["image"] == "web:v1"

    real = run(diff=True, name="web", to_revision=1)
    assert real["changed"] and real["msg"] == "deployment.apps/web rolled back", real
    assert real["patch"] == check["patch"] and real["patch_type"] == "json"
    assert [p[2] for p in sim.patches] == [real["patch"]]  # exactly the predicted patch, once
    assert sim.patches[0][1] == "application/json-patch+json"
    assert (real["from_revision"], real["to_revision"], real["revision_after"]) == (2, 1, 3)
    assert real["images_before"] == {"web": "web:v2"} and real["images_after"] == {"web": "web:v1"}
    assert real["rollout"]["done"] and real["rollout"]["message"] == 'deployment "web" successfully rolled out'
    assert real["rollout"]["updated_replicas"] == real["rollout"]["available_replicas"] == 3

    after = sim.get("deployments", "web")
    ann = after["metadata"]["annotations"]
    assert _image(sim) == "web:v1"
    # kept from the Deployment / taken from the ReplicaSet / dropped (added after revision 1)
    assert (
        ann["kubectl.kubernetes.io/last-applied-configuration"]
        == before["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    )
    assert ann["team"] == "payments" and "added-after-v1" not in ann
    assert ann["deployment.kubernetes.io/revision"] == "3"

    again = run(diff=True, name="web", to_revision=1)
    assert not again["changed"] and again["skipped"] and len(sim.patches) == 1, again
    assert again["msg"] == "skipped rollback (current template already matches revision 1)"


def test_plain_undo_twice_goes_back_to_the_bad_version_like_kubectl(sim, run):
    deployment(sim)
    rollout(sim, "deployments", "web", "web:v2")
    first = run(name="web")
    assert first["changed"] and (first["from_revision"], first["to_revision"]) == (2, 1) and _image(sim) == "web:v1"
    second = run(name="web")
    assert second["changed"] and (second["from_revision"], second["to_revision"]) == (3, 2) and _image(sim) == "web:v2"


def test_history_ignores_replicasets_of_an_overlapping_deployment(sim, run):
    deployment(sim, "web", image="web:v1")
    rollout(sim, "deployments", "web", "web:v2")
    # Same labels, its own ReplicaSets (revision 1 = evil:v1, revision 2 = evil:v2)
    deployment(sim, "web-canary", image="evil:v1", app="web")
    rollout(sim, "deployments", "web-canary", "evil:v2")
    rss = sim.store.list("replicasets", "default", "app=web")
    assert len(rss) == 4
    res = run(name="web", to_revision=1)
    assert res["changed"] and _image(sim) == "web:v1", res


def test_progress_deadline_exceeded_fails_fast_with_kubectls_words(sim, run):
    deployment(sim, progressDeadlineSeconds=30)
    rollout(sim, "deployments", "web", "web:v2")
    rollout(sim, "deployments", "web", "web:broken", settle=False)
    sim.controller.never_available.add("web:v2")  # v2 turns out broken too: rolling back to it cannot finish
    res = run(name="web", to_revision=2, wait_timeout=120)
    assert (
        res.get("failed") and res["msg"] == 'deployment "web" exceeded its progress deadline (Deployment default/web)'
    ), res
    assert res["rollout"]["failed"] and res["changed"] is True and res["patch"]  # the patch was sent, then it failed
    assert len(sim.patches) == 1
    assert res["duration_s"] < 120


def test_wait_timeout_reports_the_last_status(sim, run):
    deployment(sim)
    rollout(sim, "deployments", "web", "web:v2")
    sim.controller.never_available.add("web:v1")
    res = run(name="web", wait_timeout=2)
    assert res.get("failed") and 'did not finish within 2 s: Waiting for deployment "web" rollout' in res["msg"], res


def test_revision_beyond_history_limit_is_gone(sim, run):
    deployment(sim, revisionHistoryLimit=1)
    for v in ("v2", "v3", "v4"):
        rollout(sim, "deployments", "web", f"web:{v}")
    res = run(name="web", to_revision=1)
    assert res.get("failed") and res["msg"] == "unable to find specified revision 1 in history", res
    ok = run(name="web", to_revision=3)
    assert ok["changed"] and _image(sim) == "web:v3"


@pytest.mark.parametrize(
    "kind,plural,build,name,old,new",
    [
        ("StatefulSet", "statefulsets", statefulset, "db", "db:v1", "db:v2"),
        ("DaemonSet", "daemonsets", daemonset, "agent", "agent:v1", "agent:v2"),
    ],
)
def test_statefulset_and_daemonset_roll_back_through_controllerrevisions(sim, run, kind, plural, build, name, old, new):
    build(sim)
    rollout(sim, plural, name, new)
    check = run(check=True, kind=kind, name=name)
    assert check["changed"] and check["patch_type"] == "strategic" and sim.patches == []
    assert check["patch"]["spec"]["template"]["$patch"] == "replace"
    real = run(kind=kind, name=name)
    assert (
        real["changed"] and real["patch"] == check["patch"] and (real["from_revision"], real["to_revision"]) == (2, 1)
    )
    assert _image(sim, name, plural) == old and real["rollout"]["done"], real
    assert sim.patches[0][1] == "application/strategic-merge-patch+json"
    again = run(kind=kind, name=name, to_revision=3)  # the restored revision got number 3
    assert not again["changed"] and again["skipped"], again
    assert again["msg"] == "skipped rollback (current template already matches revision 3)"


def test_set_restart_and_status_actions(sim, run):
    deployment(sim)
    status = run(name="web", action="status")
    assert not status["changed"] and status["rollout"]["done"] and status["from_revision"] == 1
    check = run(check=True, name="web", action="set", images={"web": "web:v2"}, env={"MODE": "blue"})
    assert check["changed"] and sim.patches == []
    real = run(name="web", action="set", images={"web": "web:v2"}, env={"MODE": "blue"})
    assert real["changed"] and real["patch"] == check["patch"] and real["rollout"]["done"], real
    container = sim.get("deployments", "web")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "web:v2" and container["env"] == [{"name": "MODE", "value": "blue"}]
    assert not run(name="web", action="set", images={"web": "web:v2"}, env={"MODE": "blue"})["changed"]
    scaled = run(name="web", action="set", replicas=5)
    assert scaled["changed"] and scaled["rollout"]["replicas"] == 5 and scaled["rollout"]["available_replicas"] == 5
    restarted = run(name="web", action="restart")
    assert restarted["changed"] and restarted["rollout"]["done"]
    tpl = sim.get("deployments", "web")["spec"]["template"]
    assert "kubectl.kubernetes.io/restartedAt" in tpl["metadata"]["annotations"]
    assert sim.get("deployments", "web")["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_api_key_never_appears_even_at_vvv(sim, venv_bin, ansible_env, tmp_path):
    deployment(sim)
    rollout(sim, "deployments", "web", "web:v2")
    args = {"name": "web", "host": sim.url, "api_key": TOKEN, "validate_certs": False, "to_revision": 1}
    _res, proc = run_module(venv_bin, ansible_env, args, verbosity=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rolled back" in proc.stdout and _image(sim) == "web:v1"
    assert TOKEN not in proc.stdout + proc.stderr
