# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.pg_dr: the PostgreSQL steps of a disaster recovery.

Imports nothing from Ansible and no database driver. `run(opts, connect, check_mode,
connect_old)` takes:

* `connect()` - opens the connection named by the module's login options and returns a
  `Client` (or anything with `rows(sql, params)`, `one(sql, params)`, `run(sql, params)`,
  `close()`); it raises `ConnectFailed` with a one-line message (never a password).
* `connect_old()` - the same for `old_primary` (action=promote only).

Each action first reads the state, then decides (pure functions: `promote_guard`,
`fence_plan`, `rename_plan`, `drop_plan`, `comment_plan`, `space_verdict`), and only then
changes something, so check mode runs the same decisions as a real run. Failures raise
`PgDrError(msg, result)`; the module maps it to `fail_json`.

PostgreSQL facts this relies on (checked on 15 by the integration tests):
* `pg_promote()` on a standby whose replay is paused ends the pause (since 14) and replays
  the WAL already received before leaving recovery; on 13 the core resumes replay first.
* After promotion `pg_last_xact_replay_timestamp()` keeps the last replayed commit time,
  so the data loss can be measured again once the received WAL is replayed.
* The timeline of a freshly promoted server is in the name of its current WAL file (the
  checkpoint's `timeline_id` still shows the old one until the next checkpoint).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time

from ansible_collections.ops.runbooks.plugins.module_utils._backup_verify import SCRATCH_TAG
from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import (
    UTC_TZ,
    human_duration,
    human_size,
    iso,
    parse_duration,
    parse_iso,
    parse_size,
    quote_ident,
    utcnow,
)

ACTIONS = ("info", "promote", "fence", "rename", "drop", "comment", "space", "query")
DR_TAG = "ops.runbooks.pg_dr"
TAGS = (SCRATCH_TAG, DR_TAG)
MAX_IDENT_BYTES = 63
RENAME_ATTEMPTS = 5
RELOAD_WAIT_SECONDS = 10.0
OBJECT_IN_USE = "55006"


class PgDrError(Exception):
    """Something the user must fix; the message says what and what to do. Nothing was changed
    unless `result` says so."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.result = result or {}


class ConnectFailed(Exception):
    """A connection could not be opened; the message is safe to show (no secret)."""


# ---------------------------------------------------------------------------- small pure helpers

_UNREACHABLE = re.compile(
    r"Connection refused|timeout expired|timed out|could not translate host name|Name or service not known|"
    r"No route to host|Network is unreachable|Host is unreachable|No such file or directory|"
    r"the database system is shutting down|server closed the connection unexpectedly|Connection reset",
    re.IGNORECASE)


def is_unreachable(message: str) -> bool:
    """True when a connection error means nothing answers (as opposed to a server that answers
    but refuses the login: that one is alive)."""
    return bool(_UNREACHABLE.search(message or ""))


def parse_lsn(text) -> int | None:
    """`'16/B374D848'` -> byte position; None stays None."""
    if text is None:
        return None
    high, low = str(text).split("/", 1)
    return (int(high, 16) << 32) + int(low, 16)


def tagged(comment: str | None) -> bool:
    """The database comment marks it as made by an ops.runbooks DR or verification run."""
    return bool(comment) and any(comment.startswith(tag) for tag in TAGS)


def check_ident(option: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise PgDrError(f"{option} must be a non-empty database name")
    if "\x00" in value:
        raise PgDrError(f"{option} must not contain a NUL character")
    if len(value.encode("utf-8")) > MAX_IDENT_BYTES:
        raise PgDrError(f"{option} {value!r} is longer than {MAX_IDENT_BYTES} bytes; PostgreSQL would silently "
                        "truncate it, so use a shorter name")
    return value


def parse_time(option: str, value) -> _dt.datetime:
    try:
        moment = value if isinstance(value, _dt.datetime) else parse_iso(str(value).strip())
    except ValueError:
        raise PgDrError(f"{option} {value!r} is not an ISO 8601 time; use for example 2026-11-23T03:12:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC_TZ)
    return moment


def validate(params: dict) -> dict:
    """Checked options for `run()`: names, durations, sizes and times parsed, per-action
    requirements enforced. Raises PgDrError saying what is wrong and what to do."""
    opts = dict(params)
    action = params.get("action")
    if action not in ACTIONS:
        raise PgDrError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    need = {"rename": ("name", "new_name"), "drop": ("name",), "comment": ("name", "comment")}.get(action, ())
    for key in need:
        if params.get(key) is None:
            raise PgDrError(f"action={action} needs {key}")
    for key in ("name", "new_name"):
        if params.get(key) is not None:
            opts[key] = check_ident(key, params[key])
    if action == "rename" and opts["name"] == opts["new_name"]:
        raise PgDrError(f"name and new_name are both {opts['name']!r}; give the new name in new_name")
    if params.get("comment") is not None and "\x00" in params["comment"]:
        raise PgDrError("comment must not contain a NUL character")
    try:
        opts["max_data_loss"] = None if params.get("max_data_loss") is None else parse_duration(params["max_data_loss"])
    except ValueError as exc:
        raise PgDrError(f"max_data_loss: {exc}") from None
    try:
        opts["need"] = None if params.get("need") is None else parse_size(params["need"])
    except ValueError as exc:
        raise PgDrError(f"need: {exc}") from None
    opts["incident_time"] = (None if params.get("incident_time") is None
                             else parse_time("incident_time", params["incident_time"]))
    wait = params.get("wait_timeout", 60)
    if not isinstance(wait, int) or isinstance(wait, bool) or not 1 <= wait <= 3600:
        raise PgDrError(f"wait_timeout={wait!r} is out of range; use 1 to 3600 seconds")
    opts["wait_timeout"] = wait
    if params.get("path") and params.get("tablespace"):
        raise PgDrError("path and tablespace are mutually exclusive: give the directory, or the tablespace whose "
                        "directory to measure")
    if params.get("old_primary") is not None and action != "promote":
        raise PgDrError("old_primary only applies to action=promote")
    if action == "query":
        opts["queries"] = check_queries(params.get("queries"))
    elif params.get("queries"):
        raise PgDrError("queries only applies to action=query")
    return opts


def check_queries(queries) -> list[dict]:
    """[{name, sql, min_value?}] for action=query: unique names, SQL text, min_value a number."""
    if not queries or not isinstance(queries, list):
        raise PgDrError("action=query needs queries: a list of {name, sql, min_value (optional)}")
    out, seen = [], set()
    for index, item in enumerate(queries):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise PgDrError(f"queries[{index}] needs a name (a non-empty string)")
        name = item["name"]
        if name in seen:
            raise PgDrError(f"queries[{index}]: the name {name!r} is used twice; names must be unique")
        seen.add(name)
        sql = item.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise PgDrError(f"queries[{index}] ({name}) needs sql (a non-empty string)")
        unknown = sorted(set(item) - {"name", "sql", "min_value"})
        if unknown:
            raise PgDrError(f"queries[{index}] ({name}): unknown key(s) {', '.join(unknown)}; use name, sql, min_value")
        minimum = item.get("min_value")
        if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, (int, float))):
            raise PgDrError(f"queries[{index}] ({name}): min_value must be a number, got {minimum!r}")
        out.append({"name": name, "sql": sql, "min_value": minimum})
    return out


# ---------------------------------------------------------------------------- the client


class Client:
    """Rows as dicts from a DB-API connection in autocommit mode (psycopg 3 in the module)."""

    def __init__(self, conn, target: str = "the server"):
        self.conn = conn
        self.target = target

    def rows(self, sql: str, params=None) -> list[dict]:
        cur = self.conn.execute(sql, params)
        if cur.description is None:
            return []
        names = [d.name if hasattr(d, "name") else d[0] for d in cur.description]
        return [{names[i]: row[i] for i in range(len(names))} for row in cur.fetchall()]

    def one(self, sql: str, params=None) -> dict:
        rows = self.rows(sql, params)
        return rows[0] if rows else {}

    def run(self, sql: str, params=None) -> None:
        self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()


def one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def query_failure(action: str, target: str, exc) -> str:
    """Message for a statement PostgreSQL refused while running `action`."""
    text = one_line(exc)
    hint = "check the server log"
    if re.search(r"permission denied|must be superuser|must be owner|only superuser", text, re.I):
        hint = ("log in as a superuser (or the database owner for rename/drop/comment; for fence a role granted "
                "ALTER SYSTEM ON PARAMETER default_transaction_read_only and pg_signal_backend)")
    elif re.search(r"recovery is in progress|read-only transaction", text, re.I):
        hint = "this server is a standby or fenced (read-only); run the action on the primary"
    elif re.search(r"being accessed by other users", text, re.I):
        hint = "sessions keep connecting to it; stop the application first, then run again with terminate=true"
    return f"{action} on {target} failed: {text}; {hint}"


# ---------------------------------------------------------------------------- info

SERVER_SQL = """
SELECT /* ops.runbooks pg_dr:server */
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.current_setting('server_version') AS server_version,
       pg_catalog.current_setting('server_version_num')::int AS server_version_num,
       pg_catalog.current_setting('default_transaction_read_only') AS read_only,
       pg_catalog.current_database() AS current_database,
       current_user AS login_user,
       r.rolsuper AS superuser, r.rolcreatedb AS createdb
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = current_user
"""

STANDBY_SQL = """
SELECT /* ops.runbooks pg_dr:standby */
       pg_catalog.pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_catalog.pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_catalog.pg_last_xact_replay_timestamp() AS last_replay_at,
       pg_catalog.pg_is_wal_replay_paused() AS replay_paused,
       (SELECT status FROM pg_catalog.pg_stat_wal_receiver) AS receiver_status,
       (SELECT sender_host || ':' || sender_port FROM pg_catalog.pg_stat_wal_receiver) AS receiver_sender,
       pg_catalog.has_function_privilege('pg_catalog.pg_promote(boolean, integer)', 'EXECUTE') AS can_promote
"""

DATABASE_SQL = """
SELECT /* ops.runbooks pg_dr:database */
       d.datname AS name,
       pg_catalog.shobj_description(d.oid, 'pg_database') AS comment,
       CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT')
              OR pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
            THEN pg_catalog.pg_database_size(d.oid) END AS size_bytes,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity a
         WHERE a.datid = d.oid AND a.pid <> pg_catalog.pg_backend_pid())::int AS connections,
       pg_catalog.pg_has_role(d.datdba, 'MEMBER') AS owner
  FROM pg_catalog.pg_database d
 WHERE d.datname = %s
