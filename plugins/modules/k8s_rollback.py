#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_rollback
short_description: Roll a Deployment, StatefulSet or DaemonSet back exactly like kubectl, and verify it
version_added: 0.1.0
description:
  - Does what C(kubectl rollout undo) does, decision for decision (kubectl 1.32
    C(polymorphichelpers/rollback.go)), then waits like C(kubectl rollout status).
  - History of a Deployment is its ReplicaSets, selected by the Deployment's selector B(and)
    controlled by it (owner reference with the Deployment's uid), so another Deployment's
    ReplicaSets with overlapping labels are never picked. StatefulSets and DaemonSets use their
    ControllerRevisions the same way.
  - O(to_revision=0) is the previous (second-highest) revision. Note that a second plain undo goes
    back to the bad version (the rolled-back ReplicaSet gets a new, highest revision); give
    O(to_revision) for a repeatable, idempotent rollback.
  - One deliberate difference from kubectl - after a rollback to revision N the controller renumbers
    that ReplicaSet and records N in its C(deployment.kubernetes.io/revision-history); where kubectl
    then says revision N is not in the history, this module finds it there (and skips when it is
    the running template), so repeating a rollback to N is idempotent.
  - When the target revision's pod template already equals the current one (ignoring
    C(pod-template-hash)), nothing is sent and the result is C(changed=false, skipped=true).
  - A Deployment is restored with the single JSON Patch kubectl sends, replacing
    C(/spec/template) and C(/metadata/annotations); the Deployment keeps its own
    C(last-applied-configuration), revision, revision-history, desired/max-replicas and
    rollback annotations, and takes the other annotations from the ReplicaSet.
  - A paused Deployment is refused (resume it first).
  - With O(wait=true), it waits until the controller has observed the change, the updated replicas
    equal the desired ones, no old replicas are left and all updated ones are available, and fails
    at once when the Deployment reports C(ProgressDeadlineExceeded).
  - O(action) also offers the other steps of an EKS deployment with the same verification -
    V(status) (read-only C(rollout status)), V(set) (set image, env and replicas, like
    C(kubectl set image), C(kubectl set env) and C(kubectl scale)) and V(restart)
    (C(kubectl rollout restart)). The C(ops.runbooks.deploy) role uses them on C(deploy_platform=eks).
  - For a disaster-recovery drill (C(ops.runbooks.dr) on EKS), V(copy) runs a second Deployment
    O(copy_name) from this Deployment's pod template (with O(env)/O(images) applied, O(replicas),
    default 1) that only carries O(copy_labels) as labels and selector, so it never joins the
    production Services; V(delete_copy) removes it again. O(return_env) makes V(status) return the
    containers' environment (to read the app's database URL).
  - "EKS: when the kubeconfig user is an C(exec) credential plugin (C(aws eks get-token)) and the
    plugin fails, the Python client silently goes on without a token; this module detects that and
    fails with the plugin's command line and its error instead of a bare 401."
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._k8s
  - ops.runbooks._attributes
  - ops.runbooks._attributes.actiongroup_k8s
attributes:
  check_mode:
    support: full
    details: Returns the exact patch a real run would send (RV(patch)), and sends nothing.
  diff_mode:
    support: full
    details: The pod template before and after.
  idempotent:
    support: partial
    details:
      - Deployment with an explicit O(to_revision) - a second run finds the template already restored
        and reports no change. O(to_revision=0) is "the previous revision", which moves after each
        rollback, exactly like C(kubectl rollout undo).
      - StatefulSet and DaemonSet - the controller renumbers a restored ControllerRevision and keeps
        no trace of its old number, so repeating O(to_revision=N) fails like kubectl
        (C(unable to find specified revision N)); repeat with the new number (RV(from_revision) of a
        run with O(action=status)), which reports no change.
      - O(action=set) is idempotent; O(action=restart) always restarts (that is its purpose);
        O(action=status) never changes anything.
      - O(action=copy) is idempotent (an up-to-date copy is left alone); O(action=delete_copy) reports no
        change when the copy is absent.
