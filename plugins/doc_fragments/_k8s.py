# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Kubernetes API connection options; matches k8s_argument_spec() in
plugins/module_utils/_k8s_client.py."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file, for example the one C(aws eks update-kubeconfig) writes.
      - If not set, the E(K8S_AUTH_KUBECONFIG) environment variable is used.
      - When neither this, O(context) nor O(host) is set, the module uses the pod's service
        account when it runs inside Kubernetes, and otherwise the default kubeconfig
        (E(KUBECONFIG) or C(~/.kube/config)), like C(kubectl).
    type: path
  context:
    description:
      - Context of the kubeconfig to use; defaults to its C(current-context).
      - If not set, the E(K8S_AUTH_CONTEXT) environment variable is used.
    type: str
  host:
    description:
      - URL of the API server, for example V(https://ABCDEF.gr7.ap-southeast-2.eks.amazonaws.com).
      - Without O(kubeconfig) or O(context), only the options given here are used; with them,
        this replaces the server of the kubeconfig.
      - If not set, the E(K8S_AUTH_HOST) environment variable is used.
    type: str
  api_key:
    description:
      - Bearer token to authenticate with (a service account token).
      - If not set, the E(K8S_AUTH_API_KEY) environment variable is used.
      - Never shown in output or error messages.
    type: str
  validate_certs:
    description:
      - Whether to verify the API server's certificate. When not set, the kubeconfig's setting
        applies (verify, unless it says C(insecure-skip-tls-verify)).
      - If not set, the E(K8S_AUTH_VERIFY_SSL) environment variable is used.
    type: bool
  ca_cert:
    description:
      - CA certificate file used to verify the API server.
      - If not set, the E(K8S_AUTH_SSL_CA_CERT) environment variable is used.
    type: path
  client_cert:
    description:
      - Client certificate file to authenticate with. Requires O(client_key).
      - If not set, the E(K8S_AUTH_CERT_FILE) environment variable is used.
    type: path
  client_key:
    description:
      - Private key file of O(client_cert).
      - If not set, the E(K8S_AUTH_KEY_FILE) environment variable is used.
    type: path
notes:
  - Talks to the API server with the L(kubernetes Python client,https://github.com/kubernetes-client/python),
    which also runs kubeconfig C(exec) credential plugins such as C(aws eks get-token).
  - Connection errors say which credentials were tried and what to check; they never contain
    the token.
requirements:
  - kubernetes >= 24.2 (C(pip install kubernetes)) on the host that runs the module
"""
