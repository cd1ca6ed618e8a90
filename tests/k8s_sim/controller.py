"""A deterministic Deployment / StatefulSet / DaemonSet controller for the fake API server.

`sync()` runs after every write (as the real controllers react to watch events): it finds or
creates the ReplicaSet / ControllerRevision of the current template, keeps the revision
bookkeeping (max+1, revision-history, revisionHistoryLimit) and records observedGeneration.
`tick()` advances time by `tick_seconds` and moves every rollout one step (one pod).

Knobs:
- `never_available`: images whose pods never become ready (a crash-looping release);
- `force_deadline`: Deployment names whose Progressing condition is immediately
  ProgressDeadlineExceeded (otherwise it happens after spec.progressDeadlineSeconds of
  simulated time without progress);
- `ds_nodes`: how many nodes a DaemonSet schedules on.
Paused Deployments and overlapping selectors are plain API objects: create them.
"""

from __future__ import annotations

import copy
import hashlib
import json

from .store import Store, selector_string

REV = "deployment.kubernetes.io/revision"
REV_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
SKIP_COPY = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REV,
    REV_HISTORY,
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict) -> str:
    t = copy.deepcopy(template)
    (t.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    digest = hashlib.sha256(json.dumps(t, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def _strip_hash(template: dict) -> dict:
    t = copy.deepcopy(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if labels is not None:
        labels.pop(HASH_LABEL, None)
        labels.pop("controller-revision-hash", None)
    return t


def controlled_by(obj: dict, owner: dict) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == owner["metadata"]["uid"]
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def _revision(obj: dict) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REV, "0"))
    except ValueError:
        return 0


def _owner_ref(obj: dict) -> dict:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Controller:
    def __init__(self, store: Store, tick_seconds: int = 10):
        self.store = store
        self.tick_seconds = tick_seconds
        self.never_available: set[str] = set()
        self.force_deadline: set[str] = set()
        self.ds_nodes = 2
        self.enabled = True  # False: the controller is down/lagging (nothing observed, no progress)
        self.last_progress: dict[str, int] = {}
        self.pods: dict[str, list[str]] = {}  # statefulset/daemonset key -> revision name per pod

    # ---- helpers --------------------------------------------------------------------------
    def _available(self, template: dict) -> bool:
        return not any(
            c.get("image") in self.never_available for c in (template.get("spec") or {}).get("containers") or []
        )

    def sync(self) -> None:
        if not self.enabled:
            return
        with self.store.lock:
            for d in self.store.list("deployments"):
                self._sync_deployment(d)
            for s in self.store.list("statefulsets"):
                self._sync_history(s, "statefulsets")
            for s in self.store.list("daemonsets"):
                self._sync_history(s, "daemonsets")

    def tick(self, n: int = 1) -> None:
        for _i in range(n):
            if not self.enabled:
                return
            with self.store.lock:
                self.store.clock += self.tick_seconds
                for d in self.store.list("deployments"):
                    self._step_deployment(d)
                for s in self.store.list("statefulsets"):
                    self._step_pods(s, "statefulsets")
                for s in self.store.list("daemonsets"):
                    self._step_pods(s, "daemonsets")
                self.sync()

    # ---- Deployments ----------------------------------------------------------------------
    def _owned_rs(self, d: dict) -> list[dict]:
        sel = selector_string(d["spec"].get("selector") or {})
        if not sel:
            return []
        rss = [rs for rs in self.store.list("replicasets", d["metadata"]["namespace"], sel) if controlled_by(rs, d)]
        return sorted(rss, key=lambda rs: (rs["metadata"]["creationTimestamp"], rs["metadata"]["name"]))

    def _new_rs(self, d: dict, rss: list[dict]) -> dict | None:
        want = _strip_hash(d["spec"]["template"])
        for rs in rss:
            if _strip_hash(rs["spec"]["template"]) == want:
                return rs
        return None

    def _sync_deployment(self, d: dict) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        rss = self._owned_rs(d)
        new = self._new_rs(d, rss)
        olds = [rs for rs in rss if new is None or rs["metadata"]["uid"] != new["metadata"]["uid"]]
        max_old = max([_revision(rs) for rs in olds] or [0])
        if not d["spec"].get("paused"):
            replicas = d["spec"].get("replicas", 1)
            if new is None:
                h = template_hash(d["spec"]["template"])
                template = copy.deepcopy(d["spec"]["template"])
                template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
                selector = copy.deepcopy(d["spec"]["selector"])
                selector.setdefault("matchLabels", {})[HASH_LABEL] = h
                annotations = {k: v for k, v in (d["metadata"].get("annotations") or {}).items() if k not in SKIP_COPY}
                annotations.update({REV: str(max_old + 1), DESIRED: str(replicas), MAX_REPLICAS: str(replicas + 1)})
                labels = dict(template["metadata"]["labels"])
                new = self.store.create(
                    "replicasets",
                    ns,
                    {
                        "metadata": {
                            "name": f"{name}-{h}",
                            "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [_owner_ref(d)],
                        },
                        "spec": {"replicas": 0 if olds else replicas, "selector": selector, "template": template},
                    },
                    "apps/v1",
                )
                self.last_progress[f"{ns}/{name}"] = self.store.clock
            elif _revision(new) <= max_old:
                rs = copy.deepcopy(new)
                ann = rs["metadata"].setdefault("annotations", {})
                old_rev = ann.get(REV)
                ann[REV] = str(max_old + 1)
                if old_rev:
                    ann[REV_HISTORY] = f"{ann[REV_HISTORY]},{old_rev}" if ann.get(REV_HISTORY) else old_rev
                for k, v in (d["metadata"].get("annotations") or {}).items():
                    if k not in SKIP_COPY:
                        ann[k] = v
                new = self.store.update("replicasets", ns, rs["metadata"]["name"], rs, check_rv=False)
                self.last_progress[f"{ns}/{name}"] = self.store.clock
            ann = d["metadata"].get("annotations") or {}
            if ann.get(REV) != new["metadata"]["annotations"][REV]:
                d = copy.deepcopy(d)
                d["metadata"].setdefault("annotations", {})[REV] = new["metadata"]["annotations"][REV]
                d = self.store.update("deployments", ns, name, d, subresource="status", check_rv=False)
        self._deployment_status(d, new, olds)

    def _deployment_status(self, d: dict, new: dict | None, olds: list[dict]) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        all_rs = ([new] if new else []) + olds
        replicas = d["spec"].get("replicas", 1)

        def st(rs, k):
            return (rs.get("status") or {}).get(k, 0)

        status = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": sum(rs["spec"].get("replicas", 0) for rs in all_rs),
            "updatedReplicas": new["spec"].get("replicas", 0) if new else 0,
            "readyReplicas": sum(st(rs, "readyReplicas") for rs in all_rs),
            "availableReplicas": sum(st(rs, "availableReplicas") for rs in all_rs),
        }
        status["unavailableReplicas"] = max(0, status["replicas"] - status["availableReplicas"])
        status = {k: v for k, v in status.items() if v or k == "observedGeneration"}
        old_conds = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}
        complete = (
            new is not None
            and status.get("updatedReplicas", 0) == replicas
            and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas
        )
        key = f"{ns}/{name}"
        deadline = d["spec"].get("progressDeadlineSeconds", 600)
        if d["spec"].get("paused"):
            prog = ("Unknown", "DeploymentPaused", "Deployment is paused")
        elif complete:
            # like the real controller: a finished rollout has no deadline running; the next
            # change (a scale, a new template) starts a fresh one
            self.last_progress[key] = self.store.clock
            prog = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.',
            )
        elif name in self.force_deadline or self.store.clock - self.last_progress.get(key, self.store.clock) > deadline:
            prog = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{new["metadata"]["name"] if new else name}" has timed out progressing.',
            )
        else:
            prog = (
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{new["metadata"]["name"] if new else name}" is progressing.',
            )
        avail = (
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
            if status.get("availableReplicas", 0) >= replicas - 1 or status.get("availableReplicas", 0) >= replicas
            else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        )
        conds = []
        for ctype, (cstatus, reason, message) in (("Available", avail), ("Progressing", prog)):
            old = old_conds.get(ctype)
            same = old and old["status"] == cstatus and old["reason"] == reason
            conds.append(
                {
                    "type": ctype,
                    "status": cstatus,
                    "reason": reason,
                    "message": message,
                    "lastUpdateTime": old["lastUpdateTime"] if same else self.store.now(),
                    "lastTransitionTime": old["lastTransitionTime"]
                    if old and old["status"] == cstatus
                    else self.store.now(),
                }
            )
        status["conditions"] = conds
        if status != d.get("status"):
            d = copy.deepcopy(d)
            d["status"] = status
            self.store.update("deployments", ns, name, d, subresource="status", check_rv=False)
        if complete:
            self._cleanup(d, olds)

    def _cleanup(self, d: dict, olds: list[dict]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        idle = [
            rs for rs in olds if rs["spec"].get("replicas", 0) == 0 and not (rs.get("status") or {}).get("replicas")
        ]
        idle.sort(key=_revision)
        for rs in idle[: max(0, len(idle) - limit)]:
            self.store.delete("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _set_rs(self, rs: dict, replicas: int | None = None, available: bool = True) -> bool:
        rs = copy.deepcopy(rs)
        changed = False
        if replicas is not None and rs["spec"].get("replicas") != replicas:
            rs["spec"]["replicas"] = replicas
            rs = self.store.update(
                "replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"], rs, check_rv=False
            )
            changed = True
        want = rs["spec"].get("replicas", 0)
        st = dict(rs.get("status") or {})
        ready = st.get("readyReplicas", 0)
        ready = min(want, ready + 1) if available else 0
        ready = min(ready, want)
        new_st = {
            "replicas": want,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "fullyLabeledReplicas": want,
            "observedGeneration": rs["metadata"]["generation"],
        }
        new_st = {k: v for k, v in new_st.items() if v}
        if new_st != st:
            rs["status"] = new_st
            self.store.update(
                "replicasets",
                rs["metadata"]["namespace"],
                rs["metadata"]["name"],
                rs,
                subresource="status",
                check_rv=False,
            )
            changed = changed or new_st.get("readyReplicas", 0) != st.get("readyReplicas", 0)
        return changed

    def _step_deployment(self, d: dict) -> None:
        if d["spec"].get("paused"):
            return
        rss = self._owned_rs(d)
        new = self._new_rs(d, rss)
        if new is None:
            return
        olds = [rs for rs in rss if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        replicas = d["spec"].get("replicas", 1)
        progress = False
        cur = new["spec"].get("replicas", 0)
        target = min(replicas, cur + 1) if cur < replicas else replicas
        progress |= self._set_rs(new, target, self._available(new["spec"]["template"]))
        new = self.store.get("replicasets", new["metadata"]["namespace"], new["metadata"]["name"])
        new_avail = (new.get("status") or {}).get("availableReplicas", 0)
        budget = max(0, replicas - new_avail)
        for rs in sorted(olds, key=_revision, reverse=True):
            keep = min(rs["spec"].get("replicas", 0), budget)
            budget -= keep
            progress |= self._set_rs(rs, keep, self._available(rs["spec"]["template"]))
        if progress:
            self.last_progress[f"{d['metadata']['namespace']}/{d['metadata']['name']}"] = self.store.clock

    # ---- StatefulSets and DaemonSets: ControllerRevisions -----------------------------------
    def _history(self, obj: dict) -> list[dict]:
        sel = selector_string(obj["spec"].get("selector") or {})
        crs = [
            cr
            for cr in self.store.list("controllerrevisions", obj["metadata"]["namespace"], sel)
            if controlled_by(cr, obj)
        ]
        return sorted(crs, key=lambda cr: cr.get("revision", 0))

    def _sync_history(self, obj: dict, plural: str) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        template = copy.deepcopy(obj["spec"]["template"])
        data = {"spec": {"template": dict(template, **{"$patch": "replace"})}}
        crs = self._history(obj)
        max_rev = max([cr.get("revision", 0) for cr in crs] or [0])
        match = next((cr for cr in crs if cr.get("data") == data), None)
        if match is None:
            h = template_hash(template)
            labels = dict((template.get("metadata") or {}).get("labels") or {})
            labels["controller-revision-hash" if plural == "daemonsets" else "controller.kubernetes.io/hash"] = h
            match = self.store.create(
                "controllerrevisions",
                ns,
                {
                    "metadata": {"name": f"{name}-{h}", "labels": labels, "ownerReferences": [_owner_ref(obj)]},
                    "data": data,
                    "revision": max_rev + 1,
                },
                "apps/v1",
            )
        elif match.get("revision", 0) < max_rev:
            match = dict(match, revision=max_rev + 1)
            match = self.store.update("controllerrevisions", ns, match["metadata"]["name"], match, check_rv=False)
        crs = self._history(obj)
        limit = obj["spec"].get("revisionHistoryLimit", 10)
        key = f"{plural}/{ns}/{name}"
        pods = self.pods.setdefault(key, [])
        live = set(pods) | {match["metadata"]["name"]}
        idle = [cr for cr in crs if cr["metadata"]["name"] not in live]
        for cr in idle[: max(0, len(idle) - limit)]:
            self.store.delete("controllerrevisions", ns, cr["metadata"]["name"])
        self._workload_status(obj, plural, match)

    def _rev_template(self, ns: str, rev_name: str) -> dict:
        cr = self.store.get("controllerrevisions", ns, rev_name)
        return (cr or {}).get("data", {}).get("spec", {}).get("template", {}) if cr else {}

    def _desired(self, obj: dict, plural: str) -> int:
        return obj["spec"].get("replicas", 1) if plural == "statefulsets" else self.ds_nodes

    def _step_pods(self, obj: dict, plural: str) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        key = f"{plural}/{ns}/{name}"
        crs = self._history(obj)
        data = {"spec": {"template": dict(obj["spec"]["template"], **{"$patch": "replace"})}}
        update = next((cr for cr in crs if cr.get("data") == data), None)
        if update is None:
            return
        upd = update["metadata"]["name"]
        pods = self.pods.setdefault(key, [])
        want = self._desired(obj, plural)
        if len(pods) < want:
            pods.append(upd)
        elif len(pods) > want:
            pods.pop()
        else:
            partition = 0
            if plural == "statefulsets":
                partition = ((obj["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}).get(
                    "partition", 0
                ) or 0
            # highest ordinal first, and only once every pod is ready (OrderedReady / maxUnavailable 1)
            all_ready = all(self._available(self._rev_template(ns, p)) for p in pods)
            for i in range(len(pods) - 1, partition - 1, -1):
                if pods[i] != upd:
                    if all_ready or not self._available(self._rev_template(ns, pods[i])):
                        pods[i] = upd
                    break
        self._workload_status(self.store.get(plural, ns, name), plural, update)

    def _workload_status(self, obj: dict, plural: str, update: dict) -> None:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        pods = self.pods.setdefault(f"{plural}/{ns}/{name}", [])
        upd = update["metadata"]["name"]
        ready = sum(1 for p in pods if self._available(self._rev_template(ns, p)))
        updated = sum(1 for p in pods if p == upd)
        old = obj.get("status") or {}
        if plural == "statefulsets":
            current = old.get("currentRevision") or upd
            if updated == len(pods) == self._desired(obj, plural):
                current = upd
            status = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": updated,
                "currentReplicas": sum(1 for p in pods if p == current),
                "currentRevision": current,
                "updateRevision": upd,
                "collisionCount": 0,
            }
        else:
            n = self._desired(obj, plural)
            status = {
                "observedGeneration": obj["metadata"]["generation"],
                "desiredNumberScheduled": n,
                "currentNumberScheduled": len(pods),
                "numberMisscheduled": 0,
                "numberReady": ready,
                "numberAvailable": ready,
                "updatedNumberScheduled": updated,
                "numberUnavailable": max(0, n - ready),
            }
        status = {
            k: v
            for k, v in status.items()
            if v
            or k
            in (
                "observedGeneration",
                "numberMisscheduled",
                "desiredNumberScheduled",
                "currentNumberScheduled",
                "replicas",
            )
        }
        if status != old:
            obj = copy.deepcopy(obj)
            obj["status"] = status
            self.store.update(plural, ns, name, obj, subresource="status", check_rv=False)
