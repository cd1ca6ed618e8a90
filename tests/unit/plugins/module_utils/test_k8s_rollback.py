"""Pure decisions of k8s_rollback (kubectl rollback.go / rollout_status.go rules)."""

from __future__ import annotations

import copy
import datetime

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _k8s_rollback as core
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_rollback import ClientError, RollbackError, Rollout

UID = "uid-web"


def tpl(image, hash_=None, **labels):
    labels = dict({"app": "web"}, **labels)
    if hash_:
        labels["pod-template-hash"] = hash_
    return {
        "metadata": {"labels": labels, "creationTimestamp": None},
        "spec": {"containers": [{"name": "web", "image": image, "resources": {}}]},
    }


def dep(image="web:v2", rev="2", paused=False, annotations=None, **status):
    ann = {
        "deployment.kubernetes.io/revision": rev,
        "kubectl.kubernetes.io/last-applied-configuration": "{lac}",
        "team": "payments",
    }
    ann.update(annotations or {})
    return {
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": UID, "generation": 5, "annotations": ann},
        "spec": {"replicas": 3, "paused": paused, "selector": {"matchLabels": {"app": "web"}}, "template": tpl(image)},
        "status": dict({"observedGeneration": 5}, **status),
    }


def rs(image, rev, uid=UID, controller=True, created="2026-01-01T00:00:00Z", name=None, annotations=None):
    ann = {} if rev is None else {"deployment.kubernetes.io/revision": str(rev)}
    ann.update(annotations or {})
    return {
        "metadata": {
            "name": name or f"web-{image.split(':')[1]}",
            "creationTimestamp": created,
            "annotations": ann,
            "ownerReferences": [{"uid": uid, "controller": controller}],
        },
        "spec": {"template": tpl(image, hash_="h" + image[-1])},
    }


# ---- history ---------------------------------------------------------------------------------


