# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.k8s_rollback: kubectl-exact `rollout undo` and `rollout status`.

Nothing here imports Ansible or the kubernetes client. The module hands `Rollout` a *client*:
any object with

    get(kind, namespace, name) -> dict            (raises ClientError, status 404 when absent)
    list(kind, namespace, label_selector) -> list  (all pages)
    patch(kind, namespace, name, body, patch_type) -> dict   patch_type: "json" | "strategic"
    create(kind, namespace, body) -> dict          (only for Rollout.copy)
    delete(kind, namespace, name) -> dict          (only for Rollout.delete_copy; raises 404 when absent)

`kind` is one of KINDS' keys (plus ReplicaSet and ControllerRevision for history).

The decisions follow kubectl's polymorphichelpers/rollback.go and rollout_status.go (v1.32):
history = ReplicaSets (Deployment) or ControllerRevisions (StatefulSet, DaemonSet) selected by
the object's selector AND controlled by it (owner reference, controller=true, same uid);
to_revision 0 = the second-highest revision; one JSON Patch of /spec/template and
/metadata/annotations for a Deployment, the revision's strategic-merge data otherwise; skip
when the template already matches; then the rollout status rules until done or failed.
"""

from __future__ import annotations

import copy
import datetime
import time

KINDS = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}
PLURALS = dict(KINDS, ReplicaSet="replicasets", ControllerRevision="controllerrevisions")
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Annotations a Deployment keeps through a rollback (kubectl's annotationsToSkip).
KEEP_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
)
COPY_OF = "ops.runbooks/copy-of"
PAUSED_MSG = "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again"


class ClientError(Exception):
    """An API call failed: `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RollbackError(Exception):
    """The rollback (or its verification) failed; `result` is what is known so far."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


# ---- small pure helpers ------------------------------------------------------------------


def resource_path(kind: str, namespace: str, name: str | None = None) -> str:
    plural = PLURALS[kind]
    path = f"/apis/apps/v1/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def kind_label(kind: str) -> str:
    """How kubectl names the kind in messages: deployment, statefulset, daemon set."""
    return {"Deployment": "deployment", "StatefulSet": "statefulset", "DaemonSet": "daemon set"}[kind]


def resource_ref(kind: str, name: str) -> str:
    return f"{PLURALS[kind][:-1]}.apps/{name}"


def selector_string(label_selector: dict | None) -> str:
    """metav1.LabelSelectorAsSelector(sel).String(): requirements sorted by key."""
    label_selector = label_selector or {}
    reqs = [(k, f"{k}={v}") for k, v in (label_selector.get("matchLabels") or {}).items()]
    for expr in label_selector.get("matchExpressions") or []:
        key, op = expr["key"], expr["operator"]
        values = ",".join(sorted(expr.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op)
        if text is None:
            raise RollbackError(f"unsupported label selector operator {op!r}")
        reqs.append((key, text))
    return ",".join(text for _key, text in sorted(reqs))


def controlled_by(obj: dict, owner: dict) -> bool:
    uid = owner["metadata"].get("uid")
    return any(
        ref.get("controller") is True and ref.get("uid") == uid
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def rs_revision(rs: dict) -> int | None:
    """deploymentutil.Revision: missing annotation = 0; unparseable = None (skipped)."""
    value = ((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    if value is None:
        return 0
    try:
        return int(value, 10)
    except ValueError:
        return None


def prune(value):
    """Drop what Go's typed round trip cannot tell apart from absent: None, {}, [], ""."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = prune(v)
            if v not in (None, {}, [], ""):
                out[k] = v
        return out
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def strip_hash(template: dict | None) -> dict:
    t = copy.deepcopy(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return t


def templates_equal(a: dict | None, b: dict | None) -> bool:
    """kubectl's equalIgnoreHash: semantic equality with pod-template-hash removed."""
    return prune(strip_hash(a)) == prune(strip_hash(b))


def images(obj: dict | None) -> dict:
    """{container name: image} of a workload or a bare pod template (init containers too)."""
    if not obj:
        return {}
    spec = obj.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") if "template" in spec else spec
    tspec = tspec or {}
    return {
        c.get("name"): c.get("image") for c in (tspec.get("initContainers") or []) + (tspec.get("containers") or [])
    }


def revision_not_found(n: int) -> str:
    return f"unable to find specified revision {n} in history"


# ---- Deployment history ------------------------------------------------------------------


def owned(items: list, owner: dict) -> list:
    return [i for i in items if controlled_by(i, owner)]


def kubectl_order(deployment: dict, replicasets: list) -> list:
    """GetAllReplicaSets order: sorted by creation time (then name), the "new" one (the first
    whose template equals the Deployment's) moved last; it decides ties between equal revisions."""
    ordered = sorted(
        replicasets, key=lambda rs: (rs["metadata"].get("creationTimestamp") or "", rs["metadata"].get("name"))
    )
    new = next(
        (rs for rs in ordered if templates_equal(rs["spec"].get("template"), deployment["spec"].get("template"))), None
    )
    if new is None:
        return ordered
    return [rs for rs in ordered if rs is not new] + [new]


def choose_replicaset(deployment: dict, replicasets: list, to_revision: int) -> dict:
    """kubectl deploymentRevision(): `replicasets` are already owned by the Deployment."""
    latest, latest_rev, previous, previous_rev = None, -1, None, -1
    for rs in kubectl_order(deployment, replicasets):
        rev = rs_revision(rs)
        if rev is None:
            continue
        if to_revision == 0:
            if latest_rev < rev:
                previous, previous_rev = latest, latest_rev
                latest, latest_rev = rs, rev
            elif previous_rev < rev:
                previous, previous_rev = rs, rev
        elif to_revision == rev:
            return rs
    if to_revision > 0:
        # Not in kubectl: the controller renumbers a restored ReplicaSet (max+1) and keeps the old
        # numbers in revision-history, so "revision N" is still this ReplicaSet's template. This
        # makes a repeated rollback to N find it (and skip) instead of failing.
        for rs in replicasets:
            history = ((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION_HISTORY, "")
            if str(to_revision) in [h.strip() for h in history.split(",")]:
                return rs
        raise RollbackError(revision_not_found(to_revision))
    if previous is None:
        raise RollbackError(f'no rollout history found for deployment "{deployment["metadata"]["name"]}"')
    return previous


def deployment_annotations(deployment: dict, rs: dict) -> dict:
    current = deployment["metadata"].get("annotations") or {}
    out = {k: current[k] for k in KEEP_ANNOTATIONS if k in current}
    for k, v in ((rs.get("metadata") or {}).get("annotations") or {}).items():
        if k not in KEEP_ANNOTATIONS:
            out[k] = v
    return out


def deployment_patch(deployment: dict, rs: dict) -> list:
    """The JSON Patch kubectl sends: replace /spec/template and /metadata/annotations."""
    return [
        {"op": "replace", "path": "/spec/template", "value": strip_hash(rs["spec"]["template"])},
        {"op": "replace", "path": "/metadata/annotations", "value": deployment_annotations(deployment, rs)},
    ]


# ---- StatefulSet / DaemonSet history --------------------------------------------------------


def choose_history(history: list, to_revision: int) -> dict:
    """kubectl findHistory(): `history` are ControllerRevisions owned by the object."""
    if to_revision == 0 and len(history) <= 1:
        raise RollbackError("no last revision to roll back to")
    if to_revision == 0:
        return sorted(history, key=lambda h: h.get("revision", 0))[-2]
    for h in history:
        if h.get("revision") == to_revision:
            return h
    raise RollbackError(revision_not_found(to_revision))


def history_template(cr: dict) -> dict:
    t = copy.deepcopy((((cr.get("data") or {}).get("spec") or {}).get("template")) or {})
    t.pop("$patch", None)
    return t


def history_matches(obj: dict, cr: dict) -> bool:
    """kubectl daemonSetMatch / statefulSetMatch (semantic instead of byte equality)."""
    return prune(obj["spec"].get("template") or {}) == prune(history_template(cr))


def current_history_revision(obj: dict, history: list) -> int | None:
    for h in sorted(history, key=lambda h: -h.get("revision", 0)):
        if history_matches(obj, h):
            return h.get("revision")
    return None


# ---- rollout status (kubectl rollout status) -----------------------------------------------


def status_verdict(kind: str, obj: dict) -> dict:
    """{"done": bool, "failed": bool, "message": str} + replica counts, like rollout status."""
    name = obj["metadata"]["name"]
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    gen, observed = obj["metadata"].get("generation", 0), st.get("observedGeneration", 0)
    out = {"done": False, "failed": False, "generation": gen, "observed_generation": observed}
    if kind == "Deployment":
        want = spec.get("replicas", 1)
        counts = {
            "replicas": want,
            "current_replicas": st.get("replicas", 0),
            "updated_replicas": st.get("updatedReplicas", 0),
            "ready_replicas": st.get("readyReplicas", 0),
            "available_replicas": st.get("availableReplicas", 0),
        }
        out.update(counts)
        if gen > observed:
            out["message"] = "Waiting for deployment spec update to be observed..."
            return out
        cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Progressing"), None)
        if cond and cond.get("reason") == "ProgressDeadlineExceeded":
            out.update(failed=True, message=f'deployment "{name}" exceeded its progress deadline')
        elif counts["updated_replicas"] < want:
            out["message"] = (
                f'Waiting for deployment "{name}" rollout to finish: {counts["updated_replicas"]} out of '
                f"{want} new replicas have been updated..."
            )
        elif counts["current_replicas"] > counts["updated_replicas"]:
            out["message"] = (
                f'Waiting for deployment "{name}" rollout to finish: '
                f"{counts['current_replicas'] - counts['updated_replicas']} old replicas are pending termination..."
            )
        elif counts["available_replicas"] < counts["updated_replicas"]:
            out["message"] = (
                f'Waiting for deployment "{name}" rollout to finish: {counts["available_replicas"]} of '
                f"{counts['updated_replicas']} updated replicas are available..."
            )
        else:
            out.update(done=True, message=f'deployment "{name}" successfully rolled out')
        return out
    if kind == "DaemonSet":
        counts = {
            "desired_number_scheduled": st.get("desiredNumberScheduled", 0),
            "updated_number_scheduled": st.get("updatedNumberScheduled", 0),
            "number_available": st.get("numberAvailable", 0),
            "number_ready": st.get("numberReady", 0),
        }
        out.update(counts)
        if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
            out.update(failed=True, message="rollout status is only available for RollingUpdate strategy type")
        elif gen > observed:
            out["message"] = "Waiting for daemon set spec update to be observed..."
        elif counts["updated_number_scheduled"] < counts["desired_number_scheduled"]:
            out["message"] = (
                f'Waiting for daemon set "{name}" rollout to finish: {counts["updated_number_scheduled"]} '
                f"out of {counts['desired_number_scheduled']} new pods have been updated..."
            )
        elif counts["number_available"] < counts["desired_number_scheduled"]:
            out["message"] = (
                f'Waiting for daemon set "{name}" rollout to finish: {counts["number_available"]} of '
                f"{counts['desired_number_scheduled']} updated pods are available..."
            )
        else:
            out.update(done=True, message=f'daemon set "{name}" successfully rolled out')
        return out
    # StatefulSet
    want = spec.get("replicas", 1)
    counts = {
        "replicas": want,
        "ready_replicas": st.get("readyReplicas", 0),
        "updated_replicas": st.get("updatedReplicas", 0),
        "current_revision": st.get("currentRevision"),
        "update_revision": st.get("updateRevision"),
    }
    out.update(counts)
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        out.update(failed=True, message="rollout status is only available for RollingUpdate strategy type")
    elif observed == 0 or gen > observed:
        out["message"] = "Waiting for statefulset spec update to be observed..."
    elif counts["ready_replicas"] < want:
        out["message"] = f"Waiting for {want - counts['ready_replicas']} pods to be ready..."
    elif strategy.get("rollingUpdate") is not None:
        partition = strategy["rollingUpdate"].get("partition")
        if partition is not None and counts["updated_replicas"] < want - partition:
            out["message"] = (
                f"Waiting for partitioned roll out to finish: {counts['updated_replicas']} out of "
                f"{want - partition} new pods have been updated..."
            )
        else:
            out.update(
                done=True,
                message=f"partitioned roll out complete: {counts['updated_replicas']} new pods have been updated...",
            )
    elif counts["update_revision"] != counts["current_revision"]:
        out["message"] = (
            f"waiting for statefulset rolling update to complete {counts['updated_replicas']} pods at "
            f"revision {counts['update_revision']}..."
        )
    else:
        out.update(
            done=True,
            message=f"statefulset rolling update complete {st.get('replicas', 0)} pods at revision "
            f"{counts['current_revision']}...",
        )
    return out


# ---- set (image / env / replicas) and restart plans -----------------------------------------


def update_patch(
    obj: dict,
    images_wanted: dict | None = None,
    env: dict | None = None,
    container: str | None = None,
    replicas: int | None = None,
) -> dict | None:
    """Strategic-merge patch setting images ({container: image}), env (on `container`, or on every
    container) and replicas; None when the object already has them."""
    tspec = obj["spec"]["template"].get("spec") or {}
    containers = {c["name"]: c for c in tspec.get("containers") or []}
    unknown = sorted(set(images_wanted or {}) - set(containers) - {"*"})
    if container and container not in containers:
        unknown.append(container)
    if unknown:
        raise RollbackError(
            f"{obj['kind'] if 'kind' in obj else 'object'} {obj['metadata']['name']} has no container "
            f"{', '.join(unknown)}; its containers are {', '.join(sorted(containers))}"
        )
    patch_containers = []
    for cname, cur in containers.items():
        change: dict = {}
        want_image = (images_wanted or {}).get(cname, (images_wanted or {}).get("*"))
        if want_image is not None and cur.get("image") != want_image:
            change["image"] = want_image
        if env and (container is None or container == cname):
            cur_env = {e["name"]: e for e in cur.get("env") or []}
            env_changes = [
                {"name": k, "value": str(v)}
                for k, v in env.items()
                if cur_env.get(k, {}).get("value") != str(v) or "valueFrom" in cur_env.get(k, {})
            ]
            if env_changes:
                change["env"] = env_changes
        if change:
            patch_containers.append(dict(name=cname, **change))
    body: dict = {}
    if patch_containers:
        body = {"spec": {"template": {"spec": {"containers": patch_containers}}}}
    if replicas is not None and obj["kind"] != "DaemonSet" and obj["spec"].get("replicas", 1) != replicas:
        body.setdefault("spec", {})["replicas"] = replicas
    return body or None


def restart_patch(now: datetime.datetime) -> dict:
    """kubectl rollout restart: stamp the pod template so every pod is replaced."""
    utc = datetime.timezone.utc  # noqa: UP017 (datetime.UTC needs Python 3.11; targets may be older)
    stamp = now.astimezone(utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}


def apply_strategic(obj: dict, patch: dict) -> dict:
    """Predict the object after `patch` (the subset update_patch/restart_patch produce)."""
    out = copy.deepcopy(obj)
    spec = patch.get("spec") or {}
    if "replicas" in spec:
        out["spec"]["replicas"] = spec["replicas"]
    tpl = spec.get("template") or {}
    for k, v in ((tpl.get("metadata") or {}).get("annotations") or {}).items():
        out["spec"]["template"].setdefault("metadata", {}).setdefault("annotations", {})[k] = v
    for change in (tpl.get("spec") or {}).get("containers") or []:
        cur = next(c for c in out["spec"]["template"]["spec"]["containers"] if c["name"] == change["name"])
        if "image" in change:
            cur["image"] = change["image"]
        for e in change.get("env") or []:
            envs = cur.setdefault("env", [])
            found = next((x for x in envs if x["name"] == e["name"]), None)
            if found is None:
                envs.append(dict(e))
            else:
                found.pop("valueFrom", None)
                found["value"] = e["value"]
    return out


# ---- copies of a Deployment (a DR drill instance) ------------------------------------------


def env_of(obj: dict) -> dict:
    """{container name: its env list (value or valueFrom entries, as in the spec)}."""
    tspec = (obj["spec"].get("template") or {}).get("spec") or {}
    return {c.get("name"): copy.deepcopy(c.get("env") or []) for c in tspec.get("containers") or []}


def env_from_of(obj: dict) -> dict:
    """{container name: its envFrom list} (whole Secrets / ConfigMaps as variables)."""
    tspec = (obj["spec"].get("template") or {}).get("spec") or {}
    return {c.get("name"): copy.deepcopy(c.get("envFrom") or []) for c in tspec.get("containers") or []}


def shared_labels(source: dict, labels: dict) -> list:
    """The `labels` pairs the source's pods also carry: a Service (or PodDisruptionBudget,
    NetworkPolicy...) selecting the source's pods on any of them would select the copy too."""
    pod_labels = strip_hash(source["spec"].get("template")).get("metadata", {}).get("labels") or {}
    return sorted(f"{k}={v}" for k, v in labels.items() if pod_labels.get(k) == v)


def copy_definition(source: dict, name: str, namespace: str, labels: dict, replicas: int) -> dict:
    """A new Deployment `name` running the source's pod template, selected by `labels` only:
    none of the source's labels or annotations, no status, not paused."""
    spec = copy.deepcopy(source["spec"])
    spec.pop("paused", None)
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": dict(labels)}
    template = strip_hash(spec.get("template"))
    template.setdefault("metadata", {})["labels"] = dict(labels)
    spec["template"] = template
    src = source["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {COPY_OF: f"{src.get('namespace')}/{src['name']}"},
        },
        "spec": spec,
    }


# ---- orchestration -------------------------------------------------------------------------


class Rollout:
    """Undo / status / set / restart one workload, then verify like `kubectl rollout status`."""

    def __init__(
        self,
        client,
        kind: str,
        namespace: str,
        name: str,
        check_mode: bool = False,
        clock=time.monotonic,
        sleep=time.sleep,
        now=None,
        poll_interval: float = 0.5,
    ):
        if kind not in KINDS:
            raise RollbackError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.client, self.kind, self.ns, self.name = client, kind, namespace, name
        self.check_mode = check_mode
        self.clock, self.sleep = clock, sleep
        self.now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))  # noqa: UP017
        self.poll = poll_interval
        self.started = clock()
        self.result: dict = {"changed": False, "skipped": False, "kind": kind, "namespace": namespace, "name": name}

    # -- reading --
    def _get(self) -> dict:
        try:
            obj = self.client.get(self.kind, self.ns, self.name)
        except ClientError as exc:
            if exc.status == 404:
                raise RollbackError(
                    f'{PLURALS[self.kind]}.apps "{self.name}" not found in namespace {self.ns}', self.result
                ) from exc
            raise RollbackError(f"failed to retrieve {self.kind} {self.name}: {exc.message}", self.result) from exc
        obj.setdefault("kind", self.kind)
        return obj

    def _history(self, obj: dict) -> list:
        hkind = "ReplicaSet" if self.kind == "Deployment" else "ControllerRevision"
        try:
            items = self.client.list(hkind, self.ns, selector_string(obj["spec"].get("selector")))
        except ClientError as exc:
            raise RollbackError(
                f"failed to retrieve {PLURALS[hkind]} of {self.kind} {self.name}: {exc.message}", self.result
            ) from exc
        return owned(items, obj)

    def _revision_of(self, obj: dict, history: list) -> int | None:
        if self.kind == "Deployment":
            return rs_revision(obj)
        return current_history_revision(obj, history)

    def _finish(self, obj_before: dict, obj_after: dict | None) -> None:
        self.result["images_before"] = images(obj_before)
        self.result["images_after"] = images(obj_after if obj_after is not None else obj_before)
        self.result["diff"] = {
            "before": {"template": obj_before["spec"].get("template")},
            "after": {"template": (obj_after or obj_before)["spec"].get("template")},
        }

    # -- actions --
    def undo(self, to_revision: int = 0, wait: bool = True, wait_timeout: float = 300) -> dict:
        if to_revision < 0:
            raise RollbackError(revision_not_found(to_revision), self.result)
        obj = self._get()
        history = self._history(obj)
        self.result["from_revision"] = self._revision_of(obj, history)
        try:
            if self.kind == "Deployment":
                target = choose_replicaset(obj, history, to_revision)
                self.result["to_revision"] = to_revision or rs_revision(target)
                self.result["target_revision"] = rs_revision(target)
                if obj["spec"].get("paused"):
                    raise RollbackError(PAUSED_MSG)
                same = templates_equal(target["spec"].get("template"), obj["spec"].get("template"))
                patch, ptype = (None, None) if same else (deployment_patch(obj, target), "json")
                after_template = strip_hash(target["spec"].get("template"))
            else:
                target = choose_history(history, to_revision)
                self.result["to_revision"] = target.get("revision")
                same = history_matches(obj, target)
                patch, ptype = (None, None) if same else (copy.deepcopy(target.get("data")), "strategic")
                after_template = history_template(target)
        except RollbackError as exc:
            exc.result = self.result
            raise
        predicted = copy.deepcopy(obj)
        predicted["spec"]["template"] = after_template
        self._finish(obj, predicted)
        if same:
            self.result.update(
                skipped=True, msg=f"skipped rollback (current template already matches revision {to_revision})"
            )
            return self._maybe_wait(wait, wait_timeout)
        return self._apply(patch, ptype, wait, wait_timeout, f"{resource_ref(self.kind, self.name)} rolled back")

    def status(self, wait: bool = True, wait_timeout: float = 300, return_env: bool = False) -> dict:
        obj = self._get()
        history = self._history(obj)
        self.result["from_revision"] = self.result["to_revision"] = self._revision_of(obj, history)
        self._finish(obj, obj)
        if return_env:
            self.result["env"] = env_of(obj)
            self.result["env_from"] = env_from_of(obj)
        return self._maybe_wait(wait, wait_timeout, fail_on_wait=True)

    def set(self, images_wanted=None, env=None, container=None, replicas=None, wait=True, wait_timeout=300) -> dict:
        obj = self._get()
        self.result["from_revision"] = self._revision_of(obj, self._history(obj))
        try:
            patch = update_patch(obj, images_wanted, env, container, replicas)
        except RollbackError as exc:
            exc.result = self.result
            raise
        self._finish(obj, apply_strategic(obj, patch) if patch else obj)
        if patch is None:
            self.result.update(skipped=True, msg=f"{resource_ref(self.kind, self.name)} already up to date")
            return self._maybe_wait(wait, wait_timeout)
        if "replicas" in patch.get("spec", {}):
            self.result["replicas_before"] = obj["spec"].get("replicas", 1)
            self.result["replicas_after"] = patch["spec"]["replicas"]
        return self._apply(patch, "strategic", wait, wait_timeout, f"{resource_ref(self.kind, self.name)} updated")

    def restart(self, wait=True, wait_timeout=300) -> dict:
        obj = self._get()
        self.result["from_revision"] = self._revision_of(obj, self._history(obj))
        if obj["spec"].get("paused"):
            raise RollbackError(f"can't restart paused {kind_label(self.kind)} (run rollout resume first)", self.result)
        patch = restart_patch(self.now())
        self._finish(obj, apply_strategic(obj, patch))
        return self._apply(patch, "strategic", wait, wait_timeout, f"{resource_ref(self.kind, self.name)} restarted")

    def _deployment_or_none(self, ns: str, name: str) -> dict | None:
        """The Deployment ns/name, or None when it does not exist; any other API error is a
        RollbackError naming it."""
        try:
            return self.client.get("Deployment", ns, name)
        except ClientError as exc:
            if exc.status != 404:
                raise RollbackError(f"failed to retrieve Deployment {ns}/{name}: {exc.message}", self.result) from exc
            return None

    def copy(
        self,
        copy_name: str,
        copy_namespace: str | None,
        labels: dict,
        images_wanted=None,
        env=None,
        container=None,
        replicas: int | None = None,
        wait: bool = True,
        wait_timeout: float = 300,
    ) -> dict:
        """Create (or bring up to date) the Deployment `copy_name` running this Deployment's pod
        template with `images`/`env` applied, `replicas` (default 1) and only `labels` as labels
        and selector; then wait for its rollout. The source is never changed."""
        if self.kind != "Deployment":
            raise RollbackError(f"action=copy works on a Deployment, not a {self.kind}", self.result)
        ns = copy_namespace or self.ns
        self.result["copied_to"] = {"name": copy_name, "namespace": ns}
        if (copy_name, ns) == (self.name, self.ns):
            raise RollbackError(
                f"copy_name {copy_name} is the Deployment itself; give the copy another name", self.result
            )
        source = self._get()
        shared = shared_labels(source, labels)
        if not labels or shared:
            raise RollbackError(
                f"copy_labels must be non-empty and share no label with the pods of {self._where()} "
                f"(shared: {', '.join(shared) or 'none'}): otherwise the copy's pods could join the Services "
                "and budgets that select the production pods",
                self.result,
            )
        want = copy_definition(source, copy_name, ns, labels, 1 if replicas is None else replicas)
        try:
            patch = update_patch(want, images_wanted, env, container, None)
        except RollbackError as exc:
            exc.result = self.result
            raise
        if patch:
            want = apply_strategic(want, patch)
        target = Rollout(
            self.client, "Deployment", ns, copy_name, self.check_mode, self.clock, self.sleep, poll_interval=self.poll
        )
        target.started = self.started
        target.result = self.result
        current = self._deployment_or_none(ns, copy_name)
        if current is None:
            self.result["images_before"] = {}
            self.result["images_after"] = images(want)
            self.result["diff"] = {"before": {}, "after": {"template": want["spec"]["template"]}}
            self.result.update(changed=True, definition=want, msg=f"deployment.apps/{copy_name} created")
            if self.check_mode:
                self.result["duration_s"] = round(self.clock() - self.started, 3)
                return self.result
            try:
                self.client.create("Deployment", ns, want)
            except ClientError as exc:
                raise RollbackError(f"failed creating Deployment {ns}/{copy_name}: {exc.message}", self.result) from exc
            return target._maybe_wait(wait, wait_timeout, fail_on_wait=True)
        mark = (current["metadata"].get("annotations") or {}).get(COPY_OF)
        if mark != want["metadata"]["annotations"][COPY_OF]:
            raise RollbackError(
                f"Deployment {ns}/{copy_name} exists and is not a copy of {self._where()} (annotation {COPY_OF}: "
                f"{mark or 'none'}); refusing to change it. Choose another copy_name.",
                self.result,
            )
        if prune(current["spec"].get("selector")) != prune(want["spec"]["selector"]):
            raise RollbackError(
                f"the copy {ns}/{copy_name} exists with another selector (selectors cannot change); remove it first "
                "with action=delete_copy",
                self.result,
            )
        current.setdefault("kind", "Deployment")
        self.result["images_before"] = images(current)
        self.result["images_after"] = images(want)
        self.result["diff"] = {
            "before": {"template": current["spec"].get("template")},
            "after": {"template": want["spec"]["template"]},
        }
        ops = []
        if not templates_equal(current["spec"].get("template"), want["spec"]["template"]):
            ops.append({"op": "replace", "path": "/spec/template", "value": want["spec"]["template"]})
        if current["spec"].get("replicas", 1) != want["spec"]["replicas"]:
            ops.append({"op": "replace", "path": "/spec/replicas", "value": want["spec"]["replicas"]})
        if current["spec"].get("paused"):
            ops.append({"op": "remove", "path": "/spec/paused"})
        if not ops:
            self.result.update(skipped=True, msg=f"deployment.apps/{copy_name} already up to date")
            return target._maybe_wait(wait, wait_timeout, fail_on_wait=True)
        return target._apply(ops, "json", wait, wait_timeout, f"deployment.apps/{copy_name} updated")

    def delete_copy(
        self, copy_name: str, copy_namespace: str | None, wait: bool = True, wait_timeout: float = 300
    ) -> dict:
        """Delete the copy `copy_name` made by copy() (background propagation: its ReplicaSets and
        pods go with it). Absent = nothing to do; a Deployment that is not a copy of this one is
        refused."""
        ns = copy_namespace or self.ns
        self.result["copied_to"] = {"name": copy_name, "namespace": ns}
        if (copy_name, ns) == (self.name, self.ns):
            raise RollbackError(f"copy_name {copy_name} is the Deployment itself; refusing to delete it", self.result)
        current = self._deployment_or_none(ns, copy_name)
        if current is None:
            self.result.update(
                msg=f'deployment.apps "{copy_name}" already absent', duration_s=round(self.clock() - self.started, 3)
            )
            return self.result
        mark = (current["metadata"].get("annotations") or {}).get(COPY_OF)
        if mark != f"{self.ns}/{self.name}":
            raise RollbackError(
                f"Deployment {ns}/{copy_name} is not a copy of {self._where()} "
                f"(annotation {COPY_OF}: {mark or 'none'}); refusing to delete it",
                self.result,
            )
        self.result["images_before"] = images(current)
        self.result["diff"] = {"before": {"template": current["spec"].get("template")}, "after": {}}
        self.result.update(changed=True, msg=f'deployment.apps "{copy_name}" deleted')
        if not self.check_mode:
            try:
                self.client.delete("Deployment", ns, copy_name)
            except ClientError as exc:
                if exc.status != 404:
                    raise RollbackError(
                        f"failed deleting Deployment {ns}/{copy_name}: {exc.message}", self.result
                    ) from exc
            deadline = self.clock() + wait_timeout
            while wait:
                if self._deployment_or_none(ns, copy_name) is None:
                    break
                if self.clock() >= deadline:
                    raise RollbackError(
                        f"Deployment {ns}/{copy_name} still exists {wait_timeout:g} s after its deletion", self.result
                    )
                self.sleep(self.poll)
        self.result["duration_s"] = round(self.clock() - self.started, 3)
        return self.result

    # -- applying and verifying --
    def _apply(self, patch, ptype: str, wait: bool, wait_timeout: float, done_msg: str) -> dict:
        self.result.update(changed=True, patch=patch, patch_type=ptype, msg=done_msg)
        if self.check_mode:
            self.result["duration_s"] = round(self.clock() - self.started, 3)
            return self.result
        try:
            self.client.patch(self.kind, self.ns, self.name, patch, ptype)
        except ClientError as exc:
            what = f"revision {self.result.get('to_revision')}" if "rolled back" in done_msg else self.name
            raise RollbackError(
                f"failed restoring {what}: {exc.message}"
                if "rolled back" in done_msg
                else f"failed patching {self.kind} {what}: {exc.message}",
                self.result,
            ) from exc
        return self._maybe_wait(wait, wait_timeout, fail_on_wait=True)

    def _maybe_wait(self, wait: bool, wait_timeout: float, fail_on_wait: bool = False) -> dict:
        if not wait or self.check_mode:
            if not self.check_mode:
                obj = self._get()
                self.result["rollout"] = status_verdict(self.kind, obj)
            self.result["duration_s"] = round(self.clock() - self.started, 3)
            return self.result
        deadline = self.clock() + wait_timeout
        while True:
            obj = self._get()
            verdict = status_verdict(self.kind, obj)
            self.result["rollout"] = verdict
            self.result["duration_s"] = round(self.clock() - self.started, 3)
            if verdict["done"]:
                if self.kind == "Deployment":
                    self.result["revision_after"] = rs_revision(obj)
                return self.result
            if verdict["failed"]:
                raise RollbackError(f"{verdict['message']} ({self._where()})", self.result)
            if self.clock() >= deadline:
                raise RollbackError(
                    f"rollout of {self.kind} {self.ns}/{self.name} did not finish within {wait_timeout:g} s: "
                    f"{verdict['message']}",
                    self.result,
                )
            self.sleep(self.poll)

    def _where(self) -> str:
        return f"{self.kind} {self.ns}/{self.name}"


# ---- EKS exec credential plugins -----------------------------------------------------------


def kubeconfig_user(configs: list, context: str | None) -> tuple:
    """(user name, user dict) of `context` (default: current-context) in merged kubeconfigs:
    like kubectl, the first file that defines a name wins."""
    current = context or next((c.get("current-context") for c in configs if c and c.get("current-context")), None)
    if not current:
        return None, {}

    def first(section, name):
        for cfg in configs:
            for item in (cfg or {}).get(section) or []:
                if item.get("name") == name:
                    return item
        return None

    ctx = first("contexts", current)
    if not ctx:
        return None, {}
    uname = (ctx.get("context") or {}).get("user")
    user = first("users", uname) if uname else None
    return uname, (user or {}).get("user") or {}


def exec_command_line(exec_cfg: dict) -> str:
    return " ".join([str(exec_cfg.get("command", ""))] + [str(a) for a in exec_cfg.get("args") or []])


def exec_failure_message(user_name: str, exec_cfg: dict, error: str) -> str:
    cmd = exec_command_line(exec_cfg)
    hint = (
        (
            "install the AWS CLI and make sure `aws sts get-caller-identity` works for this user "
            "(AWS_PROFILE, credentials, region)"
        )
        if exec_cfg.get("command", "").endswith("aws")
        else "make sure the credential plugin command works from the shell that runs Ansible"
    )
    error = " ".join((error or "no output").split())
    return (
        f"kubeconfig user {user_name!r} gets its token from the exec plugin `{cmd}`, which failed: {error}. "
        f"Without a token every API call would be rejected (401); {hint}."
    )
