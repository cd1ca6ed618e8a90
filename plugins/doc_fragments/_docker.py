# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Docker Engine connection options; matches docker_argument_spec() in
plugins/module_utils/_docker_client.py."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker daemon to talk to, as the C(docker) CLI's C(-H) value -
        V(unix:///var/run/docker.sock), V(tcp://host:2376) or V(ssh://user@host).
      - If not set, the E(DOCKER_HOST) environment variable is used.
    type: str
    default: unix:///var/run/docker.sock
  tls:
    description:
      - Use TLS to talk to a V(tcp://) O(docker_host), without verifying the daemon's
        certificate (see O(validate_certs)). Ignored for Unix sockets and SSH.
      - If not set, the E(DOCKER_TLS) environment variable is used.
    type: bool
    default: false
  validate_certs:
    description:
      - Use TLS and verify the daemon's certificate against O(ca_path) (implies O(tls)).
      - If not set, the E(DOCKER_TLS_VERIFY) environment variable is used.
    type: bool
    default: false
  ca_path:
    description:
      - CA certificate used to verify the daemon.
      - If not set and E(DOCKER_CERT_PATH) is, C($DOCKER_CERT_PATH/ca.pem) is used when it exists.
    type: path
  client_cert:
    description:
      - Client certificate presented to the daemon. Requires O(client_key).
      - If not set and E(DOCKER_CERT_PATH) is, C($DOCKER_CERT_PATH/cert.pem) is used when it exists.
    type: path
  client_key:
    description:
      - Private key of O(client_cert).
      - If not set and E(DOCKER_CERT_PATH) is, C($DOCKER_CERT_PATH/key.pem) is used when it exists.
    type: path
  timeout:
    description:
      - Seconds to wait for each answer of the Docker API.
      - If not set, the E(DOCKER_TIMEOUT) environment variable is used.
    type: int
    default: 60
notes:
  - Talks to the Docker Engine API with the L(Docker SDK for Python,https://docker-py.readthedocs.io/)
    and negotiates the API version with the daemon (Docker 20.10 and later).
  - Connection errors name the daemon address and what to check.
requirements:
  - docker (Docker SDK for Python) >= 7.0 (C(pip install docker)) on the host that runs the module
"""