"""


def server_state(client) -> dict:
    return client.one(SERVER_SQL)


def standby_state(client) -> dict:
    """What a standby has received and replayed (lag_bytes = received, not yet replayed)."""
    row = client.one(STANDBY_SQL)
    receive, replay = parse_lsn(row.get("receive_lsn")), parse_lsn(row.get("replay_lsn"))
    lag = max(receive - replay, 0) if receive is not None and replay is not None else None
    return {
        "receive_lsn": row.get("receive_lsn"),
        "replay_lsn": row.get("replay_lsn"),
        "lag_bytes": lag,
        "last_replay_at": row.get("last_replay_at"),
        "replay_paused": bool(row.get("replay_paused")),
        "wal_receiver": {"status": row.get("receiver_status"), "sender": row.get("receiver_sender")},
        "can_promote": bool(row.get("can_promote", True)),
    }


def database_state(client, name: str) -> dict:
    row = client.one(DATABASE_SQL, (name,))
    if not row:
        return {"name": name, "exists": False, "size_bytes": None, "comment": None, "connections": 0,
                "tagged": False, "owned": False}
    return {"name": name, "exists": True, "size_bytes": row["size_bytes"], "comment": row["comment"],
            "connections": row["connections"], "tagged": tagged(row["comment"]), "owned": bool(row["owner"])}


def may_own(server: dict, db: dict, action: str, createdb: bool = False) -> None:
    """Refuse before changing anything when the login role may not run `action` on database `db`."""
    name = db["name"]
    if not db["owned"]:
        raise PgDrError(f"cannot {action} {name!r}: {server['login_user']} is neither its owner nor a superuser; "
                        "log in as the owner or a superuser (nothing was changed)")
    if createdb and not (server["superuser"] or server["createdb"]):
        raise PgDrError(f"cannot {action} {name!r}: renaming a database needs CREATEDB and {server['login_user']} does "
                        "not have it; ALTER ROLE ... CREATEDB or log in as a superuser (nothing was changed)")


def _jsonable(state: dict) -> dict:
    out = dict(state)
    if isinstance(out.get("last_replay_at"), _dt.datetime):
        out["last_replay_at"] = iso(out["last_replay_at"])
    return out


def info(client, opts: dict) -> dict:
    server = server_state(client)
    result = {"changed": False, "in_recovery": server["in_recovery"], "server_version": server["server_version"],
              "server_version_num": server["server_version_num"], "read_only": server["read_only"] == "on"}
    if server["in_recovery"]:
        result["standby"] = _jsonable(standby_state(client))
    else:
        result["current_lsn"] = client.one("SELECT pg_catalog.pg_current_wal_lsn()::text AS lsn")["lsn"]
    if opts.get("name"):
        result["database"] = database_state(client, opts["name"])
    return result


# ---------------------------------------------------------------------------- promote


def data_loss_seconds(last_replay_at: _dt.datetime | None, incident: _dt.datetime) -> float | None:
    """Incident time minus the last replayed commit, never below 0; None when unknown."""
    if last_replay_at is None:
        return None
    return round(max((incident - last_replay_at).total_seconds(), 0.0), 3)


def old_primary_state(connect_old, target: str) -> dict:
    """Probe the old primary: reachable?, in recovery?, fenced (read-only)?, its WAL position."""
    try:
        client = connect_old()
    except ConnectFailed as exc:
        return {"target": target, "reachable": False, "refused_login": not is_unreachable(str(exc)),
                "error": str(exc)}
    try:
        server = server_state(client)
        state = {"target": target, "reachable": True, "refused_login": False, "in_recovery": server["in_recovery"],
                 "read_only": server["read_only"] == "on", "lsn": None}
        if not server["in_recovery"]:
            state["lsn"] = client.one("SELECT pg_catalog.pg_current_wal_lsn()::text AS lsn")["lsn"]
        return state
    finally:
        client.close()


def promote_guard(measured: dict, old: dict | None, opts: dict) -> list[str]:
    """Reasons not to promote (empty list = go). `force` is applied by the caller."""
    reasons = []
    if old is not None:
        where = old["target"]
        if old["reachable"] and not old["in_recovery"] and not old["read_only"]:
            reasons.append(f"old primary at {where} is alive and accepts writes: fence it first (action=fence) or "
                           "stop it; promoting now would make two primaries")
        elif not old["reachable"] and old["refused_login"]:
            reasons.append(f"old primary at {where} answers but the login failed ({old['error']}), so it cannot be "
                           "checked: fix old_primary's credentials, or fence or stop it")
    receiver = measured.get("wal_receiver") or {}
    if receiver.get("status") == "streaming" and not (old is not None and old["reachable"]):
        sender = receiver.get("sender") or "its primary"
        reasons.append(f"the standby is still streaming WAL from {sender}: that primary is alive; fence it "
                       "(action=fence) and pass it as old_primary, or stop it, before promoting")
    limit = opts.get("max_data_loss")
    if limit is not None:
        loss = measured.get("data_loss_seconds")
        if loss is None:
            reasons.append("cannot measure the data loss: the standby has replayed no transaction since it started "
                           "(pg_last_xact_replay_timestamp() is null); check it by hand, then use force=true")
        elif loss > limit:
            reasons.append(f"data loss would be {human_duration(loss)} ({loss:.0f} s: last transaction replayed at "
                           f"{measured['last_replay_at']}, incident at {measured['incident_time']}), more than "
                           f"max_data_loss {human_duration(limit)}; recover the old primary or restore a backup "
                           "instead, or accept the loss with force=true")
    return reasons


def promote(client, opts: dict, check_mode: bool, connect_old=None, old_target: str = "old_primary",
            clock=time.monotonic, now=utcnow) -> dict:
    server = server_state(client)
    if not server["in_recovery"]:
        return {"changed": False, "promoted": False, "in_recovery": False,
                "server_version": server["server_version"],
                "msg": "the server is not in recovery (it is already a primary): nothing to promote"}
    incident = opts.get("incident_time") or now()
    state = standby_state(client)
    can_promote = state.pop("can_promote")
    measured = dict(state, incident_time=iso(incident),
                    data_loss_seconds=data_loss_seconds(state["last_replay_at"], incident))
    if isinstance(state["last_replay_at"], _dt.datetime):
        measured["last_replay_at"] = iso(state["last_replay_at"])
    result = {"changed": False, "promoted": False, "in_recovery": True, "server_version": server["server_version"],
              **measured, "max_data_loss_seconds": opts.get("max_data_loss"), "forced": [], "old_primary": None}
    old = old_primary_state(connect_old, old_target) if connect_old is not None else None
    if old is not None:
        result["old_primary"] = old
        if old.get("lsn") and state["receive_lsn"]:
            old["unreceived_bytes"] = max(parse_lsn(old["lsn"]) - parse_lsn(state["receive_lsn"]), 0)
    if not can_promote:
        raise PgDrError(f"cannot promote: {server['login_user']} may not execute pg_promote(); log in as a superuser "
                        "or GRANT EXECUTE ON FUNCTION pg_promote TO it (nothing was changed)", result)
    reasons = promote_guard(measured, old, opts)
    if reasons and not opts.get("force"):
        raise PgDrError("; ".join(reasons) + " (nothing was changed)", result)
    result["forced"] = reasons
    result["diff"] = {"before": {"in_recovery": True}, "after": {"in_recovery": False}}
    result.update(changed=True, promoted=True, in_recovery=False)  # predicted in check mode
    loss = measured["data_loss_seconds"]
    loss_text = "unknown" if loss is None else f"at most {human_duration(loss)}"
    details = (f"WAL received but not replayed {human_size(state['lag_bytes'] or 0)}, data loss {loss_text}"
               + (f"; forced past: {'; '.join(reasons)}" if reasons else ""))
    result["msg"] = f"would promote: {details}"
    if check_mode:
        return result

    if state["replay_paused"] and server["server_version_num"] < 140000:
        client.run("SELECT pg_catalog.pg_wal_replay_resume()")
        result["replay_resumed"] = True
    started = clock()
    done = client.one("SELECT pg_catalog.pg_promote(true, %s) AS done", (opts["wait_timeout"],))["done"]
    result["promote_seconds"] = round(clock() - started, 3)
    still = server_state(client)["in_recovery"]
    if not done or still:
        result.update(promoted=False, in_recovery=True)
        raise PgDrError(f"promotion was requested but the server is still in recovery after {opts['wait_timeout']} s "
                        "(wait_timeout); it may still finish: check its log, then run action=info or run this task "
                        "again", result)
    after = client.one("SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) AS walfile, "
                       "pg_catalog.pg_last_xact_replay_timestamp() AS final_replay_at, "
                       "pg_catalog.pg_current_wal_lsn()::text AS lsn")
    result["timeline"] = int(after["walfile"][:8], 16) if after.get("walfile") else None
    result["lsn"] = after.get("lsn")
    final = after.get("final_replay_at")
    result["final_replay_at"] = iso(final) if isinstance(final, _dt.datetime) else None
    result["final_data_loss_seconds"] = data_loss_seconds(final, incident)
    final_loss = result["final_data_loss_seconds"]
    result["msg"] = f"promoted in {result['promote_seconds']:.1f} s to timeline {result['timeline']}: {details}"
    if final_loss is not None:
        result["msg"] += f"; after replaying what it had received: {human_duration(final_loss)}"
    return result


# ---------------------------------------------------------------------------- fence

FENCE_STATE_SQL = """
SELECT /* ops.runbooks pg_dr:fence */
       (SELECT count(*) FROM pg_catalog.pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid())::int AS other_sessions,
       (SELECT count(*) FROM pg_catalog.pg_db_role_setting
         WHERE 'default_transaction_read_only=off' = ANY (setconfig))::int AS overrides