def test_selector_string_is_sorted_like_labels_selector():
    sel = {
        "matchLabels": {"tier": "fe", "app": "web"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "dr"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert core.selector_string(sel) == "app=web,canary,env in (dr,prod),tier=fe".replace("canary", "!canary")


def test_ownership_needs_controller_true_and_the_same_uid():
    d = dep()
    assert core.controlled_by(rs("web:v1", 1), d)
    assert not core.controlled_by(rs("web:v1", 1, uid="other"), d)
    assert not core.controlled_by(rs("web:v1", 1, controller=False), d)


@pytest.mark.parametrize("value,expected", [(None, 0), ("7", 7), ("x", None), ("", None)])
def test_revision_annotation(value, expected):
    r = rs("web:v1", None)
    if value is not None:
        r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = value
    assert core.rs_revision(r) == expected


def test_choose_previous_specific_and_errors():
    d = dep()
    rss = [rs("web:v1", 1), rs("web:v2", 2, created="2026-01-01T00:01:00Z"), rs("web:v3", "bad")]
    assert core.choose_replicaset(d, rss, 0)["metadata"]["name"] == "web-v1"
    assert core.choose_replicaset(d, rss, 2)["metadata"]["name"] == "web-v2"
    with pytest.raises(RollbackError, match="^unable to find specified revision 5 in history$"):
        core.choose_replicaset(d, rss, 5)
    with pytest.raises(RollbackError, match='^no rollout history found for deployment "web"$'):
        core.choose_replicaset(d, [rs("web:v2", 2)], 0)


def test_revision_renumbered_by_the_controller_is_found_through_revision_history():
    d = dep(image="web:v1", rev="3")
    rss = [rs("web:v1", 3, annotations={"deployment.kubernetes.io/revision-history": "1"}), rs("web:v2", 2)]
    assert core.choose_replicaset(d, rss, 1)["metadata"]["name"] == "web-v1"


def test_ties_follow_kubectls_order_creation_time_then_new_last():
    d = dep(image="web:v3")
    rss = [
        rs("web:v2", None, created="2026-01-01T00:02:00Z"),
        rs("web:v1", None, created="2026-01-01T00:01:00Z"),
        rs("web:v3", 1, created="2026-01-01T00:03:00Z"),
    ]
    # olds sorted by time (v1, v2), then the new one (v3): previous = the first 0 seen = v1
    assert core.choose_replicaset(d, rss, 0)["metadata"]["name"] == "web-v1"


def test_patch_is_kubectls_json_patch_and_keeps_the_deployments_own_annotations():
    d = dep(annotations={"deployment.kubernetes.io/revision-history": "1", "added-later": "x"})
    target = rs(
        "web:v1", 1, annotations={"team": "old-team", "kubectl.kubernetes.io/last-applied-configuration": "{rs}"}
    )
    patch = core.deployment_patch(d, target)
    assert [op["path"] for op in patch] == ["/spec/template", "/metadata/annotations"]
    assert all(op["op"] == "replace" for op in patch)
    assert "pod-template-hash" not in patch[0]["value"]["metadata"]["labels"]
    assert "pod-template-hash" in target["spec"]["template"]["metadata"]["labels"]  # input untouched
    assert patch[1]["value"] == {
        "kubectl.kubernetes.io/last-applied-configuration": "{lac}",  # the Deployment's
        "deployment.kubernetes.io/revision": "2",
        "deployment.kubernetes.io/revision-history": "1",
        "team": "old-team",  # the ReplicaSet's
    }


def test_template_equality_ignores_hash_and_go_zero_values():
    a = tpl("web:v1", hash_="abc")
    b = tpl("web:v1")
    b["metadata"].pop("creationTimestamp")
    b["spec"]["containers"][0].pop("resources")
    assert core.templates_equal(a, b)
    assert not core.templates_equal(a, tpl("web:v2"))


def test_controllerrevision_choice_and_match():
    h = [
        {"revision": r, "data": {"spec": {"template": dict(tpl(f"db:v{r}"), **{"$patch": "replace"})}}}
        for r in (3, 1, 2)
    ]
    assert core.choose_history(h, 0)["revision"] == 2
    assert core.choose_history(h, 1)["revision"] == 1
    with pytest.raises(RollbackError, match="^no last revision to roll back to$"):
        core.choose_history(h[:1], 0)
    with pytest.raises(RollbackError, match="revision 9"):
        core.choose_history(h, 9)
    sts = {"spec": {"template": tpl("db:v2")}}
    assert core.history_matches(sts, h[2]) and not core.history_matches(sts, h[0])
    assert core.current_history_revision(sts, h) == 2
    assert "$patch" not in core.history_template(h[0])


# ---- rollout status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,generation,done,failed,message",
    [
        ({"observedGeneration": 4}, 5, False, False, "Waiting for deployment spec update to be observed..."),
        (
            {
                "observedGeneration": 5,
                "updatedReplicas": 3,
                "replicas": 3,
                "availableReplicas": 3,
                "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}],
            },
            5,
            False,
            True,
            'deployment "web" exceeded its progress deadline',
        ),
        (
            {"observedGeneration": 5, "updatedReplicas": 1, "replicas": 4},
            5,
            False,
            False,
            'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been updated...',
        ),
        (
            {"observedGeneration": 5, "updatedReplicas": 3, "replicas": 5},
            5,
            False,
            False,
            'Waiting for deployment "web" rollout to finish: 2 old replicas are pending termination...',
        ),
        (
            {"observedGeneration": 5, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2},
            5,
            False,
            False,
            'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...',
        ),
        (
            {"observedGeneration": 5, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3},
            5,
            True,
            False,
            'deployment "web" successfully rolled out',
        ),
    ],
)
def test_deployment_status_rules_in_kubectls_order(status, generation, done, failed, message):
    d = dep()
    d["metadata"]["generation"] = generation
    d["status"] = status
    v = core.status_verdict("Deployment", d)
    assert (v["done"], v["failed"], v["message"]) == (done, failed, message)


def _ds(**st):
    return {
        "metadata": {"name": "agent", "generation": 2},
        "spec": {"updateStrategy": {"type": "RollingUpdate"}},
        "status": dict({"observedGeneration": 2}, **st),
    }


def test_daemonset_status_rules():
    assert (
        core.status_verdict("DaemonSet", _ds(desiredNumberScheduled=2, updatedNumberScheduled=1))["message"]
        == 'Waiting for daemon set "agent" rollout to finish: 1 out of 2 new pods have been updated...'
    )
    assert (
        core.status_verdict("DaemonSet", _ds(desiredNumberScheduled=2, updatedNumberScheduled=2, numberAvailable=1))[
            "message"
        ]
        == 'Waiting for daemon set "agent" rollout to finish: 1 of 2 updated pods are available...'
    )
    assert core.status_verdict("DaemonSet", _ds(desiredNumberScheduled=2, updatedNumberScheduled=2, numberAvailable=2))[
        "done"
    ]
    ondelete = _ds()
    ondelete["spec"]["updateStrategy"]["type"] = "OnDelete"
    assert core.status_verdict("DaemonSet", ondelete)["failed"]


def _sts(partition=None, **st):
    ru = {} if partition is None else {"partition": partition}
    return {
        "metadata": {"name": "db", "generation": 2},
        "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": ru}},
        "status": dict({"observedGeneration": 2}, **st),
    }


