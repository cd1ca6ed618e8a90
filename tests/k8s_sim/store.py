"""In-memory object store of the fake API server: uid, resourceVersion, generation, events."""

from __future__ import annotations

import copy
import datetime
import hashlib
import re
import threading

# (group/version, plural) -> kind, namespaced
RESOURCES = {
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "replicasets"): ("ReplicaSet", True),
    ("apps/v1", "statefulsets"): ("StatefulSet", True),
    ("apps/v1", "daemonsets"): ("DaemonSet", True),
    ("apps/v1", "controllerrevisions"): ("ControllerRevision", True),
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "pods"): ("Pod", True),
}
WORKLOADS = {"deployments", "statefulsets", "daemonsets"}
BASE_TIME = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def not_found(plural: str, group: str, name: str) -> ApiError:
    res = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{res} "{name}" not found')


def group_of(gv: str) -> str:
    return gv.split("/")[0] if "/" in gv else ""


# ---- label selectors -------------------------------------------------------------------

_REQ = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*?))?\s*$")


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def label_match(selector: str | None, labels: dict | None) -> bool:
    labels = labels or {}
    if not selector:
        return True
    for req in _split_selector(selector):
        m = _REQ.match(req)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}")
        neg, key, op, val = m.groups()
        op = (op or "").strip()
        if not op:
            if (key in labels) == bool(neg):
                return False
        elif op in ("=", "=="):
            if labels.get(key) != val:
                return False
        elif op == "!=":
            if labels.get(key) == val:
                return False
        else:
            values = {v.strip() for v in val.strip("() ").split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and labels.get(key) in values:
                return False
    return True


def selector_string(label_selector: dict) -> str:
    """metav1.LabelSelectorAsSelector(...).String() for matchLabels/matchExpressions."""
    reqs = [f"{k}={v}" for k, v in sorted((label_selector.get("matchLabels") or {}).items())]
    for expr in label_selector.get("matchExpressions") or []:
        op = expr["operator"]
        if op == "In":
            reqs.append(f"{expr['key']} in ({','.join(sorted(expr['values']))})")
        elif op == "NotIn":
            reqs.append(f"{expr['key']} notin ({','.join(sorted(expr['values']))})")
        elif op == "Exists":
            reqs.append(expr["key"])
        elif op == "DoesNotExist":
            reqs.append("!" + expr["key"])
    return ",".join(reqs)


def field_match(selector: str | None, obj: dict) -> bool:
    if not selector:
        return True
    for req in selector.split(","):
        if "!=" in req:
            key, val = req.split("!=", 1)
            neg = True
        else:
            key, val = req.split("==", 1) if "==" in req else req.split("=", 1)
            neg = False
        key = key.strip()
        if key == "metadata.name":
            actual = obj["metadata"].get("name")
        elif key == "metadata.namespace":
            actual = obj["metadata"].get("namespace")
        else:
            raise ApiError(400, "BadRequest", f"field label not supported: {key}")
        if (actual == val.strip()) == neg:
            return False
    return True


# ---- the store ----------------------------------------------------------------------------


class Store:
    """All objects by (plural, namespace, name); every change is an event (for watches)."""

    def __init__(self, seed: str = "seed"):
        self.seed = seed
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.rv = 1000
        self.uid_counter = 0
        self.clock = 0  # seconds since BASE_TIME, advanced by the controller's ticks
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, plural, type, obj)

    def now(self) -> str:
        return (BASE_TIME + datetime.timedelta(seconds=self.clock)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _uid(self) -> str:
        self.uid_counter += 1
        h = hashlib.sha256(f"{self.seed}/{self.uid_counter}".encode()).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"

    def _bump(self, plural: str, etype: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, plural, etype, copy.deepcopy(obj)))
        self.cond.notify_all()

    def get(self, plural, ns, name) -> dict | None:
        with self.lock:
            obj = self.objects.get((plural, ns or "", name))
            return copy.deepcopy(obj) if obj else None

    def list(self, plural, ns=None, label_selector=None, field_selector=None) -> list[dict]:
        with self.lock:
            out = []
            for (p, o_ns, _name), obj in sorted(self.objects.items()):
                if p != plural or (ns and o_ns != ns):
                    continue
                if label_match(label_selector, obj["metadata"].get("labels")) and field_match(field_selector, obj):
                    out.append(copy.deepcopy(obj))
            return out

    def create(self, plural, ns, obj: dict, gv: str) -> dict:
        kind = RESOURCES[(gv, plural)][0]
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + hashlib.sha256(f"{self.seed}{self.rv}".encode()).hexdigest()[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind} is invalid: metadata.name: Required value")
            if ns:
                meta["namespace"] = ns
            key = (plural, ns or "", name)
            if key in self.objects:
                raise ApiError(
                    409, "AlreadyExists", f'{plural}.{group_of(gv) or ""} "{name}" already exists'.replace('. "', ' "')
                )
            obj["apiVersion"], obj["kind"] = gv, kind
            meta["uid"] = self._uid()
            meta["creationTimestamp"] = self.now()
            meta.pop("resourceVersion", None)
            if plural in WORKLOADS or plural == "replicasets":
                meta["generation"] = 1
                default_workload(plural, obj)
                obj.setdefault("status", {})
            self.objects[key] = obj
            self._bump(plural, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, plural, ns, name, new: dict, subresource: str | None = None, check_rv: bool = True) -> dict:
        """PUT semantics (also used by PATCH after computing the new object)."""
        with self.lock:
            key = (plural, ns or "", name)
            old = self.objects.get(key)
            if old is None:
                gv = next(g for (g, p) in RESOURCES if p == plural)
                raise not_found(plural, group_of(gv), name)
            new = copy.deepcopy(new)
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
            if check_rv and want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": '
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            meta = new.setdefault("metadata", {})
            for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if subresource == "status":
                # the status subresource ignores spec and label changes (and keeps generation);
                # the deployment controller records the revision annotation this way
                merged = copy.deepcopy(new)
                merged["spec"] = copy.deepcopy(old.get("spec"))
                merged["metadata"]["labels"] = copy.deepcopy(old["metadata"].get("labels"))
                if merged["metadata"]["labels"] is None:
                    del merged["metadata"]["labels"]
                new = merged
            elif plural in WORKLOADS or plural == "replicasets":
                new["status"] = old.get("status", {})
                default_workload(plural, new)
                if new.get("spec") != old.get("spec") or (new["metadata"].get("annotations") or {}) != (
                    old["metadata"].get("annotations") or {}
                ):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if new == old:
                return copy.deepcopy(old)
            self.objects[key] = new
            self._bump(plural, "MODIFIED", new)
            return copy.deepcopy(new)

    def delete(self, plural, ns, name) -> dict:
        with self.lock:
            obj = self.objects.pop((plural, ns or "", name), None)
            if obj is None:
                gv = next(g for (g, p) in RESOURCES if p == plural)
                raise not_found(plural, group_of(gv), name)
            self._bump(plural, "DELETED", obj)
            return copy.deepcopy(obj)


def default_template(template: dict) -> None:
    """What the apiserver defaults in a pod template (and what Go's encoder always writes)."""
    meta = template.setdefault("metadata", {})
    meta.setdefault("creationTimestamp", None)
    spec = template.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in spec.get("containers") or []:
        c.setdefault("resources", {})
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        image = c.get("image", "")
        c.setdefault(
            "imagePullPolicy",
            "Always" if image.endswith(":latest") or ":" not in image.split("/")[-1] else "IfNotPresent",
        )


def default_workload(plural: str, obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if "template" in spec:
        default_template(spec["template"])
    if plural == "deployments":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    elif plural == "statefulsets":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"partition": 0})
    elif plural == "daemonsets":
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": 1, "maxSurge": 0})
    elif plural == "replicasets":
        spec.setdefault("replicas", 1)
