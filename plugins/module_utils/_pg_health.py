# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""PostgreSQL health checks: the pure core of the `ops.runbooks.pg_health` module.

Imports nothing from Ansible and no database driver. `run()` takes a *runner*: an object
with `batch(statements) -> list of row lists` (one round trip for all the statements; rows
are dicts) and a `round_trips` counter. `DbapiRunner` wraps a psycopg 3 connection.

Two round trips in the normal case: one to learn what the server is (role, version,
privileges, pg_stat_statements), one batch with every check's query. If the batch fails
(a view not readable, an extension not loaded), each query is re-run alone so one broken
check degrades to status `unknown` with a note instead of failing the whole run.

Thresholds are compared with `>=`: a value at or above `critical` is critical, else at or
above `warning` is a warning. A threshold of None disables that level.
"""

from __future__ import annotations

# SQL is composed from constants, validated numbers and sql_literal() only; the batch
# protocol (several statements, one round trip) cannot carry bind parameters.
# ruff: noqa: S608
import re
import time

CHECKS = (
    "connectivity",
    "connections",
    "long_queries",
    "idle_in_transaction",
    "blocking_locks",
    "replication",
    "replication_slots",
    "wraparound",
    "vacuum",
    "database_size",
    "statements",
)

MIB = 1024 * 1024
GIB = 1024 * MIB

# metric -> defaults. Runbook 000: connections "< 80% of pool size"; 000/003/004: queries
# and idle sessions "> 5 minutes"; 004: slow statements "mean_time > 1000 -- > 1 second".
DEFAULT_THRESHOLDS = {
    "latency_ms": {"warning": 1000, "critical": 5000},
    "connections_percent": {"warning": 80, "critical": 95},
    "long_query_seconds": {"warning": 300, "critical": 900},
    "idle_in_transaction_seconds": {"warning": 300, "critical": 900},
    "blocking_lock_seconds": {"warning": 30, "critical": 300},
    "replication_lag_seconds": {"warning": 30, "critical": 300},
    "replication_lag_bytes": {"warning": 64 * MIB, "critical": GIB},
    "slot_retained_bytes": {"warning": GIB, "critical": 10 * GIB},
    "wraparound_percent": {"warning": 50, "critical": 75},
    "dead_tuple_percent": {"warning": 20, "critical": 50},
    "database_size_bytes": {"warning": None, "critical": None},
    "statement_mean_ms": {"warning": 1000, "critical": 10000},
}

# check -> the metric(s) that grade it
CHECK_METRICS = {
    "connectivity": ("latency_ms",),
    "connections": ("connections_percent",),
    "long_queries": ("long_query_seconds",),
    "idle_in_transaction": ("idle_in_transaction_seconds",),
    "blocking_locks": ("blocking_lock_seconds",),
    "replication": ("replication_lag_bytes", "replication_lag_seconds"),
    "replication_slots": ("slot_retained_bytes",),
    "wraparound": ("wraparound_percent",),
    "vacuum": ("dead_tuple_percent",),
    "database_size": ("database_size_bytes",),
    "statements": ("statement_mean_ms",),
}

STATUSES = ("ok", "warning", "critical")
FAIL_ON = ("critical", "warning", "never")
_RANK = {"ok": 0, "unknown": 1, "warning": 1, "critical": 2}
_PROBLEM_ORDER = {"critical": 0, "unknown": 1, "warning": 2}
WRAPAROUND_LIMIT = 2 ** 31
QUERY_CHARS = 300
DETAIL_ROWS = 20
STATEMENT_TIMEOUT_MS = 30000


class PgHealthError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- inputs

def validate_checks(checks) -> list[str]:
    """The requested checks in canonical order; all of them when `checks` is empty/None."""
    if not checks:
        return list(CHECKS)
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise PgHealthError(
            f"unknown check name(s): {', '.join(map(str, unknown))}; valid checks are: {', '.join(CHECKS)}")
    return [c for c in CHECKS if c in checks]


def _number(metric: str, level: str, value):
    if value is None:
        return None
    if isinstance(value, bool):
        raise PgHealthError(f"thresholds.{metric}.{level} must be a number or null, got a boolean ({value})")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if re.search(r"[.eE]", value) else int(value)
        except ValueError:
            pass
    raise PgHealthError(
        f"thresholds.{metric}.{level} must be a number or null, got {type(value).__name__} {value!r}")


def merge_thresholds(user=None) -> dict:
    """Defaults overlaid with the user's thresholds, validated.

    `user` maps a metric name to `{warning: N, critical: N}`; either key may be omitted (the
    default stays) or null (that level is disabled).
    """
    merged = {k: dict(v) for k, v in DEFAULT_THRESHOLDS.items()}
    if user is None:
        return merged
    if not isinstance(user, dict):
        raise PgHealthError(f"thresholds must be a dict of metric: {{warning, critical}}, got {type(user).__name__}")
    for metric, levels in user.items():
        if metric not in DEFAULT_THRESHOLDS:
            raise PgHealthError(
                f"unknown threshold {metric!r}; valid thresholds are: {', '.join(DEFAULT_THRESHOLDS)}")
        if not isinstance(levels, dict):
            raise PgHealthError(
                f"thresholds.{metric} must be a dict with warning and/or critical, got "
                f"{type(levels).__name__} {levels!r}; for example {metric}: {{warning: 1, critical: 2}}")
        extra = set(levels) - {"warning", "critical"}
        if extra:
            raise PgHealthError(
                f"thresholds.{metric} only takes warning and critical, not {', '.join(sorted(map(str, extra)))}")
        for level, value in levels.items():
            number = _number(metric, level, value)
            if number is not None and number < 0:
                raise PgHealthError(f"thresholds.{metric}.{level} must not be negative, got {number}")
            merged[metric][level] = number
        warn, crit = merged[metric]["warning"], merged[metric]["critical"]
        if warn is not None and crit is not None and warn > crit:
            raise PgHealthError(f"thresholds.{metric}: warning ({warn}) must not be above critical ({crit})")
    return merged


def sql_literal(text: str) -> str:
    """A standard-conforming SQL string literal."""
    if "\x00" in text:
        raise PgHealthError("database names must not contain NUL characters")
    return "'" + text.replace("'", "''") + "'"


def _scope(databases, column: str = "datname") -> str:
    if not databases:
        return ""
    return f" AND {column} = ANY(ARRAY[{', '.join(sql_literal(d) for d in databases)}]::text[])"


# --------------------------------------------------------------------------- grading

def grade(value, threshold: dict) -> str:
    if value is None:
        return "ok"
    crit, warn = threshold.get("critical"), threshold.get("warning")
    if crit is not None and value >= crit:
        return "critical"
    if warn is not None and value >= warn:
        return "warning"
    return "ok"


def worst(statuses) -> str:
    out = "ok"
    for status in statuses:
        if _RANK[status] > _RANK[out] or (status == "warning" and out == "unknown"):
            out = status
    return "warning" if out == "unknown" else out


def human_bytes(num) -> str:
    if num is None:
        return "unknown"
    value = float(num)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def _secs(value) -> str:
    return "unknown" if value is None else f"{value:.0f} s"


def _at(threshold: dict, level: str, fmt=str) -> str:
    value = threshold.get(level)
    return f"{level} at {fmt(value)}" if value is not None else ""


def _limit_text(status: str, threshold: dict, fmt=str) -> str:
    text = _at(threshold, status, fmt)
    return f" ({text})" if text else ""


def _check(status, value, unit, threshold, details=None, summary="", note=None, problems=None) -> dict:
    out = {"status": status, "value": value, "unit": unit, "threshold": threshold,
           "details": details or [], "summary": summary, "problems": problems or []}
    if note:
        out["note"] = note
    return out


# --------------------------------------------------------------------------- SQL

def _marked(name: str, sql: str) -> str:
    """Every statement starts with a marker: visible in pg_stat_activity, used by unit fakes."""
    return f"/* ops.runbooks pg_health:{name} */ {sql}"


def identity_statements() -> list[str]:
    return [
        f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}",
        _marked("identity", """SELECT now()::text AS now, current_setting('server_version') AS server_version,
  current_setting('server_version_num')::int AS server_version_num,
  pg_is_in_recovery() AS in_recovery, current_user AS user, current_database() AS database,
  (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
  pg_has_role(current_user, 'pg_monitor', 'USAGE') AS pg_monitor,
  pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS pg_read_all_stats,
  current_setting('max_connections')::int AS max_connections,
  (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS shared_preload_libraries,
  (SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_stat_statements') AS statements_schema"""),
    ]


def _activity(name: str, where: str, since: str, databases) -> str:
    return _marked(name, f"""SELECT pid, datname, usename, application_name, client_addr::text AS client_addr,
  state, wait_event_type, wait_event,
  extract(epoch FROM now() - {since})::float8 AS seconds,
  extract(epoch FROM now() - xact_start)::float8 AS xact_seconds,
  left(query, {QUERY_CHARS}) AS query
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND {where}{_scope(databases)}
ORDER BY {since} ASC NULLS LAST LIMIT {DETAIL_ROWS}""")


def check_statements(check: str, ident: dict, options: dict) -> str | None:
    """The SQL for one check on this server, or None when it needs no query."""
    dbs = options.get("databases")
    primary = not ident["in_recovery"]
    version = ident["server_version_num"]
    if check == "connectivity":
        return None
    if check == "connections":
        return _marked(check, """SELECT coalesce(datname, '') AS datname, coalesce(state, 'unknown') AS state,
  count(*)::int AS count
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1, 2 ORDER BY 3 DESC""")
    if check == "long_queries":
        return _activity(check, "state = 'active'", "query_start", dbs)
    if check == "idle_in_transaction":
        return _activity(check, "state LIKE 'idle in transaction%'", "state_change", dbs)
    if check == "blocking_locks":
        wait = "now() - a.query_start"
        if version >= 140000:
            wait = ("coalesce((SELECT now() - min(l.waitstart) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),"
                    " now() - a.query_start)")
        return _marked(check, f"""SELECT a.pid, a.datname, a.usename, a.application_name, a.wait_event_type,
  a.wait_event, pg_blocking_pids(a.pid) AS blocked_by,
  extract(epoch FROM {wait})::float8 AS seconds, left(a.query, {QUERY_CHARS}) AS query,
  (SELECT json_agg(json_build_object('pid', b.pid, 'usename', b.usename, 'application_name', b.application_name,
     'state', b.state, 'query', left(b.query, {QUERY_CHARS})))
   FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))) AS blockers
FROM pg_stat_activity a
WHERE a.wait_event_type = 'Lock' AND cardinality(pg_blocking_pids(a.pid)) > 0{_scope(dbs, 'a.datname')}
ORDER BY seconds DESC NULLS LAST LIMIT {DETAIL_ROWS}""")
    if check == "replication" and primary:
        lag = "pg_wal_lsn_diff(pg_current_wal_lsn(), {0})::bigint"
        return _marked(check, f"""SELECT application_name, client_addr::text AS client_addr, state, sync_state,
  sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn,
  {lag.format('sent_lsn')} AS sent_lag_bytes, {lag.format('write_lsn')} AS write_lag_bytes,
  {lag.format('flush_lsn')} AS flush_lag_bytes, {lag.format('replay_lsn')} AS replay_lag_bytes,
  extract(epoch FROM write_lag)::float8 AS write_lag_seconds,
  extract(epoch FROM flush_lag)::float8 AS flush_lag_seconds,
  extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds
FROM pg_stat_replication ORDER BY application_name, client_addr""")
    if check == "replication":
        return _marked(check, """SELECT pg_last_wal_receive_lsn()::text AS receive_lsn,
  pg_last_wal_replay_lsn()::text AS replay_lsn,
  pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint AS replay_lag_bytes,
  extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS last_replay_age_seconds,
  pg_is_wal_replay_paused() AS replay_paused,
  (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
  (SELECT pid FROM pg_stat_wal_receiver) AS receiver_pid,
  (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver)
    AS last_message_age_seconds""")
    if check == "replication_slots":
        current = "pg_current_wal_lsn()" if primary else "pg_last_wal_replay_lsn()"
        safe = "safe_wal_size::bigint AS safe_wal_size" if version >= 130000 else "NULL::bigint AS safe_wal_size"
        status = "wal_status" if version >= 130000 else "NULL::text AS wal_status"
        return _marked(check, f"""SELECT slot_name, slot_type, database, active, active_pid, {status}, {safe},
  pg_wal_lsn_diff({current}, restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots ORDER BY retained_bytes DESC NULLS LAST, slot_name""")
    if check == "wraparound":
        return _marked(check, f"""SELECT datname, age(datfrozenxid)::bigint AS xid_age,
  mxid_age(datminmxid)::bigint AS mxid_age,
  (100.0 * age(datfrozenxid) / {WRAPAROUND_LIMIT})::float8 AS percent
FROM pg_database ORDER BY 2 DESC LIMIT 5""")
    if check == "vacuum":
        return _marked(check, f"""SELECT schemaname, relname, n_live_tup::bigint AS live_tuples,
  n_dead_tup::bigint AS dead_tuples,
  (100.0 * n_dead_tup / nullif(n_live_tup + n_dead_tup, 0))::float8 AS dead_percent,
  extract(epoch FROM now() - greatest(last_vacuum, last_autovacuum))::float8 AS vacuum_age_seconds,
  extract(epoch FROM now() - greatest(last_analyze, last_autoanalyze))::float8 AS analyze_age_seconds
FROM pg_stat_user_tables WHERE n_dead_tup >= {int(options.get('vacuum_min_dead_tuples', 1000))}
ORDER BY dead_percent DESC NULLS LAST LIMIT {DETAIL_ROWS}""")
    if check == "database_size":
        return _marked(check, f"""SELECT datname, pg_database_size(oid)::bigint AS bytes
FROM pg_database
WHERE datallowconn AND (has_database_privilege(oid, 'CONNECT') OR pg_has_role('pg_read_all_stats', 'USAGE'))
  {_scope(dbs)}
ORDER BY bytes DESC""")
    if check == "statements":
        schema = ident.get("statements_schema")
        preload = ident.get("shared_preload_libraries")  # None: hidden from a role without pg_read_all_settings
        if not schema or (preload is not None and "pg_stat_statements" not in preload):
            return None
        mean, total = ("mean_exec_time", "total_exec_time") if version >= 130000 else ("mean_time", "total_time")
        return _marked(check, f"""SELECT d.datname, r.rolname AS usename, s.calls::bigint AS calls,
  s.{mean}::float8 AS mean_ms, s.{total}::float8 AS total_ms, s.rows::bigint AS rows,
  left(s.query, {QUERY_CHARS}) AS query
FROM {schema}.pg_stat_statements s
LEFT JOIN pg_database d ON d.oid = s.dbid LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.query NOT LIKE '/* ops.runbooks pg_health:%'{_scope(dbs, 'd.datname')}
ORDER BY s.{mean} DESC LIMIT {int(options.get('statements_limit', 10))}""")
    raise PgHealthError(f"unknown check {check!r}")  # pragma: no cover (validated before)


# --------------------------------------------------------------------------- evaluation

def _hidden_note(ident: dict) -> str | None:
    if ident.get("superuser") or ident.get("pg_read_all_stats"):
        return None
    return (f"{ident.get('user')} is not a member of pg_monitor (or pg_read_all_stats): state, times and query "
            f"text of other roles' sessions are hidden, so this check only sees {ident.get('user')}'s own "
            f"sessions; GRANT pg_monitor TO {ident.get('user')}")


def eval_connectivity(ident, latency_ms, thr, options):
    role = "standby" if ident["in_recovery"] else "primary"
    status = grade(latency_ms, thr["latency_ms"])
    problems = []
    if status != "ok":
        problems.append((status, f"query round trip took {latency_ms:.0f} ms"
                         f"{_limit_text(status, thr['latency_ms'], lambda v: f'{v} ms')}"))
    expect = options.get("expect_role")
    if expect and expect != role:
        status = "critical"
        problems.append(("critical", f"server is a {role} but expect_role is {expect}"))
    details = [{k: ident.get(k) for k in ("now", "server_version", "user", "database", "superuser",
                                          "pg_monitor", "pg_read_all_stats")}]
    details[0]["role"] = role
    return _check(status, round(latency_ms, 3), "ms", thr["latency_ms"], details,
                  f"{role} PostgreSQL {ident['server_version']} answered in {latency_ms:.1f} ms", problems=problems)


def eval_connections(rows, ident, thr, options):
    total = sum(r["count"] for r in rows)
    max_conn = ident["max_connections"]
    percent = round(100.0 * total / max_conn, 2) if max_conn else None
    status = grade(percent, thr["connections_percent"])
    by_state: dict = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + row["count"]
    summary = (f"{total} of max_connections {max_conn} in use ({percent}%): "
               + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items(), key=lambda i: -i[1])))
    problems = []
    if status != "ok":
        problems.append((status, f"connections at {percent}% of max_connections ({total}/{max_conn})"
                         f"{_limit_text(status, thr['connections_percent'], lambda v: f'{v}%')}"))
    note = None
    if "unknown" in by_state:
        note = _hidden_note(ident)
    return _check(status, percent, "percent", thr["connections_percent"], rows, summary, note, problems)


