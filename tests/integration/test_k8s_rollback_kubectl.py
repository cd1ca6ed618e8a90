"""Differential oracle: kubectl (the real binary, v1.32 on this image) and k8s_rollback face the
same SIMULATED cluster state (two fake API servers built from the same seed, manual controller
ticks, so both stay identical) and must take the same decisions.

Compared: the Deployment / StatefulSet / DaemonSet after `rollout undo` (whole object, semantically,
plus every other object in the store), the PATCH count, the skip / error decision and its message,
and `rollout status --watch=false` line by line while the rollout progresses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import connect
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_rollback import (
    RollbackError,
    Rollout,
    prune,
    status_verdict,
)
from ansible_collections.ops.runbooks.plugins.modules.k8s_rollback import ApiClientWrapper

from tests.k8s_sim import FakeApiServer, daemonset, deployment, rollout, statefulset, write_kubeconfig

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: the differential oracle against kubectl cannot run (this is a skip, not a pass)",
)
KINDS = {"deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet"}
SHORT = {"deployments": "deployment", "statefulsets": "statefulset", "daemonsets": "daemonset"}


class Twin:
    """Two identical simulated clusters: `k` is driven by kubectl, `m` by the module's code."""

    def __init__(self, tmp_path: Path, seed: str):
        self.k = FakeApiServer(seed=seed).start()
        self.m = FakeApiServer(seed=seed).start()
        self.tmp = tmp_path
        self.kcfg_k = write_kubeconfig(tmp_path / "kubectl.kubeconfig", self.k.url, token="t")
        self.kcfg_m = write_kubeconfig(tmp_path / "module.kubeconfig", self.m.url, token="t")
        api = connect(
            {
                "kubeconfig": str(self.kcfg_m),
                "context": None,
                "host": None,
                "api_key": None,
                "validate_certs": None,
                "ca_cert": None,
                "client_cert": None,
                "client_key": None,
            }
        )
        self.client = ApiClientWrapper(api)

    def both(self, fn, *args, **kw):
        for srv in (self.k, self.m):
            fn(srv, *args, **kw)

    def tick(self, n=1):
        self.k.controller.tick(n)
        self.m.controller.tick(n)

    def kubectl(self, *args) -> subprocess.CompletedProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kcfg_k), HOME=str(self.tmp))
        return subprocess.run(
            [KUBECTL, "--cache-dir", str(self.tmp / "cache"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def module(self, plural, name, action="undo", **kw) -> tuple[bool, dict | str]:
        r = Rollout(self.client, KINDS[plural], "default", name)
        try:
            if action == "undo":
                return True, r.undo(wait=False, **kw)
            return True, r.status(wait=False)
        except RollbackError as exc:
            return False, exc.msg

    def same_state(self):
        def dump(srv):
            return {k: prune(v) for k, v in srv.store.objects.items()}

        assert dump(self.k) == dump(self.m)

    def stop(self):
        self.k.stop()
        self.m.stop()


@pytest.fixture
def twin(tmp_path, request):
    t = Twin(tmp_path, seed=request.node.name)
    yield t
    t.stop()


def undo_both(twin: Twin, plural: str, name: str, to_revision: int | None):
    """Run the undo on both sides; return (kubectl result, module result)."""
    args = ["rollout", "undo", f"{SHORT[plural]}/{name}"]
    if to_revision is not None:
        args.append(f"--to-revision={to_revision}")
    proc = twin.kubectl(*args)
    ok, res = twin.module(plural, name, to_revision=to_revision or 0)
    return proc, ok, res


def assert_same_undo(twin, plural, name, to_revision=None, expect=None):
    npatch_k, npatch_m = len(twin.k.patches), len(twin.m.patches)
    proc, ok, res = undo_both(twin, plural, name, to_revision)
    ref = f"{SHORT[plural]}.apps/{name}"
    if proc.returncode != 0:
        kubectl_err = proc.stderr.strip().removeprefix("error: ")
        assert not ok, (proc.stderr, res)
        assert res == kubectl_err, (res, kubectl_err)
        outcome = "error"
    else:
        assert ok, (proc.stdout, res)
        said = proc.stdout.strip().removeprefix(ref + " ")
        assert said == res["msg"].removeprefix(ref + " "), (proc.stdout, res["msg"])
        outcome = "skipped" if res["skipped"] else "rolled back"
        assert res["changed"] is (outcome == "rolled back")
    # same number of PATCH requests on both sides (0 for skip and errors, 1 otherwise)
    assert len(twin.k.patches) - npatch_k == len(twin.m.patches) - npatch_m == (1 if outcome == "rolled back" else 0)
    if outcome == "rolled back":
        # same patch semantically (Go adds creationTimestamp: null, resources: {})
        assert prune(twin.k.patches[-1][2]) == prune(twin.m.patches[-1][2])
        assert twin.k.patches[-1][1] == twin.m.patches[-1][1]
    twin.same_state()
    if expect:
        assert outcome == expect, (proc.stdout, proc.stderr, res)
    return proc, res


def assert_same_status(twin, plural, name):
    proc = twin.kubectl("rollout", "status", f"{SHORT[plural]}/{name}", "--watch=false")
    ok, res = twin.module(plural, name, action="status")
    assert ok, res
    verdict = res["rollout"]
    if proc.returncode != 0:
        assert verdict["failed"] and proc.stderr.strip() == "error: " + verdict["message"], (proc.stderr, verdict)
    else:
        assert not verdict["failed"] and proc.stdout.strip() == verdict["message"], (proc.stdout, verdict)
    return verdict


def follow_rollout(twin, plural, name, ticks=12):
    """Compare `rollout status --watch=false` at every step until both say done (or failed)."""
    seen = []
    for _i in range(ticks):
        verdict = assert_same_status(twin, plural, name)
        seen.append(verdict["message"])
        if verdict["done"] or verdict["failed"]:
            return seen
        twin.tick()
    raise AssertionError(f"rollout did not finish: {seen}")


# ---- Deployments -----------------------------------------------------------------------------


def test_undo_previous_then_undo_again_and_status_while_it_rolls(twin):
    twin.both(deployment, annotations={"team": "payments"})
    twin.both(rollout, "deployments", "web", "web:v2", annotations={"added-later": "yes"})
    assert_same_undo(twin, "deployments", "web", expect="rolled back")
    seen = follow_rollout(twin, "deployments", "web")
    assert any("new replicas have been updated" in s for s in seen) and seen[-1].endswith("successfully rolled out")
    assert_same_undo(twin, "deployments", "web", expect="rolled back")  # back to v2, like kubectl
    follow_rollout(twin, "deployments", "web")


def test_undo_to_revision_and_skip_when_already_there(twin):
    twin.both(deployment)
    for v in ("v2", "v3"):
        twin.both(rollout, "deployments", "web", f"web:{v}")
    assert_same_undo(twin, "deployments", "web", 1, expect="rolled back")
    follow_rollout(twin, "deployments", "web")
    assert_same_undo(twin, "deployments", "web", 4, expect="skipped")
    assert_same_undo(twin, "deployments", "web", 3, expect="rolled back")


@pytest.mark.parametrize("case", ["revision-not-found", "negative", "no-history", "paused", "missing"])
def test_error_decisions_match(twin, case):
    twin.both(deployment)
    if case != "no-history":
        twin.both(rollout, "deployments", "web", "web:v2")
    if case == "paused":
        twin.both(lambda s: s.patch("deployments", "web", {"spec": {"paused": True}}))
    if case == "missing":
        proc = twin.kubectl("rollout", "undo", "deployment/nope")
        ok, res = twin.module("deployments", "nope")
        assert proc.returncode == 1 and not ok
        assert 'deployments.apps "nope" not found' in proc.stderr and res.startswith(
            'deployments.apps "nope" not found'
        )
        return
    to_revision = {"revision-not-found": 7, "negative": None, "no-history": None, "paused": None}[case]
    if case == "negative":
        proc = twin.kubectl("rollout", "undo", "deployment/web", "--to-revision=-1")
        ok, res = twin.module("deployments", "web", to_revision=-1)
        assert proc.returncode == 1 and not ok and proc.stderr.strip() == "error: " + res
        return
    assert_same_undo(twin, "deployments", "web", to_revision, expect="error")


def test_overlapping_selector_and_odd_revision_annotations(twin):
    twin.both(deployment, "web")
    twin.both(rollout, "deployments", "web", "web:v2")
    twin.both(deployment, "web-canary", image="evil:v1", app="web")  # same labels, other owner
    twin.both(rollout, "deployments", "web-canary", "evil:v2")
    twin.both(rollout, "deployments", "web", "web:v3")

    def odd(srv):
        rss = {
            rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs["metadata"]["name"]
            for rs in srv.store.list("replicasets")
        }
        # revision 2 unparseable (skipped), revision 1's annotation missing (= revision 0)
        srv.patch(
            "replicasets", rss["web:v2"], {"metadata": {"annotations": {"deployment.kubernetes.io/revision": "two"}}}
        )
        srv.patch(
            "replicasets", rss["web:v1"], {"metadata": {"annotations": {"deployment.kubernetes.io/revision": None}}}
        )

    twin.both(odd)
    assert_same_undo(twin, "deployments", "web", 2, expect="error")
    assert_same_undo(twin, "deployments", "web", expect="rolled back")  # previous = the "revision 0" one
    assert twin.m.get("deployments", "web")["spec"]["template"]["spec"]["containers"][0]["image"] == "web:v1"


def test_equal_revision_numbers_are_broken_like_kubectl(twin):
    twin.both(deployment, "web")
    for v in ("v2", "v3", "v4"):
        twin.both(rollout, "deployments", "web", f"web:{v}")

    def no_revisions(srv):  # every ReplicaSet loses its revision annotation: all are "revision 0"
        for rs in srv.store.list("replicasets"):
            srv.patch(
                "replicasets",
                rs["metadata"]["name"],
                {"metadata": {"annotations": {"deployment.kubernetes.io/revision": None}}},
            )

    twin.both(no_revisions)
    twin.both(lambda s: s.controller.__setattr__("enabled", False))  # keep them unnumbered
    assert_same_undo(twin, "deployments", "web", expect="rolled back")


def test_status_messages_spec_not_observed_and_deadline(twin):
    twin.both(deployment, progressDeadlineSeconds=30)
    for srv in (twin.k, twin.m):
        srv.controller.enabled = False
    twin.both(rollout, "deployments", "web", "web:v2", settle=False)
    assert (
        assert_same_status(twin, "deployments", "web")["message"]
        == "Waiting for deployment spec update to be observed..."
    )
    for srv in (twin.k, twin.m):
        srv.controller.enabled = True
        srv.controller.never_available.add("web:v2")
        srv.controller.sync()
    seen = follow_rollout(twin, "deployments", "web", ticks=10)
    assert seen[-1] == 'deployment "web" exceeded its progress deadline'
    assert any("old replicas are pending termination" in s for s in seen)
    assert_same_undo(twin, "deployments", "web", expect="rolled back")
    follow_rollout(twin, "deployments", "web")


def test_documented_divergence_renumbered_revision(twin):
    """The one deliberate difference: after `undo --to-revision=1` the controller renumbers that
    ReplicaSet (1 -> 3, revision-history "1"). kubectl then says revision 1 is gone; the module
    finds it through revision-history and skips, so a repeated rollback to 1 is idempotent."""
    twin.both(deployment)
    twin.both(rollout, "deployments", "web", "web:v2")
    assert_same_undo(twin, "deployments", "web", 1, expect="rolled back")
    follow_rollout(twin, "deployments", "web")
    proc = twin.kubectl("rollout", "undo", "deployment/web", "--to-revision=1")
    ok, res = twin.module("deployments", "web", to_revision=1)
    assert proc.returncode == 1 and "unable to find specified revision 1 in history" in proc.stderr
    assert ok and res["skipped"] and not res["changed"] and res["target_revision"] == 3
    assert res["msg"] == "skipped rollback (current template already matches revision 1)"
    twin.same_state()


# ---- StatefulSets and DaemonSets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "plural,build,name",
    [
        ("statefulsets", statefulset, "db"),
        ("daemonsets", daemonset, "agent"),
    ],
)
def test_controllerrevision_kinds(twin, plural, build, name):
    twin.both(build)
    assert_same_undo(twin, plural, name, expect="error")  # no last revision to roll back to
    twin.both(rollout, plural, name, f"{name}:v2")
    assert_same_undo(twin, plural, name, 5, expect="error")
    assert_same_undo(twin, plural, name, 2, expect="skipped")
    assert_same_undo(twin, plural, name, expect="rolled back")
    follow_rollout(twin, plural, name)
    assert_same_undo(twin, plural, name, 3, expect="skipped")
    assert_same_undo(twin, plural, name, expect="rolled back")
    follow_rollout(twin, plural, name)


def test_kubectl_binary_is_the_expected_one():
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    minor = int(json.loads(out.stdout)["clientVersion"]["minor"].rstrip("+"))
    assert minor >= 27, out.stdout
    assert status_verdict(
        "Deployment",
        {
            "metadata": {"name": "x", "generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        },
    )["done"]