def test_statefulset_status_rules():
    assert (
        core.status_verdict("StatefulSet", _sts(observedGeneration=0))["message"]
        == "Waiting for statefulset spec update to be observed..."
    )
    assert core.status_verdict("StatefulSet", _sts(readyReplicas=1))["message"] == "Waiting for 2 pods to be ready..."
    assert (
        core.status_verdict("StatefulSet", _sts(partition=1, readyReplicas=3, updatedReplicas=1))["message"]
        == "Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated..."
    )
    v = core.status_verdict("StatefulSet", _sts(partition=0, readyReplicas=3, updatedReplicas=3))
    assert v["done"] and v["message"] == "partitioned roll out complete: 3 new pods have been updated..."
    no_ru = _sts(readyReplicas=3, currentRevision="a", updateRevision="b", updatedReplicas=1, replicas=3)
    no_ru["spec"]["updateStrategy"].pop("rollingUpdate")
    assert (
        core.status_verdict("StatefulSet", no_ru)["message"]
        == "waiting for statefulset rolling update to complete 1 pods at revision b..."
    )


# ---- set / restart ---------------------------------------------------------------------------------


def test_update_patch_only_what_differs_and_none_when_done():
    d = dep(image="web:v1")
    d["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    patch = core.update_patch(d, {"web": "web:v2"}, {"A": "1", "B": 2}, None, 5)
    assert patch == {
        "spec": {
            "replicas": 5,
            "template": {
                "spec": {"containers": [{"name": "web", "image": "web:v2", "env": [{"name": "B", "value": "2"}]}]}
            },
        }
    }
    after = core.apply_strategic(d, patch)
    assert core.update_patch(after, {"web": "web:v2"}, {"A": "1", "B": 2}, None, 5) is None
    with pytest.raises(RollbackError, match="has no container sidecar; its containers are web"):
        core.update_patch(d, {"sidecar": "x"})


def test_restart_patch_stamps_the_template():
    now = datetime.datetime(2026, 3, 1, 3, 0, tzinfo=datetime.UTC)
    assert core.restart_patch(now) == {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-03-01T03:00:00Z"}}}
        }
    }


# ---- kubeconfig exec users ------------------------------------------------------------------------