def _eval_sessions(rows, ident, thr, metric, what, advice):
    threshold = thr[metric]
    levels = [v for v in (threshold.get("warning"), threshold.get("critical")) if v is not None]
    floor = min(levels) if levels else None
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    value = round(max(secs), 3) if secs else 0
    over = [r for r in rows if floor is not None and r.get("seconds") is not None and r["seconds"] >= floor]
    status = grade(value, threshold)
    problems = []
    if status != "ok":
        top = max(over, key=lambda r: r["seconds"])
        problems.append((status, f"{len(over)} {what} longer than {floor} s (longest {_secs(top['seconds'])}: "
                         f"pid {top['pid']} user {top.get('usename')} db {top.get('datname')} "
                         f"app {top.get('application_name')!r}){_limit_text(status, threshold, lambda v: f'{v} s')}"
                         f"; {advice}"))
    summary = f"{len(over)} {what} over the threshold; longest {_secs(value)}" if rows else f"no {what}"
    return _check(status, value, "seconds", threshold, over, summary, _hidden_note(ident), problems)


def eval_long_queries(rows, ident, thr, options):
    return _eval_sessions(rows, ident, thr, "long_query_seconds", "queries running",
                          "inspect it, then SELECT pg_cancel_backend(pid) if it must go")


def eval_idle_in_transaction(rows, ident, thr, options):
    return _eval_sessions(rows, ident, thr, "idle_in_transaction_seconds", "sessions idle in transaction",
                          "they hold locks and block vacuum: fix the client, or SELECT pg_terminate_backend(pid)")