options:
  kind:
    description:
      - Kind of the workload.
    type: str
    choices: [Deployment, StatefulSet, DaemonSet]
    default: Deployment
  name:
    description:
      - Name of the workload.
    type: str
    required: true
  namespace:
    description:
      - Namespace of the workload.
    type: str
    default: default
  action:
    description:
      - V(undo) - roll back to O(to_revision) (C(kubectl rollout undo)).
      - V(status) - only report (and with O(wait), wait for) the rollout status; never changes anything.
      - V(set) - set O(images), O(env) and O(replicas), then verify the rollout.
      - V(restart) - restart every pod by stamping the pod template with
        C(kubectl.kubernetes.io/restartedAt) (C(kubectl rollout restart)).
      - V(copy) - create or update the Deployment O(copy_name) as a copy of this Deployment (see
        O(copy_labels)), then verify its rollout. The source is only read. Deployments only.
      - V(delete_copy) - delete the Deployment O(copy_name) (with background propagation, so its
        ReplicaSets and pods go with it), but only when it is a copy of this Deployment (annotation
        C(ops.runbooks/copy-of) set by V(copy)); absent is success.
    type: str
    choices: [undo, status, set, restart, copy, delete_copy]
    default: undo
  to_revision:
    description:
      - Revision to roll back to. V(0) means the previous revision (the second-highest one).
      - A revision older than the workload's C(revisionHistoryLimit) may have been deleted; the
        module then fails with C(unable to find specified revision N in history).
    type: int
    default: 0
  wait:
    description:
      - Wait until the rollout is complete (see the description), and fail if it does not complete
        within O(wait_timeout) seconds or its progress deadline is exceeded.
      - With V(false), the result still contains the rollout status at the end of the run.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait for the rollout with O(wait).
    type: int
    default: 300
  images:
    description:
      - With O(action=set), the image to set for each container, a mapping of container names to
        images; the key V(*) sets every container.
    type: dict
  env:
    description:
      - With O(action=set) or O(action=copy), environment variables to set (a mapping of names to values),
        on O(container) or, when it is not given, on every container. Variables not listed are left alone.
      - Values are visible in the pod spec; put secrets in a Kubernetes Secret instead.
    type: dict
  container:
    description:
      - With O(action=set) or O(action=copy), the container that receives O(env).
    type: str
  replicas:
    description:
      - With O(action=set), the number of replicas (C(kubectl scale)); ignored for DaemonSets.
      - With O(action=copy), the replicas of the copy (default V(1)).
    type: int
  copy_name:
    description:
      - With O(action=copy) and O(action=delete_copy), the name of the copy (another Deployment).
    type: str
  copy_namespace:
    description:
      - Namespace of the copy; default O(namespace).
    type: str
  copy_labels:
    description:
      - With O(action=copy), the only labels of the copy, of its pods and of its selector (none of the
        source's labels are kept; its annotations are not copied either, its pod template annotations are).
      - No key=value pair may also be a label of the source's pods - a Service, PodDisruptionBudget or
        NetworkPolicy selecting the production pods on any of their labels would select the copy's pods too.
        The module refuses such labels.
    type: dict
  return_env:
    description:
      - With O(action=status), also return RV(env) and RV(env_from), the containers' environment as written in the
        pod template. Values may be secrets - use C(no_log) on the task.
    type: bool
    default: false
notes:
  - RBAC needed - get, list, watch and patch on the workload kind; list on replicasets (Deployment)
    or controllerrevisions (StatefulSet, DaemonSet).
  - Templates are compared semantically (null, empty and absent fields are the same), as kubectl
    does on typed objects; resource quantities are compared as written.
seealso:
  - name: kubectl rollout
    description: The kubectl commands this module reproduces.
    link: https://kubernetes.io/docs/reference/kubectl/generated/kubectl_rollout/
"""

EXAMPLES = r"""
- name: Roll liquid-abt-app back to the previous revision and wait for it (runbook 000)
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    context: arn:aws:eks:ap-southeast-2:111122223333:cluster/liquid-abt-production

- name: Roll back to a known good revision (idempotent)
  ops.runbooks.k8s_rollback:
    name: api-gateway
    namespace: bitcurrent-prod
    to_revision: 7
    wait_timeout: 600

- name: Show what a rollback of a StatefulSet would send, without sending it
  ops.runbooks.k8s_rollback:
    kind: StatefulSet
    name: postgres-replica
    namespace: bitcurrent-prod
  check_mode: true
  register: plan

- name: Restart a Deployment (incident "restart deployment")
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    action: restart

- name: Scale the workers (runbook 000 "Scaling")
  ops.runbooks.k8s_rollback:
    name: liquid-abt-workers
    namespace: liquid-abt-production
    action: set
    replicas: 6

- name: Deploy a new image and wait for the rollout
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    action: set
    images:
      liquid-abt-app: 111122223333.dkr.ecr.ap-southeast-2.amazonaws.com/liquid-abt:v2.4.1

- name: Read the app's environment (its DATABASE_URL may hold a password)
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    action: status
    wait: false
    return_env: true
  register: app
  no_log: true

- name: Run a DR drill copy of the app on a restored database, out of the production Service
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    action: copy
    copy_name: liquid-abt-app-dr-drill
    copy_labels:
      app: liquid-abt-app-dr-drill
    container: app
    env:
      DATABASE_URL: "{{ drill_database_url }}"
  no_log: true

- name: Remove the drill copy
  ops.runbooks.k8s_rollback:
    name: liquid-abt-app
    namespace: liquid-abt-production
    action: delete_copy
    copy_name: liquid-abt-app-dr-drill
"""

RETURN = r"""
kind:
  description: Kind of the workload.
  returned: always
  type: str
  sample: Deployment
skipped:
  description: True when the target revision's template already matched (kubectl's "skipped rollback"),
    or when O(action=set) found nothing to change.
  returned: always
  type: bool
  sample: false