def test_kubeconfig_user_merges_files_first_wins():
    a = {
        "current-context": "prod",
        "contexts": [{"name": "prod", "context": {"user": "eks"}}],
        "users": [{"name": "eks", "user": {"exec": {"command": "aws", "args": ["eks", "get-token"]}}}],
    }
    b = {
        "current-context": "other",
        "users": [{"name": "eks", "user": {"token": "x"}}],
        "contexts": [{"name": "dev", "context": {"user": "dev"}}],
    }
    assert core.kubeconfig_user([a, b], None) == ("eks", {"exec": {"command": "aws", "args": ["eks", "get-token"]}})
    assert core.kubeconfig_user([a, b], "dev") == ("dev", {})
    assert core.kubeconfig_user([{}], None) == (None, {})
    msg = core.exec_failure_message(
        "eks", {"command": "aws", "args": ["eks", "get-token"]}, "exit status 255:\n no creds"
    )
    assert "`aws eks get-token`" in msg and "exit status 255: no creds" in msg and "aws sts get-caller-identity" in msg


# ---- orchestration with an in-memory client ---------------------------------------------------------


class FakeClient:
    def __init__(self, obj, history, statuses=None):
        self.obj, self.history, self.patches = obj, history, []
        self.statuses = list(statuses or [])

    def get(self, kind, ns, name):
        if name != self.obj["metadata"]["name"]:
            raise ClientError(404, "not found")
        if self.statuses:
            self.obj["status"] = self.statuses.pop(0)
        return copy.deepcopy(self.obj)

    def list(self, kind, ns, selector):
        assert selector == "app=web"
        return copy.deepcopy(self.history)

    def patch(self, kind, ns, name, body, ptype):
        self.patches.append((body, ptype))
        return self.obj


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


DONE = {"observedGeneration": 5, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}


def _rollout(client, check=False):
    clock = Clock()
    return Rollout(client, "Deployment", "default", "web", check_mode=check, clock=clock, sleep=clock.sleep)


def test_check_mode_returns_the_same_patch_and_sends_nothing():
    history = [rs("web:v1", 1), rs("web:v2", 2)]
    check_client = FakeClient(dep(), history)
    check = _rollout(check_client, check=True).undo()
    real_client = FakeClient(dep(), history, statuses=[dict(DONE, observedGeneration=4), DONE, DONE])
    real = _rollout(real_client).undo()
    assert check_client.patches == [] and check["changed"] and check["patch"] == real["patch"]
    assert real_client.patches == [(real["patch"], "json")]
    assert real["rollout"]["done"] and (real["from_revision"], real["to_revision"]) == (2, 1)


def test_paused_is_refused_after_the_revision_is_found_like_kubectl():
    client = FakeClient(dep(paused=True), [rs("web:v1", 1), rs("web:v2", 2)])
    with pytest.raises(RollbackError, match="resume it first"):
        _rollout(client).undo()
    with pytest.raises(RollbackError, match="revision 9"):  # kubectl checks the revision first
        _rollout(client).undo(9)
    assert client.patches == []


def test_skip_when_the_template_already_matches():
    client = FakeClient(dep(**DONE), [rs("web:v1", 1), rs("web:v2", 2)])
    res = _rollout(client).undo(2)
    assert res["skipped"] and not res["changed"] and client.patches == []
    assert res["msg"] == "skipped rollback (current template already matches revision 2)"


def test_wait_fails_fast_on_deadline_and_times_out_otherwise():
    stuck = dict(DONE, availableReplicas=0)
    deadline = dict(stuck, conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}])
    client = FakeClient(dep(), [rs("web:v1", 1), rs("web:v2", 2)], statuses=[stuck, stuck, deadline])
    with pytest.raises(RollbackError, match="exceeded its progress deadline") as exc:
        _rollout(client).undo()
    assert exc.value.result["changed"] and exc.value.result["rollout"]["failed"]
    client = FakeClient(dep(), [rs("web:v1", 1), rs("web:v2", 2)], statuses=[stuck] * 100)
    with pytest.raises(RollbackError, match="did not finish within 3 s: .*0 of 3 updated replicas are available"):
        _rollout(client).undo(wait_timeout=3)