def eval_blocking_locks(rows, ident, thr, options):
    threshold = thr["blocking_lock_seconds"]
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    value = round(max(secs), 3) if secs else 0
    status = grade(value, threshold) if rows else "ok"
    problems = []
    if status != "ok":
        top = max(rows, key=lambda r: r.get("seconds") or 0)
        problems.append((status, f"{len(rows)} session(s) waiting on a lock (longest {_secs(top.get('seconds'))}: "
                         f"pid {top['pid']} blocked by pid {', '.join(map(str, top.get('blocked_by') or []))})"
                         f"{_limit_text(status, threshold, lambda v: f'{v} s')}; end the blocker with "
                         "SELECT pg_terminate_backend(pid) if it is stuck"))
    summary = (f"{len(rows)} session(s) waiting on a lock; longest {_secs(value)}" if rows
               else "no session waits on a lock")
    return _check(status, value, "seconds", threshold, rows, summary, _hidden_note(ident), problems)


def eval_replication(rows, ident, thr, options):
    tb, ts = thr["replication_lag_bytes"], thr["replication_lag_seconds"]
    threshold = {"bytes": tb, "seconds": ts}
    problems = []
    if ident["in_recovery"]:
        row = rows[0] if rows else {}
        lag = row.get("replay_lag_bytes") or 0
        # On an idle primary nothing is replayed and the last replay grows old: that age is
        # lag only while received WAL is waiting to be replayed.
        lag_s = (row.get("last_replay_age_seconds") or 0) if lag > 0 else 0
        statuses = [grade(lag, tb), grade(lag_s, ts)]
        if statuses[0] != "ok" or statuses[1] != "ok":
            st = worst(statuses)
            problems.append((st, f"standby replay is {human_bytes(lag)} / {lag_s:.0f} s behind what it received"
                             f" (warning at {human_bytes(tb.get('warning'))} / {ts.get('warning')} s)"))
        if row.get("replay_paused"):
            problems.append(("warning", "WAL replay is paused on this standby; resume with "
                             "SELECT pg_wal_replay_resume()"))
        hidden = row.get("receiver_pid") is not None and row.get("receiver_status") is None
        if not hidden and row.get("receiver_status") != "streaming":
            problems.append(("critical", f"standby is not streaming from its primary (WAL receiver "
                             f"{row.get('receiver_status') or 'not running'}); check primary_conninfo and the primary"))
        status = worst(p[0] for p in problems)
        summary = (f"standby: replay {human_bytes(lag)} behind receive, last replay "
                   f"{_secs(row.get('last_replay_age_seconds'))} ago, receiver {row.get('receiver_status')}")
        value = {"replay_lag_bytes": lag, "replay_lag_seconds": lag_s}
        return _check(status, value, "bytes/seconds", threshold, rows, summary,
                      _hidden_note(ident) if hidden else None, problems)
    max_b, max_s = 0, 0.0
    for row in rows:
        name = row.get("application_name") or row.get("client_addr") or "standby"
        if row.get("state") is None:  # columns hidden from a role without pg_read_all_stats
            continue
        lag_b = max((row.get(k) or 0) for k in ("write_lag_bytes", "flush_lag_bytes", "replay_lag_bytes"))
        lag_s = max((row.get(k) or 0) for k in ("write_lag_seconds", "flush_lag_seconds", "replay_lag_seconds"))
        max_b, max_s = max(max_b, lag_b), max(max_s, lag_s)
        st = worst([grade(lag_b, tb), grade(lag_s, ts)])
        if st != "ok":
            problems.append((st, f"standby {name!r} is {human_bytes(lag_b)} / {lag_s:.0f} s behind (replay lag "
                             f"{human_bytes(row.get('replay_lag_bytes'))}; warning at "
                             f"{human_bytes(tb.get('warning'))} / {ts.get('warning')} s)"))
        if row.get("state") != "streaming":
            problems.append(("warning", f"standby {name!r} is in state {row.get('state')!r}, not streaming"))
    minimum = int(options.get("min_standbys") or 0)
    if len(rows) < minimum:
        problems.append(("critical", f"{len(rows)} standby(s) connected, expected at least {minimum}; "
                         "check the standbys and pg_stat_replication"))
    status = worst(p[0] for p in problems)
    summary = (f"primary with {len(rows)} standby(s); worst lag {human_bytes(max_b)} / {max_s:.0f} s"
               if rows else "primary with no standby connected")
    note = _hidden_note(ident) if rows and any(r.get("state") is None for r in rows) else None
    return _check(status, {"lag_bytes": max_b, "lag_seconds": max_s, "standbys": len(rows)}, "bytes/seconds",
                  threshold, rows, summary, note, problems)


