#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_health
short_description: Check the health of a PostgreSQL server, every check structured, with thresholds
version_added: 0.1.0
description:
  - Runs the checks an on-call engineer types by hand in psql at the start of an incident (connection
    count against max_connections, long-running queries, sessions idle in transaction, blocking locks,
    replication lag, replication slots, transaction ID wraparound, dead tuples, database sizes, slowest
    statements) and returns each one as data, with its measured value, its thresholds and its status.
  - Uses one connection and, normally, two round trips; if one check's query fails (a view not readable,
    an extension not loaded) the other checks still run and that check reports status V(unknown) with a
    note saying what to grant or install.
  - Never changes anything on the server and never reports C(changed).
  - Works as a non-superuser member of C(pg_monitor). A plain role also works, but sessions of other roles
    are hidden from it by PostgreSQL, so a note says the activity checks only see its own sessions.
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._postgres
  - ops.runbooks._attributes
  - ops.runbooks._attributes.actiongroup_postgres
attributes:
  check_mode:
    support: full
    details: Read-only; check mode runs the same queries and returns the same result.
  diff_mode:
    support: none
    details: Read-only; there is nothing to diff.
  idempotent:
    support: full
options:
  checks:
    description:
      - The checks to run; all of them by default.
      - V(connectivity) - the server answers; role, version, privileges and the query round trip time.
      - V(connections) - client sessions as a percentage of C(max_connections), by database and state.
      - V(long_queries) - active queries running for longer than the thresholds.
      - V(idle_in_transaction) - sessions idle inside an open transaction for longer than the thresholds.
      - V(blocking_locks) - sessions waiting on a lock held by another session, with the blockers.
      - V(replication) - on a primary, each standby of C(pg_stat_replication) with its state and its
        write/flush/replay lag in bytes and seconds; on a standby, received-but-not-replayed WAL in bytes,
        the age of the last replayed transaction, whether replay is paused and whether the WAL receiver is
        streaming. The same check name works on both roles; it reports what applies to the server's role.
      - V(replication_slots) - every slot; inactive slots are a warning, and the WAL each slot retains is
        graded with the C(slot_retained_bytes) thresholds.
      - V(wraparound) - age of the oldest C(datfrozenxid) as a percentage of the 2^31 limit.
      - V(vacuum) - tables of the database connected to (O(login_db)) with at least
        O(vacuum_min_dead_tuples) dead tuples, graded by their dead-tuple percentage, with the age of their
        last (auto)vacuum and (auto)analyze.
      - V(database_size) - size of every database the login role may connect to.
      - V(statements) - top O(statements_limit) statements by mean execution time from
        C(pg_stat_statements); when the extension is not installed in the database connected to, or not
        loaded, the check is V(ok) with a note saying so, not an error.
    type: list
    elements: str
    choices: [connectivity, connections, long_queries, idle_in_transaction, blocking_locks, replication,
              replication_slots, wraparound, vacuum, database_size, statements]
  thresholds:
    description:
      - Warning and critical levels per metric, as a dict of metric name to a dict with C(warning) and/or
        C(critical). A value at or above
        C(critical) is critical, else at or above C(warning) is a warning. Omitted levels keep their default;
        V(null) disables a level.
      - C(latency_ms) (connectivity) 1000 / 5000.
      - C(connections_percent) 80 / 95 (runbook 000, "< 80% of pool size").
      - C(long_query_seconds) 300 / 900 and C(idle_in_transaction_seconds) 300 / 900 (runbooks 000, 003,
        004, "> 5 minutes").
      - C(blocking_lock_seconds) 30 / 300 (time the longest waiter has waited).
      - C(replication_lag_bytes) 67108864 (64 MiB) / 1073741824 (1 GiB) and C(replication_lag_seconds)
        30 / 300.
      - C(slot_retained_bytes) 1 GiB / 10 GiB.
      - C(wraparound_percent) 50 / 75.
      - C(dead_tuple_percent) 20 / 50.
      - C(database_size_bytes) none / none (report only).
      - C(statement_mean_ms) 1000 / 10000 (runbook 004, "mean_time > 1000").
    type: dict
    default: {}
  fail_on:
    description:
      - Fail the task when the overall status is at least this bad.
      - An unreachable server fails the task unless O(fail_on=never), in which case it is reported as
        V(critical) with the connection error in RV(problems).
    type: str
    default: critical
    choices: [critical, warning, never]
  expect_role:
    description:
      - The role the server must have. A mismatch (for example a standby that was promoted, or standby
        checks pointed at the primary) makes V(connectivity) critical.
      - Not set means either role is fine.
    type: str
    choices: [primary, standby]
  min_standbys:
    description:
      - On a primary, the number of connected standbys below which V(replication) is critical.
    type: int
    default: 0
  databases:
    description:
      - Limit V(long_queries), V(idle_in_transaction), V(blocking_locks), V(database_size) and
        V(statements) to these databases, for a shared server where only your application's databases
        matter. V(connections), V(replication), V(replication_slots) and V(wraparound) stay server-wide.
      - Not set means every database.
    type: list
    elements: str
  statements_limit:
    description:
      - How many statements V(statements) returns, slowest mean first.
    type: int
    default: 10
  vacuum_min_dead_tuples:
    description:
      - Tables with fewer dead tuples are ignored by V(vacuum), so that small tables do not raise alarms.
    type: int
    default: 1000