def test_missing_object_and_unknown_kind():
    with pytest.raises(RollbackError, match='deployments.apps "web" not found in namespace default'):
        _rollout(FakeClient(dict(dep(), metadata=dict(dep()["metadata"], name="other")), [])).undo()
    with pytest.raises(RollbackError, match="kind must be one of"):
        Rollout(None, "CronJob", "default", "x")


# ---- copy / delete_copy / return_env (the DR drill on EKS) ------------------------------------


class CopyClient(FakeClient):
    """FakeClient plus create/delete, holding several Deployments by (namespace, name)."""

    def __init__(self, obj, statuses=None):
        super().__init__(obj, [], statuses)
        self.objects = {("default", "web"): obj}
        self.created, self.deleted = [], []

    def get(self, kind, ns, name):
        if (ns, name) == ("default", "web"):
            return super().get(kind, ns, name)
        if (ns, name) not in self.objects:
            raise ClientError(404, "not found")
        obj = copy.deepcopy(self.objects[(ns, name)])
        obj["status"] = dict(DONE, observedGeneration=obj["metadata"].get("generation", 1))
        obj["spec"].setdefault("replicas", 1)
        obj["status"].update(
            updatedReplicas=obj["spec"]["replicas"],
            replicas=obj["spec"]["replicas"],
            availableReplicas=obj["spec"]["replicas"],
        )
        return obj

    def create(self, kind, ns, body):
        self.created.append((ns, copy.deepcopy(body)))
        self.objects[(ns, body["metadata"]["name"])] = dict(copy.deepcopy(body), metadata=dict(body["metadata"]))
        return body

    def delete(self, kind, ns, name):
        self.deleted.append((ns, name))
        return self.objects.pop((ns, name))

    def patch(self, kind, ns, name, body, ptype):
        self.patches.append((body, ptype))
        return self.objects.get((ns, name))