def eval_replication_slots(rows, ident, thr, options):
    threshold = thr["slot_retained_bytes"]
    problems = []
    for row in rows:
        name, kept = row["slot_name"], row.get("retained_bytes")
        st = grade(kept, threshold)
        if row.get("wal_status") in ("lost", "unreserved"):
            problems.append(("critical", f"replication slot {name!r} has wal_status {row['wal_status']}: its "
                             "consumer can no longer catch up; rebuild it, then drop the slot"))
        if not row.get("active"):
            problems.append((worst([st, "warning"]), f"replication slot {name!r} ({row.get('slot_type')}) is "
                             f"inactive and retains {human_bytes(kept)} of WAL; reconnect its consumer or "
                             f"SELECT pg_drop_replication_slot('{name}')"))
        elif st != "ok":
            problems.append((st, f"replication slot {name!r} retains {human_bytes(kept)} of WAL"
                             f"{_limit_text(st, threshold, human_bytes)}"))
    kept_all = [r.get("retained_bytes") or 0 for r in rows]
    value = max(kept_all) if kept_all else 0
    inactive = sum(1 for r in rows if not r.get("active"))
    summary = f"{len(rows)} slot(s), {inactive} inactive, most WAL retained {human_bytes(value)}"
    return _check(worst(p[0] for p in problems), value, "bytes", threshold, rows, summary, None, problems)