notes:
  - Privileges. Superuser is never required; a member of C(pg_monitor) sees everything the checks
    need. A plain role can run every check, but PostgreSQL hides the state, times and query text of
    other roles' sessions from it, so V(connections) counts them as state V(unknown),
    V(long_queries), V(idle_in_transaction), V(blocking_locks) and V(statements) only see its own
    sessions, V(replication) on a primary sees the standbys but not their state or lag, and on a
    standby not the WAL receiver status; the result carries a note saying so (and no false alarm).
    V(replication_slots), V(wraparound) and V(vacuum) need no privilege.
  - V(database_size) skips databases the role may not connect to, unless it has C(pg_read_all_stats).
  - Every query starts with the comment C(/* ops.runbooks pg_health:<check> */), so the module's own
    statements are easy to recognise in C(pg_stat_activity) and are left out of V(statements).
  - Sets C(statement_timeout) to 30 seconds for its own session.
seealso:
  - name: PostgreSQL monitoring statistics
    description: The views the checks read.
    link: https://www.postgresql.org/docs/current/monitoring-stats.html
  - name: Routine vacuuming and transaction ID wraparound
    description: What the V(vacuum) and V(wraparound) checks watch.
    link: https://www.postgresql.org/docs/current/routine-vacuuming.html
"""

EXAMPLES = r"""
- name: Daily database check (runbook 004), report only
  ops.runbooks.pg_health:
    login_host: prod-db
    login_user: monitor          # a member of pg_monitor, not a superuser
    login_password: "{{ vault_pg_monitor_password }}"
    login_db: bot_production
    fail_on: never
  register: db_health

- name: Show what needs attention, worst first
  ansible.builtin.debug:
    var: db_health.problems

- name: Fail the deploy if the database is unhealthy
  ops.runbooks.pg_health:
    dsn: "{{ lookup('ansible.builtin.env', 'DATABASE_URL') }}"
    expect_role: primary
    min_standbys: 1
    fail_on: critical
    thresholds:
      connections_percent: {warning: 70, critical: 90}
      replication_lag_seconds: {critical: 60}

- name: Only the checks of the incident runbook, on the standby, scoped to the app database
  ops.runbooks.pg_health:
    login_host: replica.internal
    login_db: bitcurrent
    expect_role: standby
    databases: [bitcurrent]
    checks: [connectivity, connections, long_queries, replication]

- name: Set the connection once for every PostgreSQL module
  module_defaults:
    group/ops.runbooks.postgres:
      login_host: prod-db
      login_user: monitor
      login_password: "{{ vault_pg_monitor_password }}"
  block:
    - name: Health before the maintenance window
      ops.runbooks.pg_health:
        checks: [long_queries, idle_in_transaction, blocking_locks]
        fail_on: warning
"""

RETURN = r"""
status:
  description: Overall status, the worst of the checks (a check that could not run counts as a warning).
  returned: always
  type: str
  sample: warning
role:
  description: V(primary) or V(standby) (null when the server could not be reached).
  returned: always
  type: str
  sample: primary
server_version:
  description: The server's C(server_version).
  returned: always
  type: str
  sample: 15.18 (Debian 15.18-0+deb12u1)
latency_ms:
  description: Time of the first query round trip (after connecting), in milliseconds.
  returned: always
  type: float
  sample: 1.8
connect_ms:
  description: Time to open the connection, in milliseconds.
  returned: always
  type: float
  sample: 6.2
round_trips:
  description: Query round trips used (2 normally; more when a check had to be retried alone).
  returned: always
  type: int
  sample: 2
