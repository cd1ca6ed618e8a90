# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Kubernetes API connection options shared by the ops.runbooks modules.

Documented by the `ops.runbooks._k8s` doc fragment. A module does:

    spec = k8s_argument_spec()
    spec.update(my_options)
    module = AnsibleModule(argument_spec=spec, required_together=K8S_REQUIRED_TOGETHER,
                           supports_check_mode=True)
    check_kubernetes(module)
    try:
        api = connect(module.params)          # kubernetes.client.ApiClient
    except K8sConnectionError as exc:
        module.fail_json(msg=str(exc))

Where the credentials come from is decided by the pure `auth_plan()`:
  1. `kubeconfig` or `context` given: that kubeconfig (default file when only a context);
  2. `host` given: only the explicit options;
  3. nothing given, inside a pod: the in-cluster service account;
  4. nothing given, outside a pod: the default kubeconfig ($KUBECONFIG or ~/.kube/config).
The explicit options (host, api_key, validate_certs, ca_cert, client_cert, client_key) are
applied on top of whatever was loaded.
"""

from __future__ import annotations

import os
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import (
    connection_failure,
    first_hint,
)

try:
    import kubernetes
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None

K8S_REQUIRED_TOGETHER = [["client_cert", "client_key"]]
# Configuration attribute for each explicit option.
_OVERRIDES = {
    "host": "host",
    "validate_certs": "verify_ssl",
    "ca_cert": "ssl_ca_cert",
    "client_cert": "cert_file",
    "client_key": "key_file",
}


class K8sConnectionError(Exception):
    """No usable credentials, or the API server could not be reached or refused us."""


def k8s_argument_spec() -> dict:
    """Connection options; keep in sync with plugins/doc_fragments/_k8s.py."""
    return {
        "kubeconfig": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_KUBECONFIG"])},
        "context": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_CONTEXT"])},
        "host": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_HOST"])},
        "api_key": {"type": "str", "no_log": True, "fallback": (env_fallback, ["K8S_AUTH_API_KEY"])},
        "validate_certs": {"type": "bool", "fallback": (env_fallback, ["K8S_AUTH_VERIFY_SSL"])},
        "ca_cert": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_SSL_CA_CERT"])},
        "client_cert": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_CERT_FILE"])},
        "client_key": {"type": "path", "no_log": False, "fallback": (env_fallback, ["K8S_AUTH_KEY_FILE"])},
    }


def check_kubernetes(module) -> None:
    """Fail the module with install instructions when the kubernetes client is missing."""
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMPORT_ERROR)


def default_kubeconfig_paths(env: dict) -> list[str]:
    """Where kubectl looks when no kubeconfig is given: $KUBECONFIG entries or ~/.kube/config."""
    if env.get("KUBECONFIG"):
        return [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


def auth_plan(params: dict, env: dict, default_kubeconfig_exists: bool) -> dict:
    """Decide where credentials come from (see the module docstring); pure.

    Returns {"source": "kubeconfig"|"explicit"|"in-cluster", "kubeconfig": path or None,
    "context": name or None, "overrides": {Configuration attribute: value}, "api_key": ...}.
    """
    overrides = {attr: params[opt] for opt, attr in _OVERRIDES.items() if params.get(opt) is not None}
    plan = {
        "source": None,
        "kubeconfig": params.get("kubeconfig"),
        "context": params.get("context"),
        "overrides": overrides,
        "api_key": params.get("api_key"),
    }
    if params.get("kubeconfig") or params.get("context"):
        plan["source"] = "kubeconfig"
    elif params.get("host"):
        plan["source"] = "explicit"
    elif env.get("KUBERNETES_SERVICE_HOST"):
        plan["source"] = "in-cluster"
    elif default_kubeconfig_exists:
        plan["source"] = "kubeconfig"
    else:
        raise K8sConnectionError(
            "no Kubernetes credentials found: set kubeconfig (and context), or host with api_key "
            "or client_cert/client_key (or K8S_AUTH_KUBECONFIG, K8S_AUTH_HOST...), or run inside "
            "a pod with a service account; for EKS, `aws eks update-kubeconfig --name CLUSTER` "
            "writes ~/.kube/config"
        )
    return plan


def describe_plan(plan: dict) -> str:
    if plan["source"] == "in-cluster":
        where = "the in-cluster service account"
    elif plan["source"] == "explicit":
        where = "explicit options"
    else:
        where = f"kubeconfig {plan['kubeconfig'] or '(default)'}"
        if plan.get("context"):
            where += f" context {plan['context']}"
    host = plan["overrides"].get("host")
    return f"{where}, API server {host}" if host else where


_HINTS = [
    (r"\b401\b|Unauthorized", "the API server rejected the credentials; check api_key or the "
     "kubeconfig user (for EKS: `aws eks get-token` works and the IAM identity is mapped)"),
    (r"\b403\b|Forbidden", "the credentials work but lack RBAC permission for this operation"),
    (r"context .* not found|Invalid kube-config|kube-config file|No configuration found|"
     r"Service host/port is not set|Service token file does not exist",
     "check kubeconfig and context (or K8S_AUTH_KUBECONFIG / K8S_AUTH_CONTEXT)"),
    (r"CERTIFICATE_VERIFY_FAILED|SSL|certificate", "check ca_cert, or validate_certs for a test cluster"),
    (r"Connection refused|Max retries exceeded|Name or service not known|timed out|"
     r"Temporary failure in name resolution|NewConnectionError",
     "check that the API server is reachable at the host in the kubeconfig (or host / K8S_AUTH_HOST)"),
]


_DEFAULT_HINT = "check kubeconfig, context, host and api_key"


def hint_for(reason: str) -> str:
    return first_hint(_HINTS, reason, _DEFAULT_HINT)


def failure_message(plan: dict, reason: str) -> str:
    return connection_failure(f"cannot use the Kubernetes API with {describe_plan(plan)}", reason,
                              _HINTS, _DEFAULT_HINT, [plan.get("api_key")])


def _configuration(plan: dict):
    cfg = kubernetes.client.Configuration()
    if plan["source"] == "in-cluster":
        kubernetes.config.load_incluster_config(client_configuration=cfg)
    elif plan["source"] == "kubeconfig":
        kubernetes.config.load_kube_config(
            config_file=plan["kubeconfig"], context=plan["context"], client_configuration=cfg,
            persist_config=False,
        )
    for attr, value in plan["overrides"].items():
        setattr(cfg, attr, value)
    if plan.get("api_key"):
        # Replace whatever the kubeconfig loaded, including its token-refresh hook, which
        # would otherwise put the kubeconfig's token back before each request.
        cfg.api_key = {"authorization": f"Bearer {plan['api_key']}"}
        cfg.api_key_prefix = {}
        cfg.refresh_api_key_hook = None
    return cfg


def connect(params: dict, verify: bool = True, env: dict | None = None):
    """Return a kubernetes.client.ApiClient; with `verify`, prove it works with GET /version."""
    if not HAS_KUBERNETES:
        raise K8sConnectionError(missing_required_lib("kubernetes"))
    env = dict(os.environ) if env is None else env
    exists = any(os.path.exists(p) for p in default_kubeconfig_paths(env))
    plan = auth_plan(params, env, exists)
    try:
        api = kubernetes.client.ApiClient(configuration=_configuration(plan))
        if verify:
            kubernetes.client.VersionApi(api).get_code(_request_timeout=30, _preload_content=False)
        return api
    except (ConfigException, ApiException, urllib3.exceptions.HTTPError, OSError, ValueError,
            TypeError) as exc:
        msg = failure_message(plan, str(exc) or type(exc).__name__)
    raise K8sConnectionError(msg)