def eval_wraparound(rows, ident, thr, options):
    threshold = thr["wraparound_percent"]
    top = rows[0] if rows else {}
    value = round(top.get("percent") or 0, 3)
    status = grade(value, threshold)
    problems = []
    if status != "ok":
        problems.append((status, f"database {top.get('datname')!r} is at {value:.1f}% of transaction ID "
                         f"wraparound (age {top.get('xid_age')}){_limit_text(status, threshold, lambda v: f'{v}%')}; "
                         "VACUUM (FREEZE) its oldest tables"))
    return _check(status, value, "percent", threshold, rows,
                  f"oldest datfrozenxid: {top.get('datname')} at {value:.3f}% of 2^31", None, problems)


def eval_vacuum(rows, ident, thr, options):
    threshold = thr["dead_tuple_percent"]
    problems = []
    for row in rows:
        st = grade(row.get("dead_percent"), threshold)
        if st != "ok":
            age = row.get("vacuum_age_seconds")
            problems.append((st, f"table {row['schemaname']}.{row['relname']} in {ident['database']} has "
                             f"{row['dead_percent']:.0f}% dead tuples ({row['dead_tuples']} dead), last vacuum "
                             f"{'never' if age is None else _secs(age) + ' ago'}"
                             f"{_limit_text(st, threshold, lambda v: f'{v}%')}; run VACUUM ANALYZE on it"))
    vals = [r["dead_percent"] for r in rows if r.get("dead_percent") is not None]
    value = round(max(vals), 3) if vals else 0
    summary = (f"{len(problems)} table(s) of database {ident['database']} (the one connected to) over the "
               f"dead-tuple threshold; worst {value:.1f}% among tables with at least "
               f"{int(options.get('vacuum_min_dead_tuples', 1000))} dead tuples")
    return _check(worst(p[0] for p in problems), value, "percent", threshold, rows, summary, None, problems)


