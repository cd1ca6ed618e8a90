# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Shared `attributes` documentation for ops.runbooks modules.

Use in a module:

    extends_documentation_fragment:
      - ops.runbooks._attributes
      - ops.runbooks._attributes.actiongroup_postgres

and give each attribute its `support` level (full, partial, none, N/A) in the module's own
`attributes:` block.
"""

from __future__ import annotations


class ModuleDocFragment:
    # check_mode, diff_mode, idempotent, platform
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run with C(--check). The module computes its plan with the same code as a real run and
        reports what a real run would change, without changing anything.
  diff_mode:
    description:
      - With C(--diff), returns the state before and after the change (or the predicted change in
        check mode).
  idempotent:
    description:
      - Running the module a second time with the same arguments reports no change, once the
        first run has reached the desired state.
  platform:
    description:
      - The systems the module runs on. It talks to its service over the network or a local
        socket, so it usually runs on the control node or a bastion (C(delegate_to)).
    support: full
    platforms: posix
"""

    ACTIONGROUP_POSTGRES = r"""
options: {}
attributes:
  action_group:
    description:
      - Set the connection options of all PostgreSQL modules at once with
        C(module_defaults) and C(group/ops.runbooks.postgres).
    support: full
    membership:
      - ops.runbooks.postgres
"""

    ACTIONGROUP_REDIS = r"""
options: {}
attributes:
  action_group:
    description:
      - Set the connection options of all Redis modules at once with
        C(module_defaults) and C(group/ops.runbooks.redis).
    support: full
    membership:
      - ops.runbooks.redis
"""

    ACTIONGROUP_DOCKER = r"""
options: {}
attributes:
  action_group:
    description:
      - Set the connection options of all Docker modules at once with
        C(module_defaults) and C(group/ops.runbooks.docker).
    support: full
    membership:
      - ops.runbooks.docker
"""

    ACTIONGROUP_K8S = r"""
options: {}
attributes:
  action_group:
    description:
      - Set the connection options of all Kubernetes modules at once with
        C(module_defaults) and C(group/ops.runbooks.k8s).
    support: full
    membership:
      - ops.runbooks.k8s
"""