"""


def may_alter_system(client, server: dict) -> bool:
    if server["superuser"]:
        return True
    if server["server_version_num"] < 150000:  # parameter privileges are new in 15
        return False
    return bool(client.one("SELECT pg_catalog.has_parameter_privilege('default_transaction_read_only', 'ALTER SYSTEM') "
                           "AS ok")["ok"])


def fence_plan(read_only: bool, other_sessions: int) -> list[str]:
    actions = []
    if not read_only:
        actions.append("set_read_only")
    if other_sessions:
        actions.append("terminate_sessions")
    return actions


def fence(connect, opts: dict, check_mode: bool, target: str, sleep=time.sleep, clock=time.monotonic) -> dict:
    try:
        client = connect()
    except ConnectFailed as exc:
        if not is_unreachable(str(exc)):
            raise PgDrError(f"cannot fence {target}: it answers but the login failed: {exc}", {
                "reachable": True, "fenced": False}) from None
        return {"changed": False, "reachable": False, "fenced": False,
                "msg": f"{target} could not be reached, so it was not fenced ({exc}); make sure it stays down "
                       "(stopped, or cut off from clients) until it is rebuilt as a standby"}
    try:
        server = server_state(client)
        result = {"changed": False, "reachable": True, "in_recovery": server["in_recovery"], "fenced": False}
        if server["in_recovery"]:
            result["msg"] = f"{target} is in recovery (a standby): there is no primary to fence"
            return result
        counts = client.one(FENCE_STATE_SQL)
        read_only = server["read_only"] == "on"
        actions = fence_plan(read_only, counts["other_sessions"])
        result.update(fenced=True, actions=actions, client_sessions=counts["other_sessions"],
                      terminated=counts["other_sessions"], changed=bool(actions))
        result["diff"] = {"before": {"default_transaction_read_only": "on" if read_only else "off",
                                     "client_sessions": counts["other_sessions"]},
                          "after": {"default_transaction_read_only": "on", "client_sessions": 0}}
        if counts["overrides"]:
            result["warnings"] = [f"{counts['overrides']} ALTER ROLE/DATABASE setting(s) turn "
                                  "default_transaction_read_only off for some sessions; they can still write: "
                                  "stop the server to be sure"]
        if "set_read_only" in actions and not may_alter_system(client, server):
            raise PgDrError(f"cannot fence {target}: {server['login_user']} may not ALTER SYSTEM SET "
                            "default_transaction_read_only; log in as a superuser (or GRANT ALTER SYSTEM ON PARAMETER "
                            "default_transaction_read_only TO it), or stop the server (nothing was changed)", result)
        if check_mode or not actions:
            return result
        if "set_read_only" in actions:
            client.run("ALTER SYSTEM SET default_transaction_read_only = on")
            client.run("SELECT pg_catalog.pg_reload_conf()")
            deadline = clock() + RELOAD_WAIT_SECONDS
            while client.one("SELECT pg_catalog.current_setting('default_transaction_read_only') AS v")["v"] != "on":
                if clock() > deadline:
                    raise PgDrError(f"{target}: default_transaction_read_only is set in postgresql.auto.conf but the "
                                    f"reload did not apply it within {RELOAD_WAIT_SECONDS:.0f} s; check the server "
                                    "log for configuration errors, or stop the server", result)
                sleep(0.05)
        killed = client.rows("SELECT pid, pg_catalog.pg_terminate_backend(pid, 5000) AS ok "
                             "FROM pg_catalog.pg_stat_activity "
                             "WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()")
        result["terminated"] = sum(1 for row in killed if row["ok"])
        return result
    finally:
        client.close()


# ---------------------------------------------------------------------------- rename / drop / comment


def _not_connected_to(server: dict, name: str, action: str) -> None:
    if server["current_database"] == name:
        raise PgDrError(f"cannot {action} {name!r}: the module is connected to it; set login_db to another database "
                        "(postgres, say)")


def rename_plan(name: str, new_name: str, old: dict, new: dict, terminate: bool) -> list[str]:
    if not old["exists"] and new["exists"]:
        return []
    if not old["exists"]:
        raise PgDrError(f"neither {name!r} nor {new_name!r} exists; nothing to rename (check name)")
    if new["exists"]:
        raise PgDrError(f"cannot rename {name!r} to {new_name!r}: {new_name!r} already exists; pick another new_name "
                        "or drop it first (nothing was changed)")
    if old["connections"] and not terminate:
        raise PgDrError(f"{name!r} has {old['connections']} connected session(s); stop the application using it, or "
                        "set terminate=true to disconnect them (nothing was changed)")
    return (["terminate_sessions"] if old["connections"] else []) + ["rename"]


def rename(client, opts: dict, check_mode: bool, sleep=time.sleep) -> dict:
    name, new_name = opts["name"], opts["new_name"]
    server = server_state(client)
    _not_connected_to(server, name, "rename")
    old, new = database_state(client, name), database_state(client, new_name)
    actions = rename_plan(name, new_name, old, new, bool(opts.get("terminate")))
    if actions:
        may_own(server, old, "rename", createdb=True)
    result = {"changed": bool(actions), "renamed": bool(actions), "actions": actions, "name": name,
              "new_name": new_name, "terminated": old["connections"] if actions else 0}
    if not actions:
        result["msg"] = f"{name!r} does not exist and {new_name!r} does: already renamed"
        return result
    result["diff"] = {"before": {"database": name, "sessions": old["connections"]},
                      "after": {"database": new_name, "sessions": 0}}
    if check_mode:
        return result
    terminated = 0
    for attempt in range(RENAME_ATTEMPTS):
        if opts.get("terminate"):
            terminated += sum(1 for row in client.rows(
                "SELECT pg_catalog.pg_terminate_backend(pid, 5000) AS ok FROM pg_catalog.pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()", (name,)) if row["ok"])
        try:
            client.run(f"ALTER DATABASE {quote_ident(name)} RENAME TO {quote_ident(new_name)}")
            break
        except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except  # the driver's error type
            if getattr(exc, "sqlstate", None) != OBJECT_IN_USE:
                raise
            if not opts.get("terminate") or attempt == RENAME_ATTEMPTS - 1:
                now_connected = database_state(client, name)["connections"]
                result.update(changed=terminated > 0, renamed=False, terminated=terminated)
                raise PgDrError(f"cannot rename {name!r}: {now_connected} session(s) connected to it meanwhile; "
                                "stop the application that keeps reconnecting, then run again with terminate=true "
                                "(not renamed)", result) from None
            sleep(0.2)
    result["terminated"] = terminated
    return result


def drop_plan(name: str, db: dict, force: bool) -> list[str]:
    if not db["exists"]:
        return []
    if not db["tagged"] and not force:
        raise PgDrError(f"{name} does not carry the ops.runbooks tag: it was not created by a DR run; refusing to drop "
                        f"it; use force: true if you are sure (its comment: {db['comment']!r}; nothing was changed)")
    return ["drop"]


def drop(client, opts: dict, check_mode: bool) -> dict:
    name = opts["name"]
    server = server_state(client)
    _not_connected_to(server, name, "drop")
    db = database_state(client, name)
    actions = drop_plan(name, db, bool(opts.get("force")))
    if actions:
        may_own(server, db, "drop")
    result = {"changed": bool(actions), "dropped": bool(actions), "name": name, "database": db}
    if not actions:
        result["msg"] = f"{name!r} does not exist: nothing to drop"
        return result
    result["diff"] = {"before": {"database": name, "exists": True, "comment": db["comment"]},
                      "after": {"database": name, "exists": False}}
    if not check_mode:
        client.run(f"DROP DATABASE {quote_ident(name)} WITH (FORCE)")
    return result


def comment_plan(name: str, db: dict, wanted: str | None) -> list[str]:
    if not db["exists"]:
        raise PgDrError(f"database {name!r} does not exist; cannot set its comment (check name)")
    return [] if (db["comment"] or None) == (wanted or None) else ["comment"]


def comment(client, opts: dict, check_mode: bool) -> dict:
    name, wanted = opts["name"], opts["comment"]
    server = server_state(client)
    db = database_state(client, name)
    actions = comment_plan(name, db, wanted)
    if actions:
        may_own(server, db, "comment on")
    result = {"changed": bool(actions), "name": name, "comment": wanted or None, "previous_comment": db["comment"],
              "tagged": tagged(wanted)}
    if not actions:
        return result
    result["diff"] = {"before": {"comment": db["comment"]}, "after": {"comment": wanted or None}}
    if not check_mode:
        literal = "NULL"
        if wanted:
            literal = client.one("SELECT pg_catalog.quote_literal(%s::text) AS lit", (wanted,))["lit"]
        client.run(f"COMMENT ON DATABASE {quote_ident(name)} IS {literal}")
    return result


# ---------------------------------------------------------------------------- space

TABLESPACE_SQL = """
SELECT /* ops.runbooks pg_dr:tablespace */
       t.spcname AS name, pg_catalog.pg_tablespace_location(t.oid) AS location
  FROM pg_catalog.pg_tablespace t
 WHERE t.spcname = coalesce(%s, nullif(pg_catalog.current_setting('default_tablespace'), ''), 'pg_default')
