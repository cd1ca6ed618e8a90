# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""PostgreSQL connection options shared by the ops.runbooks modules.

Documented by the `ops.runbooks._postgres` doc fragment. A module does:

    spec = postgres_argument_spec()
    spec.update(my_options)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    check_psycopg(module)
    try:
        conn = connect(module.params)
    except PostgresConnectionError as exc:
        module.fail_json(msg=str(exc))

`connect_kwargs()` is pure (no psycopg, no module) so it is unit-tested directly.
"""

from __future__ import annotations

import re
import traceback
from urllib.parse import parse_qsl, unquote, urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import (
    connection_failure,
    first_hint,
)

try:
    import psycopg
except ImportError:
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR = None

APPLICATION_NAME = "ops.runbooks"
SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresConnectionError(Exception):
    """The server could not be reached or refused us; the message says what to check."""


def postgres_argument_spec() -> dict:
    """Connection options; keep in sync with plugins/doc_fragments/_postgres.py."""
    return {
        "login_host": {"type": "str", "fallback": (env_fallback, ["PGHOST"])},
        "login_port": {"type": "int", "default": 5432, "fallback": (env_fallback, ["PGPORT"])},
        "login_user": {"type": "str", "default": "postgres", "fallback": (env_fallback, ["PGUSER"])},
        "login_password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["PGPASSWORD"])},
        "login_db": {"type": "str", "fallback": (env_fallback, ["PGDATABASE"])},
        "login_unix_socket": {"type": "path"},
        "ssl_mode": {
            "type": "str",
            "default": "prefer",
            "choices": SSL_MODES,
            "fallback": (env_fallback, ["PGSSLMODE"]),
        },
        "ssl_rootcert": {"type": "path", "fallback": (env_fallback, ["PGSSLROOTCERT"])},
        "connect_timeout": {"type": "int", "default": 10},
        "dsn": {"type": "str", "no_log": True},
    }


def other_server_argument_spec(login_db: str | None = None) -> dict:
    """The connection options for a second server inside a dict option (backup_verify's
    restore_target, pg_dr's old_primary): the same options without the PG* environment
    fallbacks, because the first server's environment must never silently become the second's."""
    spec = postgres_argument_spec()
    for opt in spec.values():
        opt.pop("fallback", None)
    if login_db is not None:
        spec["login_db"]["default"] = login_db
    return spec


def check_psycopg(module) -> None:
    """Fail the module with install instructions when psycopg 3 is missing."""
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)


_CONNINFO_PAIR = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def parse_dsn(dsn: str) -> dict:
    """Parse a libpq DSN (URI or `key=value` form) into a dict of strings, best effort."""
    if re.match(r"postgres(?:ql)?://", dsn):
        parts = urlsplit(dsn)
        out = dict(parse_qsl(parts.query))
        if parts.hostname:
            out.setdefault("host", unquote(parts.hostname))
        try:
            port = parts.port
        except ValueError:
            port = None
        if port:
            out.setdefault("port", str(port))
        if parts.username:
            out.setdefault("user", unquote(parts.username))
        if parts.password:
            out.setdefault("password", unquote(parts.password))
        if parts.path.strip("/"):
            out.setdefault("dbname", unquote(parts.path.lstrip("/")))
        return out
    out = {}
    for key, value in _CONNINFO_PAIR.findall(dsn):
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key] = value
    return out


def connect_kwargs(params: dict) -> dict:
    """Keyword arguments for `psycopg.connect()` from the module parameters.

    `dsn` wins over the individual login_* options; `login_unix_socket` (a directory) wins
    over `login_host`. `connect_timeout` and `application_name` are added unless the DSN
    sets them. Options left unset are omitted so libpq applies its own defaults.
    """
    dsn = params.get("dsn")
    extra = {"connect_timeout": params.get("connect_timeout"), "application_name": APPLICATION_NAME}
    if dsn:
        in_dsn = parse_dsn(dsn)
        kwargs = {"conninfo": dsn}
        kwargs.update({k: v for k, v in extra.items() if v is not None and k not in in_dsn})
        return kwargs
    kwargs = {
        "host": params.get("login_unix_socket") or params.get("login_host"),
        "port": params.get("login_port"),
        "user": params.get("login_user"),
        "password": params.get("login_password"),
        "dbname": params.get("login_db"),
        "sslmode": params.get("ssl_mode"),
        "sslrootcert": params.get("ssl_rootcert"),
        **extra,
    }
    return {k: v for k, v in kwargs.items() if v not in (None, "")}


def describe_target(params: dict) -> str:
    """`user@host:port/db` for messages, never the password."""
    kw = connect_kwargs(params)
    if "conninfo" in kw:
        kw = parse_dsn(kw["conninfo"])
    host = kw.get("host") or "the default socket"
    port = kw.get("port") or 5432
    user = kw.get("user") or "(default user)"
    dbname = kw.get("dbname") or user
    return f"{user}@{host}:{port}/{dbname}"


def secrets_of(params: dict) -> list[str]:
    """Every secret string that must never appear in a message."""
    found = [params.get("login_password"), params.get("dsn")]
    if params.get("dsn"):
        found.append(parse_dsn(params["dsn"]).get("password"))
    return [s for s in found if s]


_HINTS = [
    (r"password authentication failed|no password supplied|authentication failed",
     "check login_user and login_password (or PGUSER/PGPASSWORD)"),
    (r"database \".*\" does not exist", "check login_db (or PGDATABASE); the database must exist"),
    (r"role \".*\" does not exist", "check login_user (or PGUSER); the role must exist"),
    (r"no pg_hba\.conf entry", "allow this client in the server's pg_hba.conf, or change ssl_mode"),
    (r"SSL|certificate|sslmode", "check ssl_mode and ssl_rootcert against the server's TLS setup"),
    (r"timeout expired|timed out",
     "the server did not answer within connect_timeout; check login_host/login_port, firewalls and "
     "security groups"),
    (r"Connection refused|could not connect|No such file or directory|could not translate host name|"
     r"Name or service not known",
     "check that PostgreSQL is running and listening there, and login_host/login_port or "
     "login_unix_socket (or PGHOST/PGPORT)"),
    (r"invalid dsn|invalid connection option|missing \"=\"|invalid URI",
     "fix the dsn option; see https://www.postgresql.org/docs/current/libpq-connect.html"),
]


_DEFAULT_HINT = "check the connection options (login_host, login_port, login_user, login_db, ssl_mode)"


def hint_for(reason: str) -> str:
    """What the user should do about a libpq error message."""
    return first_hint(_HINTS, reason, _DEFAULT_HINT)


def failure_message(params: dict, reason: str) -> str:
    return connection_failure(f"cannot connect to PostgreSQL as {describe_target(params)}", reason,
                              _HINTS, _DEFAULT_HINT, secrets_of(params))


def connect(params: dict, autocommit: bool = True):
    """Open a psycopg connection or raise PostgresConnectionError (password never included)."""
    if not HAS_PSYCOPG:
        raise PostgresConnectionError(missing_required_lib("psycopg"))
    try:
        return psycopg.connect(**connect_kwargs(params), autocommit=autocommit)
    except psycopg.Error as exc:
        msg = failure_message(params, str(exc))
    # Raised outside the except block: the library exception (which may quote the DSN)
    # must not ride along as __context__ into a traceback.
    raise PostgresConnectionError(msg)
