"""Builders for the objects the tests start from (same calls on two servers = same state)."""

from __future__ import annotations

import json


def _template(app: str, image: str, env: dict | None = None) -> dict:
    container = {"name": app, "image": image, "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container]}}


def deployment(
    srv,
    name: str = "web",
    image: str = "web:v1",
    replicas: int = 3,
    ns: str = "default",
    app: str | None = None,
    annotations: dict | None = None,
    settle: bool = True,
    **spec,
) -> dict:
    """Create a Deployment (with kubectl's last-applied annotation) and, with settle, roll it out."""
    app = app or name
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": app}, "annotations": dict(annotations or {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": _template(app, image),
            **spec,
        },
    }
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(obj, sort_keys=True)
    srv.create("deployments", obj, ns)
    if settle:
        settle_all(srv)
    return srv.get("deployments", name, ns)


def statefulset(
    srv, name: str = "db", image: str = "db:v1", replicas: int = 2, ns: str = "default", settle: bool = True
) -> dict:
    obj = {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": _template(name, image),
        },
    }
    srv.create("statefulsets", obj, ns)
    if settle:
        settle_all(srv)
    return srv.get("statefulsets", name, ns)


def daemonset(srv, name: str = "agent", image: str = "agent:v1", ns: str = "default", settle: bool = True) -> dict:
    obj = {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": _template(name, image)},
    }
    srv.create("daemonsets", obj, ns)
    if settle:
        settle_all(srv)
    return srv.get("daemonsets", name, ns)


def rollout(
    srv, plural: str, name: str, image: str, ns: str = "default", settle: bool = True, annotations: dict | None = None
) -> dict:
    """`kubectl set image` equivalent (a strategic-merge patch of the first container)."""
    cur = srv.get(plural, name, ns)
    cname = cur["spec"]["template"]["spec"]["containers"][0]["name"]
    body: dict = {"spec": {"template": {"spec": {"containers": [{"name": cname, "image": image}]}}}}
    if annotations:
        body["metadata"] = {"annotations": annotations}
    srv.patch(plural, name, body, "strategic", ns)
    if settle:
        settle_all(srv)
    return srv.get(plural, name, ns)


def settle_all(srv, max_ticks: int = 30) -> None:
    """Tick until nothing changes any more (bounded)."""
    for _i in range(max_ticks):
        before = srv.store.rv
        srv.controller.tick()
        if srv.store.rv == before:
            return