from_revision:
  description: Revision running before the module ran (Deployment revision annotation, or the revision
    of the ControllerRevision matching the current template).
  returned: when the workload was found
  type: int
  sample: 3
to_revision:
  description: Revision rolled back to (the actual number, also when O(to_revision=0)).
  returned: with O(action=undo), when a target revision was found
  type: int
  sample: 2
target_revision:
  description: Current number of the restored revision. Equals RV(to_revision), except for a Deployment
    ReplicaSet the controller renumbered after an earlier rollback (found through its
    C(deployment.kubernetes.io/revision-history)).
  returned: with O(action=undo) on a Deployment, when a target revision was found
  type: int
  sample: 3
name:
  description: Name of the workload.
  returned: always
  type: str
  sample: liquid-abt-app
namespace:
  description: Namespace of the workload.
  returned: always
  type: str
  sample: liquid-abt-production
revision_after:
  description: Deployment revision once the rollout completed (the controller gives the restored
    ReplicaSet a new, highest revision).
  returned: when a Deployment rollout was waited for and completed
  type: int
  sample: 4
images_before:
  description: Image of each container before the run.
  returned: when the workload was found
  type: dict
  sample: {"liquid-abt-app": "liquid-abt:v2.4.1"}
images_after:
  description: Image of each container after the run (predicted in check mode).
  returned: when the workload was found
  type: dict
  sample: {"liquid-abt-app": "liquid-abt:v2.4.0"}
patch:
  description: The exact patch sent (or, in check mode, that would be sent). A JSON Patch list for a
    Deployment rollback, a strategic-merge patch otherwise.
  returned: when changed
  type: raw
  sample:
    - {"op": "replace", "path": "/spec/template", "value": {}}
    - {"op": "replace", "path": "/metadata/annotations", "value": {}}
patch_type:
  description: V(json) (JSON Patch) or V(strategic) (strategic-merge patch). O(action=copy) updating an
    existing copy sends a JSON Patch; creating one returns RV(definition) instead.
  returned: when changed
  type: str
  sample: json
rollout:
  description: The rollout status at the end, computed with kubectl's C(rollout status) rules.
  returned: when not in check mode and the workload was found
  type: dict
  contains:
    done:
      description: The rollout is complete.
      type: bool
    failed:
      description: The rollout cannot complete (progress deadline exceeded).
      type: bool
    message:
      description: kubectl's status line.
      type: str
      sample: deployment "liquid-abt-app" successfully rolled out
    replicas:
      description: Desired replicas (Deployment, StatefulSet).
      type: int
    updated_replicas:
      description: Replicas running the new template (Deployment, StatefulSet).
      type: int
    available_replicas:
      description: Available replicas (Deployment).
      type: int
  sample: {"done": true, "failed": false, "message": "deployment \"web\" successfully rolled out", "replicas": 3,
           "updated_replicas": 3, "available_replicas": 3, "ready_replicas": 3, "current_replicas": 3}
