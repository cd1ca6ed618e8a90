# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Redis connection options; matches redis_argument_spec() in
plugins/module_utils/_redis_client.py."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the Redis server; for a cluster, any one of its nodes (or
        the ElastiCache configuration endpoint).
      - If not set, the E(REDIS_HOST) environment variable is used.
    type: str
    default: localhost
  login_port:
    description:
      - TCP port of the server.
      - If not set, the E(REDIS_PORT) environment variable is used.
    type: int
    default: 6379
  login_user:
    description:
      - ACL user name (Redis 6+). Leave unset for the C(default) user and C(requirepass).
    type: str
  login_password:
    description:
      - Password (C(requirepass), ACL password or ElastiCache AUTH token).
      - If not set, the E(REDIS_PASSWORD) environment variable is used.
      - Never shown in output or error messages.
    type: str
  db:
    description:
      - Database number. A Redis Cluster only has database V(0).
    type: int
    default: 0
  tls:
    description:
      - Connect with TLS (ElastiCache with in-transit encryption, C(rediss://)).
      - Setting O(tls_ca_certs), O(tls_certfile) or O(tls_keyfile) turns TLS on as well.
    type: bool
    default: false
  tls_ca_certs:
    description:
      - CA bundle used to verify the server certificate. Without it the system CA store is used.
    type: path
  tls_certfile:
    description:
      - Client certificate file, for servers that require client certificates.
    type: path
  tls_keyfile:
    description:
      - Private key file of O(tls_certfile).
    type: path
  url:
    description:
      - A complete Redis URL, V(redis://[[user]:password@]host:port/db) or V(rediss://...) for
        TLS, for example the application's E(REDIS_URL).
      - If not set, the E(REDIS_URL) environment variable is used, so unset that variable
        when you mean to use O(login_host).
      - When set, it replaces O(login_host), O(login_port), O(login_user), O(login_password),
        O(db) and O(tls).
      - Never shown in output or error messages.
    type: str
  cluster:
    description:
      - Whether the server is a Redis Cluster (ElastiCache cluster mode enabled).
      - V(auto) connects once and asks C(INFO cluster); C(cluster_enabled:1) switches to a
        cluster client that follows the slot map across all masters.
      - V(true) or V(false) skip the detection. Accepts a YAML boolean or one of the strings
        V(auto), V(true), V(false), V(yes), V(no).
    type: raw
    default: auto
  socket_timeout:
    description:
      - Seconds to wait for the connection and for each reply.
    type: float
    default: 10.0
notes:
  - Connects with L(redis-py,https://redis.readthedocs.io/) and names its connections
    C(ops.runbooks) (visible in C(CLIENT LIST)).
  - Connection errors name the host and port tried and what to check; they never contain the
    password.
requirements:
  - redis (redis-py) >= 4.1 (C(pip install redis)) on the host that runs the module
"""