"""


def tablespace_path(client, tablespace: str | None) -> tuple[str, str]:
    """(tablespace name, directory) of `tablespace` (default: the default tablespace)."""
    row = client.one(TABLESPACE_SQL, (tablespace,))
    if not row:
        raise PgDrError(f"tablespace {tablespace!r} does not exist; check tablespace, or give path instead")
    if row["location"]:
        return row["name"], row["location"]
    try:
        data_dir = client.one("SELECT pg_catalog.current_setting('data_directory') AS d")["d"]
    except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except  # the driver's error type
        raise PgDrError(f"cannot read data_directory to find tablespace {row['name']!r} ({one_line(exc)}): log in as a "
                        "superuser or a member of pg_read_all_settings, or give path instead") from None
    return row["name"], data_dir


def space_verdict(path: str, free: int, total: int, need: int | None, where: str) -> str | None:
    """The failure message when `need` does not fit, else None."""
    if need is None or free >= need:
        return None
    return (f"only {human_size(free)} free ({free} bytes) on {path}{where}, the restore needs {human_size(need)} "
            f"({need} bytes): free space on that filesystem, or restore into a tablespace on a bigger volume "
            "(tablespace=...), or lower need if the estimate is too high")


def space(connect, opts: dict, statvfs=os.statvfs, exists=os.path.exists, host: str = "this host") -> dict:
    tablespace = None
    path = opts.get("path")
    if not path:
        client = connect()
        try:
            tablespace, path = tablespace_path(client, opts.get("tablespace"))
        finally:
            client.close()
    if not exists(path):
        raise PgDrError(f"{path} does not exist on {host}: run this task on the database host (delegate_to: the "
                        "database server); for a managed database (RDS and the like) check its free storage through "
                        "the provider instead")
    stat = statvfs(path)
    free, total = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
    result = {"changed": False, "path": path, "tablespace": tablespace, "free_bytes": free, "total_bytes": total,
              "need_bytes": opts.get("need"), "enough": opts.get("need") is None or free >= opts["need"]}
    where = f" (tablespace {tablespace})" if tablespace else ""
    problem = space_verdict(path, free, total, opts.get("need"), where)
    if problem:
        raise PgDrError(problem, result)
    return result


# ---------------------------------------------------------------------------- query


def judge_query(item: dict, rows: list[dict] | None, error: str | None) -> dict:
    """One smoke query's verdict: it ran, returned a row, and its first value reaches min_value."""
    out = {"name": item["name"], "ok": False, "value": None, "rows": 0, "msg": ""}
    if error is not None:
        out["msg"] = f"failed: {error}"
        return out
    out["rows"] = len(rows)
    if not rows:
        out["msg"] = "returned no row"
        return out
    value = next(iter(rows[0].values()), None)
    out["value"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    minimum = item.get("min_value")
    if minimum is None:
        out.update(ok=True, msg=f"returned {out['value']!r}")
        return out
    try:
        number = float(value)
    except (TypeError, ValueError):
        out["msg"] = f"first value {value!r} is not a number, cannot compare with min_value {minimum}"
        return out
    out["ok"] = number >= minimum
    out["msg"] = f"{value} {'>=' if out['ok'] else '<'} min_value {minimum}"
    return out


def query(client, opts: dict) -> dict:
    """Run each smoke query in its own READ ONLY transaction (it cannot change anything), with a
    statement timeout; report every verdict; fail when one is not ok. Never changed."""
    results = []
    for item in opts["queries"]:
        rows, error = None, None
        try:
            client.run("BEGIN TRANSACTION READ ONLY")
            client.run(f"SET LOCAL statement_timeout = {int(opts['wait_timeout']) * 1000}")
            rows = client.rows(item["sql"])
        except Exception as exc:  # noqa: BLE001  (a smoke query's own error is its verdict)
            error = one_line(exc)
        finally:
            try:
                client.run("ROLLBACK")
            except Exception:  # noqa: BLE001,S110  (the connection is gone: the next query says so)
                pass
        results.append(judge_query(item, rows, error))
    bad = [r for r in results if not r["ok"]]
    result = {"changed": False, "queries": results, "failed_queries": len(bad)}
    if bad:
        raise PgDrError("smoke queries failed: " + "; ".join(f"{r['name']}: {r['msg']}" for r in bad), result)
    return result


# ---------------------------------------------------------------------------- dispatch


def run(opts: dict, connect, check_mode: bool, connect_old=None, target: str = "the server",
        old_target: str = "old_primary", host: str = "this host") -> dict:
    """Run `opts['action']`; returns the result dict (with `diff` when something changes)."""
    action = opts["action"]
    if action == "space":
        return space(connect, opts, host=host)
    if action == "fence":
        return fence(connect, opts, check_mode, target)
    client = connect()
    try:
        if action == "info":
            return info(client, opts)
        if action == "promote":
            return promote(client, opts, check_mode, connect_old, old_target)
        if action == "rename":
            return rename(client, opts, check_mode)
        if action == "drop":
            return drop(client, opts, check_mode)
        if action == "query":
            return query(client, opts)
        return comment(client, opts, check_mode)
    finally:
        client.close()