duration_s:
  description: Seconds the module spent, waiting included.
  returned: always
  type: float
  sample: 41.7
env:
  description: With O(return_env), each container's C(env) list as in the pod template (C(value) or
    C(valueFrom) entries).
  returned: with O(action=status) and O(return_env)
  type: dict
  sample: {"app": [{"name": "DATABASE_URL", "value": "postgresql://app:secret@db:5432/app"},
                   {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "app", "key": "api-key"}}}]}
env_from:
  description: With O(return_env), each container's C(envFrom) list (whole Secrets or ConfigMaps).
  returned: with O(action=status) and O(return_env)
  type: dict
  sample: {"app": [{"secretRef": {"name": "app-env"}}]}
copied_to:
  description: Name and namespace of the copy.
  returned: with O(action=copy) and O(action=delete_copy)
  type: dict
  sample: {"name": "liquid-abt-app-dr-drill", "namespace": "liquid-abt-production"}
definition:
  description: The Deployment created (or, in check mode, that would be created) by O(action=copy); holds
    the copy's environment.
  returned: with O(action=copy) when the copy did not exist
  type: dict
msg:
  description: What happened, in kubectl's words (C(rolled back), C(skipped rollback (...))).
  returned: always
  type: str
  sample: deployment.apps/liquid-abt-app rolled back