def eval_database_size(rows, ident, thr, options):
    threshold = thr["database_size_bytes"]
    problems = []
    for row in rows:
        st = grade(row["bytes"], threshold)
        if st != "ok":
            problems.append((st, f"database {row['datname']!r} is {human_bytes(row['bytes'])}"
                             f"{_limit_text(st, threshold, human_bytes)}"))
    value = rows[0]["bytes"] if rows else 0
    for row in rows:
        row["size"] = human_bytes(row["bytes"])
    summary = f"largest database {rows[0]['datname']} {human_bytes(value)}" if rows else "no database visible"
    return _check(worst(p[0] for p in problems), value, "bytes", threshold, rows, summary, None, problems)


def eval_statements(rows, ident, thr, options):
    threshold = thr["statement_mean_ms"]
    if rows is None:
        if not ident.get("statements_schema"):
            note = (f"pg_stat_statements is not installed in database {ident['database']}: add it to "
                    "shared_preload_libraries and CREATE EXTENSION pg_stat_statements")
        else:
            note = "pg_stat_statements is installed but not loaded: add it to shared_preload_libraries and restart"
        return _check("ok", None, "ms", threshold, [], "pg_stat_statements not available", note)
    problems = []
    over = [r for r in rows if grade(r.get("mean_ms"), threshold) != "ok"]
    value = round(rows[0]["mean_ms"], 3) if rows else 0
    status = grade(value, threshold)
    if over:
        top = over[0]
        problems.append((status, f"{len(over)} statement(s) average over {threshold.get('warning')} ms; slowest "
                         f"{top['mean_ms']:.0f} ms over {top['calls']} calls in {top.get('datname')}: "
                         f"{' '.join(str(top.get('query')).split())[:120]}"))
    summary = f"top {len(rows)} statements by mean time; slowest {value:.1f} ms"
    return _check(status, value, "ms", threshold, rows, summary, _hidden_note(ident), problems)


