# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Docker Engine connection options shared by the ops.runbooks modules.

Documented by the `ops.runbooks._docker` doc fragment. A module does:

    spec = docker_argument_spec()
    spec.update(my_options)
    module = AnsibleModule(argument_spec=spec, required_together=DOCKER_REQUIRED_TOGETHER,
                           supports_check_mode=True)
    check_docker(module)
    try:
        client = connect(module.params)      # docker.DockerClient, already pinged
    except DockerConnectionError as exc:
        module.fail_json(msg=str(exc))

`client_kwargs()` and `failure_message()` are pure and unit-tested.
"""

from __future__ import annotations

import os
import re
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible.module_utils.errors import AnsibleFallbackNotFound
from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import (
    connection_failure,
    first_hint,
)

try:
    import docker
    from docker.tls import TLSConfig
except ImportError:
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DOCKER_REQUIRED_TOGETHER = [["client_cert", "client_key"]]


class DockerConnectionError(Exception):
    """The Docker daemon could not be reached; the message says what to check."""


def cert_path_fallback(filename: str) -> str:
    """Fallback: `$DOCKER_CERT_PATH/<filename>` when that variable is set and the file exists."""
    cert_dir = os.environ.get("DOCKER_CERT_PATH")
    if cert_dir:
        path = os.path.join(cert_dir, filename)
        if os.path.exists(path):
            return path
    raise AnsibleFallbackNotFound


def docker_argument_spec() -> dict:
    """Connection options; keep in sync with plugins/doc_fragments/_docker.py."""
    return {
        "docker_host": {
            "type": "str",
            "default": DEFAULT_DOCKER_HOST,
            "fallback": (env_fallback, ["DOCKER_HOST"]),
        },
        "tls": {"type": "bool", "default": False, "fallback": (env_fallback, ["DOCKER_TLS"])},
        "validate_certs": {"type": "bool", "default": False, "fallback": (env_fallback, ["DOCKER_TLS_VERIFY"])},
        "ca_path": {"type": "path", "fallback": (cert_path_fallback, ["ca.pem"])},
        "client_cert": {"type": "path", "fallback": (cert_path_fallback, ["cert.pem"])},
        "client_key": {"type": "path", "no_log": False, "fallback": (cert_path_fallback, ["key.pem"])},
        "timeout": {"type": "int", "default": 60, "fallback": (env_fallback, ["DOCKER_TIMEOUT"])},
    }


def check_docker(module) -> None:
    """Fail the module with install instructions when the Docker SDK for Python is missing."""
    if not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMPORT_ERROR)


def _is_tcp(host: str) -> bool:
    return bool(re.match(r"(tcp|https?)://", host or ""))


def client_kwargs(params: dict) -> dict:
    """Keyword arguments for `docker.DockerClient(...)`, with `tls` as a plain dict.

    TLS applies to tcp:// hosts only: `validate_certs` turns it on with verification, `tls`
    without. `connect()` turns the dict into a docker.tls.TLSConfig.
    """
    host = params.get("docker_host") or DEFAULT_DOCKER_HOST
    kwargs = {"base_url": host, "version": "auto", "timeout": params.get("timeout") or 60}
    if host.startswith("ssh://"):
        kwargs["use_ssh_client"] = True
    if _is_tcp(host) and (params.get("tls") or params.get("validate_certs")):
        cert, key = params.get("client_cert"), params.get("client_key")
        kwargs["tls"] = {
            "verify": bool(params.get("validate_certs")),
            "ca_cert": params.get("ca_path"),
            "client_cert": (cert, key) if cert and key else None,
        }
    return kwargs


_HINTS = [
    (r"Permission denied", "the user running the module cannot open the Docker socket; add it to the "
     "docker group or use become: true"),
    (r"SSL|certificate|TLS|wrong version number",
     "check tls, validate_certs, ca_path, client_cert and client_key (or DOCKER_TLS_VERIFY and "
     "DOCKER_CERT_PATH)"),
    (r"timed out|Timeout", "the daemon did not answer within timeout seconds; check docker_host and "
     "the daemon's load"),
    (r"No such file or directory|FileNotFoundError|Connection refused|Connection aborted|"
     r"Name or service not known|Temporary failure in name resolution",
     "check that dockerd is running and that docker_host (or DOCKER_HOST) points at its socket"),
]


_DEFAULT_HINT = "check docker_host (or DOCKER_HOST) and the TLS options"


def hint_for(reason: str) -> str:
    return first_hint(_HINTS, reason, _DEFAULT_HINT)


def failure_message(params: dict, reason: str) -> str:
    host = params.get("docker_host") or DEFAULT_DOCKER_HOST
    return connection_failure(f"cannot reach the Docker daemon at {host}", reason, _HINTS, _DEFAULT_HINT)


def connect(params: dict):
    """Return a pinged docker.DockerClient or raise DockerConnectionError."""
    if not HAS_DOCKER:
        raise DockerConnectionError(missing_required_lib("docker"))
    kwargs = client_kwargs(params)
    tls = kwargs.pop("tls", None)
    try:
        if tls:
            kwargs["tls"] = TLSConfig(**tls)
        client = docker.DockerClient(**kwargs)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as exc:
        msg = failure_message(params, str(exc) or type(exc).__name__)
    raise DockerConnectionError(msg)