"""

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import (  # noqa: E402
    K8S_REQUIRED_TOGETHER,
    K8sConnectionError,
    auth_plan,
    check_kubernetes,
    connect,
    default_kubeconfig_paths,
    failure_message,
    hint_for,
    k8s_argument_spec,
)
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_rollback import (  # noqa: E402
    KINDS,
    ClientError,
    RollbackError,
    Rollout,
    exec_failure_message,
    kubeconfig_user,
    resource_path,
    revision_not_found,
)

try:
    import urllib3
    import yaml
    from kubernetes.client.exceptions import ApiException
except ImportError:
    HAS_LIBS = False
    LIBS_ERROR = traceback.format_exc()
else:
    HAS_LIBS = True
    LIBS_ERROR = None

_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

PATCH_TYPES = {
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
}


class ApiClientWrapper:
    """The client the core expects, over kubernetes.client.ApiClient (raw JSON, no models)."""

    def __init__(self, api, timeout: float = 30, page_size: int = 500):
        self.api = api
        self.timeout = timeout
        self.page_size = page_size

    def _call(self, method: str, path: str, query=None, body=None, content_type: str | None = None):
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            if hasattr(self.api, "param_serialize"):  # kubernetes >= 31 (openapi-generator 7)
                method, url, headers, body, _post = self.api.param_serialize(
                    method,
                    path,
                    query_params=list((query or {}).items()),
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                )
                resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.timeout)
                resp.read()
                if not 200 <= resp.status <= 299:
                    raise ApiException(status=resp.status, reason=resp.reason, body=resp.data.decode(errors="replace"))
            else:
                resp = self.api.call_api(
                    path,
                    method,
                    query_params=list((query or {}).items()),
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _return_http_data_only=True,
                    _request_timeout=self.timeout,
                )
        except ApiException as exc:
            detail = exc.reason or ""
            try:
                detail = json.loads(exc.body).get("message") or detail
            except (TypeError, ValueError, AttributeError):
                pass
            raise ClientError(exc.status or 0, f"({exc.status}) {detail}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClientError(0, f"cannot reach the API server: {exc}") from exc
        return json.loads(resp.data or b"null")

    def version(self) -> dict:
        return self._call("GET", "/version")

    def get(self, kind, namespace, name):
        return self._call("GET", resource_path(kind, namespace, name))

    def list(self, kind, namespace, label_selector):
        items, token = [], None
        while True:
            query = {"labelSelector": label_selector, "limit": self.page_size}
            if token:
                query["continue"] = token
            page = self._call("GET", resource_path(kind, namespace), query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def patch(self, kind, namespace, name, body, patch_type):
        return self._call(
            "PATCH", resource_path(kind, namespace, name), body=body, content_type=PATCH_TYPES[patch_type]
        )

    def create(self, kind, namespace, body):
        return self._call("POST", resource_path(kind, namespace), body=body, content_type="application/json")

    def delete(self, kind, namespace, name):
        # DeleteOptions as a query parameter (the API server accepts both; no body to drain)
        return self._call("DELETE", resource_path(kind, namespace, name), {"propagationPolicy": "Background"})


def _exec_plugin_failure(module, api) -> str | None:
    """The error of a kubeconfig exec credential plugin that left the client without a token."""
    params = module.params
    if params.get("api_key") or params.get("host") and not (params.get("kubeconfig") or params.get("context")):
        return None
    cfg = api.configuration
    # kubernetes < 31 stores the token under "authorization", newer ones under "BearerToken"
    if any((cfg.api_key or {}).values()) or cfg.cert_file:
        return None
    env = dict(os.environ)
    try:
        plan = auth_plan(params, env, any(os.path.exists(x) for x in default_kubeconfig_paths(env)))
    except K8sConnectionError:
        return None
    if plan["source"] != "kubeconfig":
        return None
    paths = [params["kubeconfig"]] if params.get("kubeconfig") else default_kubeconfig_paths(env)
    configs = []
    for path in paths:
        try:
            with open(path) as fh:  # kubeconfig is type=path; the default paths are expanded
                configs.append(yaml.safe_load(fh))
        except (OSError, yaml.YAMLError):
            continue
    user_name, user = kubeconfig_user(configs, params.get("context"))
    exec_cfg = user.get("exec")
    if not exec_cfg:
        return None
    command = str(exec_cfg.get("command") or "")
    if not shutil.which(command):
        error = f"{command}: command not found on PATH ({env.get('PATH', '')})"
    else:
        extra = {e["name"]: e["value"] for e in exec_cfg.get("env") or [] if "name" in e}
        rc, out, err = module.run_command(
            [command] + [str(a) for a in exec_cfg.get("args") or []], environ_update=extra
        )
        # stderr only: stdout may hold a credential
        error = (
            f"exit status {rc}: {err.strip() or '(no error output)'}"
            if rc
            else "it ran but returned no usable token (its output is not shown: it may hold a credential)"
        )
    return exec_failure_message(user_name, exec_cfg, error)


def main():
    spec = k8s_argument_spec()
    spec.update(
        kind={"type": "str", "choices": list(KINDS), "default": "Deployment"},
        name={"type": "str", "required": True},
        namespace={"type": "str", "default": "default"},
        action={
            "type": "str",
            "choices": ["undo", "status", "set", "restart", "copy", "delete_copy"],
            "default": "undo",
        },
        to_revision={"type": "int", "default": 0},
        wait={"type": "bool", "default": True},
        wait_timeout={"type": "int", "default": 300},
        images={"type": "dict"},
        env={"type": "dict"},
        container={"type": "str"},
        replicas={"type": "int"},
        copy_name={"type": "str"},
        copy_namespace={"type": "str"},
        copy_labels={"type": "dict"},
        return_env={"type": "bool", "default": False},
    )
    module = AnsibleModule(
        argument_spec=spec,
        supports_check_mode=True,
        required_together=K8S_REQUIRED_TOGETHER,
        required_if=[
            ("action", "set", ("images", "env", "replicas"), True),
            ("action", "copy", ("copy_name", "copy_labels")),
            ("action", "delete_copy", ("copy_name",)),
        ],
    )
    p = module.params
    result = {
        "changed": False,
        "skipped": False,
        "kind": p["kind"],
        "name": p["name"],
        "namespace": p["namespace"],
        "duration_s": 0.0,
    }
    if p["to_revision"] < 0:
        module.fail_json(
            msg=f"{revision_not_found(p['to_revision'])}: to_revision must be 0 (the previous "
            "revision) or a revision number from `kubectl rollout history`",
            **result,
        )
    if p["wait_timeout"] <= 0:
        module.fail_json(msg=f"wait_timeout must be a positive number of seconds, got {p['wait_timeout']}", **result)
    if p["replicas"] is not None and p["replicas"] < 0:
        module.fail_json(msg=f"replicas must be 0 or more, got {p['replicas']}", **result)
    if p["action"] not in ("set", "copy") and any(p[k] is not None for k in ("images", "env", "container", "replicas")):
        module.fail_json(msg="images, env, container and replicas only apply to action=set and action=copy", **result)
    if p["action"] not in ("copy", "delete_copy") and any(
        p[k] is not None for k in ("copy_name", "copy_namespace", "copy_labels")
    ):
        module.fail_json(
            msg="copy_name, copy_namespace and copy_labels only apply to action=copy and delete_copy", **result
        )
    if p["return_env"] and p["action"] != "status":
        module.fail_json(msg="return_env only applies to action=status", **result)
    if p["action"] in ("copy", "delete_copy") and p["kind"] != "Deployment":
        module.fail_json(msg=f"action={p['action']} works on a Deployment only, not a {p['kind']}", **result)
    for key, name_ok in (("copy_name", p["copy_name"]), ("copy_namespace", p["copy_namespace"])):
        if name_ok is not None and not _DNS_NAME.match(name_ok):
            module.fail_json(
                msg=f"{key} must be a Kubernetes name (lower-case letters, digits, '-'; at most 63), got {name_ok!r}",
                **result,
            )
    bad_labels = [
        f"{k}={v}"
        for k, v in (p["copy_labels"] or {}).items()
        if not isinstance(v, str) or not _LABEL_VALUE.match(v) or not _LABEL_KEY.match(str(k))
    ]
    if bad_labels:
        module.fail_json(
            msg=f"copy_labels must be valid Kubernetes labels (string values of at most 63 characters); check "
            f"{', '.join(sorted(bad_labels))}",
            **result,
        )
    for key in ("images", "env"):
        bad = [
            k
            for k, v in (p[key] or {}).items()
            if not isinstance(v, (str, int, float)) or isinstance(v, bool) or v == ""
        ]
        if bad:
            module.fail_json(msg=f"{key} values must be non-empty strings; check {', '.join(sorted(bad))}", **result)
    check_kubernetes(module)
    if not HAS_LIBS:
        module.fail_json(msg="the kubernetes and PyYAML Python libraries are required", exception=LIBS_ERROR, **result)

    try:
        api = connect(p, verify=False)
    except K8sConnectionError as exc:
        module.fail_json(msg=str(exc), **result)
    exec_error = _exec_plugin_failure(module, api)
    if exec_error:
        module.fail_json(msg=exec_error, **result)
    client = ApiClientWrapper(api)
    try:
        client.version()
    except ClientError as exc:
        env = dict(os.environ)
        exists = any(os.path.exists(x) for x in default_kubeconfig_paths(env))
        module.fail_json(msg=failure_message(auth_plan(p, env, exists), exc.message), **result)

    rollout = Rollout(client, p["kind"], p["namespace"], p["name"], check_mode=module.check_mode)
    try:
        if p["action"] == "undo":
            out = rollout.undo(p["to_revision"], p["wait"], p["wait_timeout"])
        elif p["action"] == "status":
            out = rollout.status(p["wait"], p["wait_timeout"], return_env=p["return_env"])
        elif p["action"] == "set":
            out = rollout.set(p["images"], p["env"], p["container"], p["replicas"], p["wait"], p["wait_timeout"])
        elif p["action"] == "copy":
            out = rollout.copy(
                p["copy_name"],
                p["copy_namespace"],
                {str(k): v for k, v in p["copy_labels"].items()},
                p["images"],
                p["env"],
                p["container"],
                p["replicas"],
                p["wait"],
                p["wait_timeout"],
            )
        elif p["action"] == "delete_copy":
            out = rollout.delete_copy(p["copy_name"], p["copy_namespace"], p["wait"], p["wait_timeout"])
        else:
            out = rollout.restart(p["wait"], p["wait_timeout"])
    except RollbackError as exc:
        out = dict(exc.result)
        out.pop("msg", None)
        diff = out.pop("diff", None)
        msg = exc.msg
        if " (401)" in msg or " (403)" in msg:
            msg = f"{msg}; {hint_for(msg)}"
        if diff is not None and module._diff:
            out["diff"] = diff
        out.setdefault("duration_s", 0.0)
        module.fail_json(msg=msg, **out)
    diff = out.pop("diff", None)
    if module._diff and diff is not None:
        out["diff"] = diff
    module.exit_json(**out)


if __name__ == "__main__":
    main()