checks:
  description:
    - One entry per check run, keyed by check name.
    - C(status) is V(ok), V(warning), V(critical), or V(unknown) when the check's query failed.
    - C(value) is the graded measure (for V(replication) a dict of lag bytes and seconds), C(unit) its unit,
      C(threshold) the levels applied, C(details) the rows behind it (sessions, standbys, slots, tables,
      databases, statements; the activity checks list only sessions over the lowest threshold),
      C(summary) one line, C(problems) this check's problem sentences, C(note) present when the result is
      partial (privileges, extension missing, query failed).
  returned: always
  type: dict
  sample:
    connections:
      status: ok
      value: 12.0
      unit: percent
      threshold: {warning: 80, critical: 95}
      details: [{datname: app, state: idle, count: 10}, {datname: app, state: active, count: 2}]
      summary: "12 of max_connections 100 in use (12.0%): 10 idle, 2 active"
      problems: []
problems:
  description: Human sentences, worst first, each prefixed with its severity and check.
  returned: always
  type: list
  elements: str
  sample:
    - "critical: replication: standby 'replica1' is 2.1 GB / 340 s behind (replay lag 2.1 GB; warning at 64.0 MB)"
    - "warning: idle_in_transaction: 1 sessions idle in transaction longer than 300 s (longest 420 s: pid 4242 ...)"
notes:
  description: Notes about partial results (missing privileges or extensions).
  returned: always
  type: list
  elements: str
privileges:
  description: The login role and whether it is a superuser, a member of C(pg_monitor) and of C(pg_read_all_stats).
  returned: when the server was reached
  type: dict
  sample: {user: monitor, superuser: false, pg_monitor: true, pg_read_all_stats: true}
not_run:
  description: Checks not run because the server could not be reached.
  returned: when the server could not be reached and O(fail_on=never)
  type: list
  elements: str
"""

import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._pg_health import (  # noqa: E402
    CHECKS,
    FAIL_ON,
    DbapiRunner,
    PgHealthError,
    merge_thresholds,
    run,
    should_fail,
    unreachable,
)
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (  # noqa: E402
    PostgresConnectionError,
    check_psycopg,
    connect,
    postgres_argument_spec,
)


def argument_spec() -> dict:
    spec = postgres_argument_spec()
    spec.update(
        checks={"type": "list", "elements": "str", "choices": list(CHECKS)},
        thresholds={"type": "dict", "default": {}},
        fail_on={"type": "str", "default": "critical", "choices": list(FAIL_ON)},
        expect_role={"type": "str", "choices": ["primary", "standby"]},
        min_standbys={"type": "int", "default": 0},
        databases={"type": "list", "elements": "str"},
        statements_limit={"type": "int", "default": 10},
        vacuum_min_dead_tuples={"type": "int", "default": 1000},
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    for name in ("min_standbys", "statements_limit", "vacuum_min_dead_tuples"):
        if params[name] < 0:
            module.fail_json(msg=f"{name} must be 0 or more, got {params[name]}")
    try:
        merge_thresholds(params["thresholds"])
    except PgHealthError as exc:
        module.fail_json(msg=str(exc))
    check_psycopg(module)

    started = time.perf_counter()
    try:
        conn = connect(params)
    except PostgresConnectionError as exc:
        result = unreachable(str(exc), params["checks"])
        result["connect_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        if params["fail_on"] == "never":
            module.exit_json(changed=False, **result)
        module.fail_json(msg=str(exc), **result)
    connect_ms = round((time.perf_counter() - started) * 1000.0, 3)

    options = {k: params[k] for k in ("expect_role", "min_standbys", "databases", "statements_limit",
                                      "vacuum_min_dead_tuples")}
    try:
        result = run(DbapiRunner(conn), params["checks"], params["thresholds"], options)
    except PgHealthError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except  # the connection died mid-run
        module.fail_json(msg=f"PostgreSQL health check failed after connecting: {' '.join(str(exc).split())}; "
                             "check the server log and that the connection is not cut by a proxy")
    finally:
        conn.close()
    result["connect_ms"] = connect_ms

    if should_fail(result["status"], params["fail_on"]):
        head = "; ".join(result["problems"][:3])
        more = f" (+{len(result['problems']) - 3} more)" if len(result["problems"]) > 3 else ""
        module.fail_json(msg=f"PostgreSQL is {result['status']} (fail_on={params['fail_on']}): {head}{more}",
                         changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
