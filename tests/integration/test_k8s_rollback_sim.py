"""The simulator itself (tests/k8s_sim): patch semantics, selectors, apiserver and controller rules
the k8s_rollback tests rely on. If these drift, the other tests would prove nothing."""

from __future__ import annotations

import pytest

from tests.k8s_sim import FakeApiServer, deployment, rollout
from tests.k8s_sim.patches import PatchError, json_patch, merge_patch, strategic_merge
from tests.k8s_sim.store import label_match


def test_json_patch_operations():
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": 2},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "test", "path": "/d", "value": 2},
        ],
    )
    assert out == {"a": {"b": [2, 3]}, "c": 2, "d": 2} and doc == {"a": {"b": [1, 2]}, "c": 1}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "replace", "path": "/missing", "value": 1}])
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/c", "value": 9}])


def test_merge_and_strategic_merge():
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"a": None, "b": {"c": 3}}) == {"b": {"c": 3, "d": 2}}
    cur = {
        "spec": {
            "template": {
                "metadata": {"labels": {"x": "1"}},
                "spec": {
                    "containers": [
                        {"name": "a", "image": "a:1", "env": [{"name": "K", "value": "1"}]},
                        {"name": "b", "image": "b:1"},
                    ]
                },
            }
        }
    }
    out = strategic_merge(
        cur, {"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "L", "value": "2"}]}]}}}}
    )
    assert out["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "K", "value": "1"},
        {"name": "L", "value": "2"},
    ]
    assert out["spec"]["template"]["spec"]["containers"][1] == {"name": "b", "image": "b:1"}
    replaced = strategic_merge(cur, {"spec": {"template": {"$patch": "replace", "spec": {"containers": []}}}})
    assert replaced["spec"]["template"] == {"spec": {"containers": []}}


@pytest.mark.parametrize(
    "selector,labels,match",
    [
        ("app=web", {"app": "web"}, True),
        ("app=web,tier!=db", {"app": "web", "tier": "db"}, False),
        ("env in (a,b)", {"env": "b"}, True),
        ("env notin (a,b)", {"env": "b"}, False),
        ("canary", {}, False),
        ("!canary", {}, True),
    ],
)
def test_label_selectors(selector, labels, match):
    assert label_match(selector, labels) is match


def test_apiserver_and_controller_rules():
    with FakeApiServer(seed="sim") as srv:
        d = deployment(srv)
        assert d["metadata"]["generation"] == 1 and d["status"]["observedGeneration"] == 1
        assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        srv.patch("deployments", "web", {"metadata": {"annotations": {"note": "x"}}})  # annotations bump generation
        assert srv.get("deployments", "web")["metadata"]["generation"] == 2
        srv.patch("deployments", "web", {"metadata": {"labels": {"extra": "y"}}})  # labels do not
        assert srv.get("deployments", "web")["metadata"]["generation"] == 2
        rollout(srv, "deployments", "web", "web:v2")
        rollout(srv, "deployments", "web", "web:v1")  # back to v1's template: its ReplicaSet is reused
        rss = {rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs for rs in srv.store.list("replicasets")}
        assert len(rss) == 2
        ann = rss["web:v1"]["metadata"]["annotations"]
        assert (
            ann["deployment.kubernetes.io/revision"] == "3" and ann["deployment.kubernetes.io/revision-history"] == "1"
        )
        st = srv.get("deployments", "web")["status"]
        assert (st["replicas"], st["updatedReplicas"], st["availableReplicas"]) == (3, 3, 3)
        assert (
            rss["web:v1"]["metadata"]["ownerReferences"][0]["uid"] == srv.get("deployments", "web")["metadata"]["uid"]
        )


def test_module_client_follows_continue_tokens(tmp_path):
    from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import connect  # noqa: PLC0415
    from ansible_collections.ops.runbooks.plugins.modules.k8s_rollback import ApiClientWrapper  # noqa: PLC0415

    from tests.k8s_sim import write_kubeconfig  # noqa: PLC0415

    with FakeApiServer(seed="pages") as srv:
        deployment(srv)
        for v in ("v2", "v3", "v4"):
            rollout(srv, "deployments", "web", f"web:{v}")
        kc = write_kubeconfig(tmp_path / "kc", srv.url, token="t")
        params = dict.fromkeys(("context", "host", "api_key", "validate_certs", "ca_cert", "client_cert", "client_key"))
        client = ApiClientWrapper(connect(dict(params, kubeconfig=str(kc))), page_size=1)
        items = client.list("ReplicaSet", "default", "app=web")
        assert len(items) == 4
        assert sum("continue=" in path for _m, path, _c in srv.requests) == 3