def _app():
    d = dep(**DONE)
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [
        {"name": "DATABASE_URL", "value": "postgresql://u:p@db/app"},
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    c["envFrom"] = [{"secretRef": {"name": "app-env"}}]
    d["spec"]["template"]["metadata"]["annotations"] = {"sidecar.istio.io/inject": "false"}
    d["metadata"]["labels"] = {"app": "web", "argocd.argoproj.io/instance": "prod"}
    return d


DRILL = {"app": "web-dr-drill", "ops.runbooks/dr": "drill"}


def test_status_returns_the_env_only_when_asked():
    assert "env" not in _rollout(CopyClient(_app())).status(wait=False)
    res = _rollout(CopyClient(_app())).status(wait=False, return_env=True)
    assert res["env"]["web"][0] == {"name": "DATABASE_URL", "value": "postgresql://u:p@db/app"}
    assert res["env"]["web"][1]["valueFrom"]["secretKeyRef"]["name"] == "s"
    assert res["env_from"] == {"web": [{"secretRef": {"name": "app-env"}}]}


def test_copy_definition_keeps_the_pod_spec_and_drops_every_production_label():
    src = _app()
    src["spec"]["paused"] = True
    d = core.copy_definition(src, "web-dr-drill", "drills", DRILL, 1)
    assert d["metadata"] == {
        "name": "web-dr-drill",
        "namespace": "drills",
        "labels": DRILL,
        "annotations": {core.COPY_OF: "default/web"},
    }
    assert d["spec"]["selector"] == {"matchLabels": DRILL} and d["spec"]["replicas"] == 1
    assert d["spec"]["template"]["metadata"]["labels"] == DRILL and "paused" not in d["spec"]
    assert d["spec"]["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert d["spec"]["template"]["spec"] == src["spec"]["template"]["spec"] and "status" not in d
    assert core.shared_labels(src, {"app": "web", "x": "y"}) == ["app=web"]
    assert core.shared_labels(src, {"app": "web-dr-drill", "tier": "web"}) == []


def test_copy_creates_then_is_idempotent_then_updates_and_check_mode_matches():
    env = {"DATABASE_URL": "postgresql://u:p@db/app_dr_1"}
    check_client = CopyClient(_app())
    check = _rollout(check_client, check=True).copy("web-dr-drill", None, DRILL, env=env, container="web")
    assert check["changed"] and check_client.created == [] and check_client.patches == []
    client = CopyClient(_app())
    real = _rollout(client).copy("web-dr-drill", None, DRILL, env=env, container="web")
    assert real["changed"] and real["definition"] == check["definition"] and real["rollout"]["done"]
    assert real["msg"] == "deployment.apps/web-dr-drill created" and real["copied_to"] == {
        "name": "web-dr-drill",
        "namespace": "default",
    }
    ((ns, body),) = client.created
    envs = body["spec"]["template"]["spec"]["containers"][0]["env"]
    assert ns == "default" and envs[0] == {"name": "DATABASE_URL", "value": "postgresql://u:p@db/app_dr_1"}
    assert envs[1]["valueFrom"]  # other variables untouched
    again = _rollout(client).copy("web-dr-drill", None, DRILL, env=env, container="web")
    assert not again["changed"] and again["skipped"] and client.patches == [] and len(client.created) == 1
    other = _rollout(client).copy(
        "web-dr-drill", None, DRILL, env={"DATABASE_URL": "postgresql://u:p@db/x"}, container="web", replicas=2
    )
    assert other["changed"] and other["patch_type"] == "json"
    assert [op["path"] for op in client.patches[0][0]] == ["/spec/template", "/spec/replicas"]
    assert (
        client.get("Deployment", "default", "web")["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
        == "postgresql://u:p@db/app"
    )  # the source is never changed


@pytest.mark.parametrize(
    "labels, name, needle",
    [
        ({"app": "web"}, "web-dr-drill", "share no label with the pods of Deployment default/web (shared: app=web)"),
        ({}, "web-dr-drill", "copy_labels must be non-empty"),
        (DRILL, "web", "copy_name web is the Deployment itself"),
    ],
)
def test_copy_refuses_labels_that_would_join_production_and_itself(labels, name, needle):
    client = CopyClient(_app())
    with pytest.raises(RollbackError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        _rollout(client).copy(name, None, labels)
    assert client.created == [] and client.patches == []


def test_copy_and_delete_refuse_a_deployment_that_is_not_its_copy():
    client = CopyClient(_app())
    client.objects[("default", "web-dr-drill")] = dict(dep(), metadata={"name": "web-dr-drill", "annotations": {}})
    with pytest.raises(RollbackError, match="exists and is not a copy of Deployment default/web"):
        _rollout(client).copy("web-dr-drill", None, DRILL)
    with pytest.raises(RollbackError, match="is not a copy of Deployment default/web .*refusing to delete it"):
        _rollout(client).delete_copy("web-dr-drill", None)
    assert client.deleted == [] and client.patches == [] and client.created == []


def test_delete_copy_deletes_then_reports_absent():
    client = CopyClient(_app())
    _rollout(client).copy("web-dr-drill", "drills", DRILL)
    check = _rollout(client, check=True).delete_copy("web-dr-drill", "drills")
    assert check["changed"] and client.deleted == []
    gone = _rollout(client).delete_copy("web-dr-drill", "drills")
    assert gone["changed"] and gone["msg"] == 'deployment.apps "web-dr-drill" deleted'
    assert client.deleted == [("drills", "web-dr-drill")]
    again = _rollout(client).delete_copy("web-dr-drill", "drills")
    assert not again["changed"] and again["msg"] == 'deployment.apps "web-dr-drill" already absent'
    assert len(client.deleted) == 1