EVALUATORS = {
    "connections": eval_connections,
    "long_queries": eval_long_queries,
    "idle_in_transaction": eval_idle_in_transaction,
    "blocking_locks": eval_blocking_locks,
    "replication": eval_replication,
    "replication_slots": eval_replication_slots,
    "wraparound": eval_wraparound,
    "vacuum": eval_vacuum,
    "database_size": eval_database_size,
    "statements": eval_statements,
}


# --------------------------------------------------------------------------- running

class DbapiRunner:
    """Runs a batch of statements in one round trip on a psycopg 3 connection (autocommit)."""

    def __init__(self, conn):
        self.conn = conn
        self.round_trips = 0

    def batch(self, statements: list[str]) -> list[list[dict]]:
        self.round_trips += 1
        results = []
        with self.conn.cursor() as cur:
            cur.execute(";\n".join(statements))
            while True:
                if cur.description is None:
                    results.append([])
                else:
                    names = [d.name if hasattr(d, "name") else d[0] for d in cur.description]
                    results.append([{names[i]: row[i] for i in range(len(names))} for row in cur.fetchall()])
                if not cur.nextset():
                    break
        return results


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_batch(runner, named: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Rows per name in one round trip; on failure each statement alone, errors per name."""
    if not named:
        return {}, {}
    try:
        results = runner.batch([sql for _name, sql in named])
    except Exception:  # noqa: BLE001  # pylint: disable=broad-except  # any driver error: retry one by one
        results = None
    if results is not None:
        return {named[i][0]: results[i] for i in range(len(named))}, {}
    rows, errors = {}, {}
    for name, sql in named:
        try:
            rows[name] = runner.batch([sql])[0]
        except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except
            errors[name] = _one_line(exc)
    return rows, errors


def _hint_for_error(error: str) -> str:
    if re.search(r"permission denied|must be superuser|privilege", error, re.I):
        return "GRANT pg_monitor TO the login role"
    if "shared_preload_libraries" in error:
        return "add pg_stat_statements to shared_preload_libraries and restart"
    return "see the server log"


def run(runner, checks=None, thresholds=None, options=None, clock=time.perf_counter) -> dict:
    """Run the checks; return plain data (see the module's RETURN)."""
    options = options or {}
    wanted = validate_checks(checks)
    thr = merge_thresholds(thresholds)
    started = clock()
    ident = runner.batch(identity_statements())[-1][0]
    latency_ms = (clock() - started) * 1000.0
    role = "standby" if ident["in_recovery"] else "primary"

    named, skipped = [], []
    for check in wanted:
        sql = check_statements(check, ident, options)
        if sql is None:
            skipped.append(check)
        else:
            named.append((check, sql))
    rows, errors = run_batch(runner, named)

    results = {}
    for check in wanted:
        if check == "connectivity":
            results[check] = eval_connectivity(ident, latency_ms, thr, options)
        elif check in errors:
            err = errors[check]
            metrics = CHECK_METRICS[check]
            threshold = thr[metrics[0]] if len(metrics) == 1 else {m: thr[m] for m in metrics}
            results[check] = _check("unknown", None, None, threshold, [], f"could not run: {err}",
                                    note=f"{err}; {_hint_for_error(err)}",
                                    problems=[("unknown", f"check {check} could not run: {err}; "
                                               f"{_hint_for_error(err)}")])
        else:
            results[check] = EVALUATORS[check](None if check in skipped else rows[check], ident, thr, options)
    return assemble(results, ident, role, latency_ms, runner.round_trips)


def assemble(results: dict, ident: dict | None, role, latency_ms, round_trips) -> dict:
    problems = []
    for name, res in results.items():
        own = res.get("problems", [])
        for status, text in own:
            problems.append((_PROBLEM_ORDER.get(status, 3), name, status, text))
        res["problems"] = [f"{status}: {text}" for status, text in own]
    problems.sort(key=lambda p: p[0])
    notes = sorted({res["note"] for res in results.values() if res.get("note")})
    return {
        "status": worst(r["status"] for r in results.values()),
        "role": role,
        "server_version": ident.get("server_version") if ident else None,
        "latency_ms": round(latency_ms, 3) if latency_ms is not None else None,
        "round_trips": round_trips,
        "checks": results,
        "problems": [f"{status}: {name}: {text}" for _o, name, status, text in problems],
        "notes": notes,
        "privileges": ({k: ident.get(k) for k in ("user", "superuser", "pg_monitor", "pg_read_all_stats")}
                       if ident else {}),
    }


def unreachable(message: str, checks=None) -> dict:
    """The result when the server cannot be reached: connectivity critical, the rest not run."""
    wanted = validate_checks(checks)
    results = {"connectivity": _check("critical", None, "ms", DEFAULT_THRESHOLDS["latency_ms"], [], message,
                                      problems=[("critical", message)])}
    out = assemble(results, None, None, None, 0)
    out["not_run"] = [c for c in wanted if c != "connectivity"]
    return out


def should_fail(status: str, fail_on: str) -> bool:
    if fail_on == "never":
        return False
    if fail_on == "warning":
        return status in ("warning", "critical")
    return status == "critical"
