# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""PostgreSQL connection options; matches postgres_argument_spec() in
plugins/module_utils/_postgres_client.py."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server.
      - If not set, the E(PGHOST) environment variable is used; if that is not set either,
        libpq connects to its default Unix socket.
      - Ignored when O(login_unix_socket) or O(dsn) is set.
    type: str
  login_port:
    description:
      - TCP port of the server (also the suffix of the Unix socket file name).
      - If not set, the E(PGPORT) environment variable is used.
    type: int
    default: 5432
  login_user:
    description:
      - Role to connect as.
      - If not set, the E(PGUSER) environment variable is used.
    type: str
    default: postgres
  login_password:
    description:
      - Password of O(login_user).
      - If not set, the E(PGPASSWORD) environment variable is used; if that is not set either,
        libpq looks in C(~/.pgpass).
      - Never shown in output or error messages.
    type: str
  login_db:
    description:
      - Database to connect to.
      - If not set, the E(PGDATABASE) environment variable is used, then libpq's default (a
        database named like the user).
    type: str
  login_unix_socket:
    description:
      - Directory holding the server's Unix socket, for example V(/var/run/postgresql).
      - Takes precedence over O(login_host).
    type: path
  ssl_mode:
    description:
      - How to use TLS, as libpq's C(sslmode). Managed databases (RDS, DigitalOcean) usually
        need V(require) or stricter.
      - If not set, the E(PGSSLMODE) environment variable is used.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ssl_rootcert:
    description:
      - CA certificate file used to verify the server with O(ssl_mode=verify-ca) or
        O(ssl_mode=verify-full), for example the RDS CA bundle.
      - If not set, the E(PGSSLROOTCERT) environment variable is used.
    type: path
  connect_timeout:
    description:
      - Seconds to wait for the connection to be established before giving up.
    type: int
    default: 10
  dsn:
    description:
      - A complete libpq connection string, as a URI (V(postgresql://user:pass@host:5432/db?sslmode=require))
        or in C(key=value) form, for example the application's E(DATABASE_URL).
      - When set, it replaces O(login_host), O(login_port), O(login_user), O(login_password),
        O(login_db), O(login_unix_socket), O(ssl_mode) and O(ssl_rootcert). O(connect_timeout)
        still applies unless the DSN sets C(connect_timeout) itself.
      - Never shown in output or error messages.
    type: str
notes:
  - Connects with L(psycopg 3,https://www.psycopg.org/psycopg3/) and reports itself to the
    server with C(application_name=ops.runbooks), so its sessions are easy to spot in
    C(pg_stat_activity).
  - Connection errors name the user, host, port and database tried, and what to check; they
    never contain the password.
requirements:
  - psycopg >= 3.1 (C(pip install "psycopg[binary]")) on the host that runs the module
"""
