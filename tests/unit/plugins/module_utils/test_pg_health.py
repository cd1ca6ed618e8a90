"""The pure pg_health core: thresholds, grading and every check's decision, on canned rows."""

from __future__ import annotations

import re

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _pg_health as h
from ansible_collections.ops.runbooks.plugins.module_utils._pg_health import (
    CHECKS,
    DEFAULT_THRESHOLDS,
    DbapiRunner,
    PgHealthError,
    grade,
    merge_thresholds,
    run,
    should_fail,
    sql_literal,
    unreachable,
    validate_checks,
    worst,
)

MARK = re.compile(r"/\* ops\.runbooks pg_health:(\w+) \*/")


def ident(**over):
    base = {
        "now": "2026-11-23 10:00:00+00", "server_version": "15.18", "server_version_num": 150018,
        "in_recovery": False, "user": "postgres", "database": "app", "superuser": True, "pg_monitor": True,
        "pg_read_all_stats": True, "max_connections": 100, "shared_preload_libraries": "pg_stat_statements",
        "statements_schema": "public",
    }
    base.update(over)
    return base


class FakeRunner:
    """Answers each statement by its `/* ops.runbooks pg_health:<name> */` marker."""

    def __init__(self, rows=None, ident_row=None, fail=()):
        self.rows = rows or {}
        self.ident = ident_row or ident()
        self.fail = dict(fail)  # name -> error text
        self.round_trips = 0
        self.sent = []

    def batch(self, statements):
        self.round_trips += 1
        self.sent.append(statements)
        out = []
        for sql in statements:
            match = MARK.search(sql)
            if not match:  # SET statement_timeout
                out.append([])
                continue
            name = match.group(1)
            if name in self.fail:
                raise RuntimeError(self.fail[name])
            out.append([self.ident] if name == "identity" else [dict(r) for r in self.rows.get(name, [])])
        return out


def session(pid=101, seconds=10.0, **over):
    row = {"pid": pid, "datname": "app", "usename": "app", "application_name": "web", "client_addr": None,
           "state": "active", "wait_event_type": None, "wait_event": None, "seconds": seconds,
           "xact_seconds": seconds, "query": "SELECT 1"}
    row.update(over)
    return row


HEALTHY = {
    "connections": [{"datname": "app", "state": "idle", "count": 8}, {"datname": "app", "state": "active", "count": 2}],
    "long_queries": [session(seconds=3.0)],
    "replication": [{"application_name": "s1", "client_addr": "10.0.0.2", "state": "streaming", "sync_state": "async",
                     "write_lag_bytes": 0, "flush_lag_bytes": 0, "replay_lag_bytes": 0, "sent_lag_bytes": 0,
                     "write_lag_seconds": None, "flush_lag_seconds": None, "replay_lag_seconds": None}],
    "wraparound": [{"datname": "app", "xid_age": 1000, "mxid_age": 1, "percent": 0.00005}],
    "database_size": [{"datname": "app", "bytes": 9 * 1024 * 1024}],
    "statements": [{"datname": "app", "usename": "app", "calls": 10, "mean_ms": 2.5, "total_ms": 25.0, "rows": 10,
                    "query": "SELECT $1"}],
}


def test_validate_checks_defaults_to_all_in_order():
    assert validate_checks(None) == list(CHECKS)
    assert validate_checks([]) == list(CHECKS)
    assert validate_checks(["statements", "connectivity"]) == ["connectivity", "statements"]
    assert validate_checks("vacuum, connections") == ["connections", "vacuum"]


def test_unknown_check_names_what_is_valid():
    with pytest.raises(PgHealthError,
                       match=r"unknown check name\(s\): replication_lag; valid checks are: connectivity"):
        validate_checks(["replication_lag"])


def test_thresholds_merge_over_defaults():
    merged = merge_thresholds({"connections_percent": {"warning": 70}, "long_query_seconds": {"critical": None}})
    assert merged["connections_percent"] == {"warning": 70, "critical": 95}
    assert merged["long_query_seconds"] == {"warning": 300, "critical": None}
    assert merged["latency_ms"] == DEFAULT_THRESHOLDS["latency_ms"]
    assert merge_thresholds({"latency_ms": {"warning": "250", "critical": "1e3"}})["latency_ms"] == {
        "warning": 250, "critical": 1000.0}


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"connections_percent": {"warning": "lots"}},
     r"thresholds\.connections_percent\.warning must be a number or null, got str 'lots'"),
    ({"connections_percent": {"warning": True}}, r"got a boolean"),
    ({"connections_percent": {"warning": [80]}}, r"got list"),
    ({"connections_percent": 80}, r"thresholds\.connections_percent must be a dict with warning and/or critical"),
    ({"connections": {"warning": 80}}, r"unknown threshold 'connections'; valid thresholds are: latency_ms"),
    ({"connections_percent": {"warn": 80}}, r"only takes warning and critical, not warn"),
    ({"connections_percent": {"warning": -1}}, r"must not be negative"),
    ({"connections_percent": {"warning": 96}}, r"warning \(96\) must not be above critical \(95\)"),
    (["connections_percent"], r"thresholds must be a dict"),
])
def test_bad_thresholds_say_what_is_wrong(thresholds, message):
    with pytest.raises(PgHealthError, match=message):
        merge_thresholds(thresholds)


def test_grade_and_worst():
    thr = {"warning": 80, "critical": 95}
    assert [grade(v, thr) for v in (None, 79.9, 80, 94, 95, 100)] == [
        "ok", "ok", "warning", "warning", "critical", "critical"]
    assert grade(1000, {"warning": None, "critical": None}) == "ok"
    assert worst([]) == "ok"
    assert worst(["ok", "unknown"]) == "warning"
    assert worst(["warning", "critical", "ok"]) == "critical"


def test_should_fail_table():
    assert [should_fail(s, "critical") for s in ("ok", "warning", "critical")] == [False, False, True]
    assert [should_fail(s, "warning") for s in ("ok", "warning", "critical")] == [False, True, True]
    assert [should_fail(s, "never") for s in ("ok", "warning", "critical")] == [False, False, False]


def test_sql_literal_escapes_quotes_and_rejects_nul():
    assert sql_literal("it's") == "'it''s'"
    with pytest.raises(PgHealthError):
        sql_literal("a\x00b")


def test_healthy_primary_is_ok_in_two_round_trips():
    runner = FakeRunner(HEALTHY)
    result = run(runner, clock=iter([0.0, 0.002]).__next__)
    assert result["status"] == "ok", result["problems"]
    assert result["problems"] == [] and result["notes"] == []
    assert result["role"] == "primary" and result["round_trips"] == 2
    assert result["latency_ms"] == 2.0
    assert set(result["checks"]) == set(CHECKS)
    assert all(c["status"] == "ok" for c in result["checks"].values())
    assert result["checks"]["connections"]["value"] == 10.0
    assert result["checks"]["replication"]["value"] == {"lag_bytes": 0, "lag_seconds": 0, "standbys": 1}
    assert len(runner.sent[1]) == len(CHECKS) - 1  # every check but connectivity in one batch


def test_only_requested_checks_are_queried():
    runner = FakeRunner(HEALTHY)
    result = run(runner, ["connections"])
    assert list(result["checks"]) == ["connections"]
    assert [MARK.search(s).group(1) for s in runner.sent[1]] == ["connections"]


def test_connections_grade_against_max_connections():
    rows = {"connections": [{"datname": "app", "state": "idle", "count": 70},
                            {"datname": "app", "state": "active", "count": 12}]}
    result = run(FakeRunner(rows), ["connections"])
    check = result["checks"]["connections"]
    assert check["status"] == "warning" and check["value"] == 82.0
    assert result["problems"] == [
        "warning: connections: connections at 82.0% of max_connections (82/100) (warning at 80%)"]
    rows["connections"][0]["count"] = 90
    assert run(FakeRunner(rows), ["connections"])["status"] == "critical"


def test_long_queries_keep_only_sessions_over_the_threshold():
    rows = {"long_queries": [session(1, 1000.0), session(2, 400.0), session(3, 5.0)]}
    result = run(FakeRunner(rows), ["long_queries"])
    check = result["checks"]["long_queries"]
    assert check["status"] == "critical" and check["value"] == 1000.0
    assert [r["pid"] for r in check["details"]] == [1, 2]
    assert "2 queries running longer than 300 s (longest 1000 s: pid 1" in result["problems"][0]
    result = run(FakeRunner(rows), ["long_queries"], {"long_query_seconds": {"warning": 2000, "critical": None}})
    assert result["status"] == "ok" and result["checks"]["long_queries"]["details"] == []


def test_idle_in_transaction():
    rows = {"idle_in_transaction": [session(7, 320.0, state="idle in transaction")]}
    result = run(FakeRunner(rows), ["idle_in_transaction"])
    assert result["checks"]["idle_in_transaction"]["status"] == "warning"
    assert "pg_terminate_backend" in result["problems"][0]


def test_blocking_locks_name_the_blocker():
    blocker = {"pid": 8, "state": "idle in transaction"}
    rows = {"blocking_locks": [dict(session(9, 45.0), blocked_by=[8], blockers=[blocker])]}
    result = run(FakeRunner(rows), ["blocking_locks"])
    check = result["checks"]["blocking_locks"]
    assert check["status"] == "warning" and check["value"] == 45.0
    assert "pid 9 blocked by pid 8" in result["problems"][0]
    none = run(FakeRunner({}), ["blocking_locks"])["checks"]["blocking_locks"]
    assert none["status"] == "ok" and none["summary"] == "no session waits on a lock"


def test_replication_on_primary_grades_each_standby():
    standby = dict(HEALTHY["replication"][0], replay_lag_bytes=100 * 1024 * 1024, replay_lag_seconds=12.0)
    result = run(FakeRunner({"replication": [standby]}), ["replication"])
    assert result["checks"]["replication"]["status"] == "warning"
    assert "standby 's1' is 100.0 MB / 12 s behind" in result["problems"][0]
    standby["replay_lag_seconds"] = 301.0
    assert run(FakeRunner({"replication": [standby]}), ["replication"])["status"] == "critical"
    catchup = dict(HEALTHY["replication"][0], state="catchup")
    assert "is in state 'catchup'" in run(FakeRunner({"replication": [catchup]}), ["replication"])["problems"][0]


def test_replication_min_standbys():
    result = run(FakeRunner({"replication": []}), ["replication"], options={"min_standbys": 1})
    assert result["status"] == "critical"
    assert "0 standby(s) connected, expected at least 1" in result["problems"][0]
    assert run(FakeRunner({"replication": []}), ["replication"])["checks"]["replication"]["summary"] == (
        "primary with no standby connected")


def standby_row(**over):
    row = {"receive_lsn": "0/3000000", "replay_lsn": "0/3000000", "replay_lag_bytes": 0,
           "last_replay_age_seconds": 3600.0, "replay_paused": False, "receiver_status": "streaming",
           "receiver_pid": 77, "last_message_age_seconds": 1.0}
    row.update(over)
    return row


def test_standby_caught_up_is_ok_even_when_last_replay_is_old():
    result = run(FakeRunner({"replication": [standby_row()]}, ident(in_recovery=True)), ["replication"])
    assert result["role"] == "standby" and result["status"] == "ok"
    assert result["checks"]["replication"]["value"] == {"replay_lag_bytes": 0, "replay_lag_seconds": 0}


def test_standby_paused_and_behind():
    row = standby_row(replay_lag_bytes=2 * 1024 * 1024, last_replay_age_seconds=40.0, replay_paused=True)
    result = run(FakeRunner({"replication": [row]}, ident(in_recovery=True)), ["replication"],
                 {"replication_lag_bytes": {"warning": 1024 * 1024}})
    assert result["status"] == "warning"  # 2 MB >= 1 MB, 40 s >= 30 s, paused: all warnings
    texts = " | ".join(result["problems"])
    assert "WAL replay is paused" in texts and "standby replay is 2.0 MB / 40 s behind" in texts


def test_standby_not_streaming_is_critical():
    row = standby_row(receiver_status=None, receiver_pid=None)
    result = run(FakeRunner({"replication": [row]}, ident(in_recovery=True)), ["replication"])
    assert result["status"] == "critical"
    assert "not streaming from its primary (WAL receiver not running)" in result["problems"][0]


def test_replication_details_hidden_from_a_plain_role_are_not_problems():
    plain = ident(superuser=False, pg_monitor=False, pg_read_all_stats=False, user="app")
    hidden_standby = {k: None for k in HEALTHY["replication"][0]}
    result = run(FakeRunner({"replication": [hidden_standby]}, plain), ["replication"])
    assert result["status"] == "ok" and result["problems"] == []
    assert "GRANT pg_monitor TO app" in result["checks"]["replication"]["note"]
    row = standby_row(receiver_status=None, receiver_pid=4242)
    result = run(FakeRunner({"replication": [row]}, dict(plain, in_recovery=True)), ["replication"])
    assert result["status"] == "ok" and "GRANT pg_monitor TO app" in result["checks"]["replication"]["note"]


def test_expect_role_mismatch_is_critical():
    result = run(FakeRunner(HEALTHY), ["connectivity"], options={"expect_role": "standby"})
    assert result["status"] == "critical"
    assert result["problems"] == ["critical: connectivity: server is a primary but expect_role is standby"]
    assert run(FakeRunner(HEALTHY), ["connectivity"], options={"expect_role": "primary"})["status"] == "ok"


def slot(name="s", active=False, kept=1024, wal_status="reserved"):
    return {"slot_name": name, "slot_type": "physical", "database": None, "active": active, "active_pid": None,
            "wal_status": wal_status, "safe_wal_size": None, "retained_bytes": kept}


def test_replication_slots():
    result = run(FakeRunner({"replication_slots": [slot("idle_one"), slot("busy", True)]}), ["replication_slots"])
    assert result["status"] == "warning"
    assert result["problems"] == ["warning: replication_slots: replication slot 'idle_one' (physical) is inactive and "
                                  "retains 1.0 kB of WAL; reconnect its consumer or SELECT "
                                  "pg_drop_replication_slot('idle_one')"]
    big = run(FakeRunner({"replication_slots": [slot("big", True, 11 * 1024 ** 3)]}), ["replication_slots"])
    assert big["status"] == "critical" and big["checks"]["replication_slots"]["value"] == 11 * 1024 ** 3
    lost = run(FakeRunner({"replication_slots": [slot("l", True, 0, "lost")]}), ["replication_slots"])
    assert lost["status"] == "critical"


def test_wraparound():
    rows = {"wraparound": [{"datname": "old", "xid_age": 1_200_000_000, "mxid_age": 5, "percent": 55.88}]}
    result = run(FakeRunner(rows), ["wraparound"])
    assert result["status"] == "warning" and result["checks"]["wraparound"]["value"] == 55.88
    assert "database 'old' is at 55.9% of transaction ID wraparound" in result["problems"][0]


def test_vacuum_grades_each_table():
    rows = {"vacuum": [{"schemaname": "public", "relname": "t", "live_tuples": 2000, "dead_tuples": 3000,
                        "dead_percent": 60.0, "vacuum_age_seconds": None, "analyze_age_seconds": 10.0}]}
    result = run(FakeRunner(rows), ["vacuum"])
    assert result["status"] == "critical" and result["checks"]["vacuum"]["value"] == 60.0
    assert "table public.t in app has 60% dead tuples (3000 dead), last vacuum never" in result["problems"][0]


def test_vacuum_min_dead_tuples_goes_into_the_query():
    runner = FakeRunner({})
    run(runner, ["vacuum"], options={"vacuum_min_dead_tuples": 42})
    assert "n_dead_tup >= 42" in runner.sent[1][0]


def test_database_size_report_only_by_default():
    result = run(FakeRunner(HEALTHY), ["database_size"])
    assert result["status"] == "ok" and result["checks"]["database_size"]["details"][0]["size"] == "9.0 MB"
    result = run(FakeRunner(HEALTHY), ["database_size"], {"database_size_bytes": {"warning": 1024}})
    assert result["status"] == "warning"


def test_statements_not_installed_is_a_note_not_an_error():
    runner = FakeRunner({}, ident(statements_schema=None))
    result = run(runner, ["statements"])
    check = result["checks"]["statements"]
    assert check["status"] == "ok" and "pg_stat_statements is not installed in database app" in check["note"]
    assert runner.round_trips == 1  # nothing to ask
    loaded = run(FakeRunner({}, ident(shared_preload_libraries="")), ["statements"])
    assert "installed but not loaded" in loaded["checks"]["statements"]["note"]
    hidden = FakeRunner(HEALTHY, ident(shared_preload_libraries=None))  # plain role: setting not visible
    assert run(hidden, ["statements"])["checks"]["statements"]["details"] == HEALTHY["statements"]


def test_statements_slow_mean():
    rows = {"statements": [dict(HEALTHY["statements"][0], mean_ms=1500.0, query="SELECT pg_sleep($1)")]}
    result = run(FakeRunner(rows), ["statements"])
    assert result["status"] == "warning"
    assert "slowest 1500 ms over 10 calls in app: SELECT pg_sleep($1)" in result["problems"][0]


def test_databases_scope_is_quoted_into_activity_queries():
    runner = FakeRunner({})
    run(runner, ["long_queries", "statements", "wraparound"], options={"databases": ["app", "o'brien"]})
    long_q, wrap, statements = runner.sent[1]  # canonical check order
    assert "datname = ANY(ARRAY['app', 'o''brien']::text[])" in long_q
    assert "d.datname = ANY(ARRAY['app', 'o''brien']::text[])" in statements
    assert "ANY(ARRAY" not in wrap  # wraparound stays server-wide


def test_a_failing_view_degrades_one_check_with_a_note():
    runner = FakeRunner(HEALTHY, fail={"statements": "permission denied for view pg_stat_statements"})
    result = run(runner)
    assert result["checks"]["statements"]["status"] == "unknown"
    assert result["status"] == "warning"
    assert all(c["status"] == "ok" for n, c in result["checks"].items() if n != "statements")
    assert result["problems"] == ["unknown: statements: check statements could not run: permission denied for view "
                                  "pg_stat_statements; GRANT pg_monitor TO the login role"]
    assert runner.round_trips == 2 + len(CHECKS) - 1  # identity, failed batch, then each check alone


def test_plain_role_gets_a_note_about_hidden_sessions():
    rows = {"connections": [{"datname": "app", "state": "unknown", "count": 5}]}
    result = run(FakeRunner(rows, ident(superuser=False, pg_monitor=False, pg_read_all_stats=False, user="app")),
                 ["connections", "long_queries"])
    assert result["status"] == "ok"
    assert len(result["notes"]) == 1 and "GRANT pg_monitor TO app" in result["notes"][0]


def test_problems_are_sorted_worst_first():
    rows = dict(HEALTHY, idle_in_transaction=[session(5, 310.0, state="idle in transaction")],
                long_queries=[session(6, 1000.0)])
    problems = run(FakeRunner(rows))["problems"]
    assert [p.split(":")[0] for p in problems] == ["critical", "warning"]


def test_old_server_uses_old_column_names():
    runner = FakeRunner({}, ident(server_version_num=120010))
    run(runner, ["statements", "replication_slots", "blocking_locks"])
    blocking, slots, statements = runner.sent[1]
    assert "mean_time" in statements and "mean_exec_time" not in statements
    assert "NULL::text AS wal_status" in slots and "waitstart" not in blocking


def test_unreachable_result():
    result = unreachable("cannot connect to PostgreSQL as u@h:1/d: refused; check it", ["connections"])
    assert result["status"] == "critical" and result["role"] is None
    assert result["problems"] == ["critical: connectivity: cannot connect to PostgreSQL as u@h:1/d: refused; check it"]
    assert result["not_run"] == ["connections"]


class _Desc:
    def __init__(self, name):
        self.name = name


class FakeCursor:
    def __init__(self, sets):
        self.sets = sets
        self.index = 0
        self.executed = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql):
        self.executed.append(sql)

    @property
    def description(self):
        cols = self.sets[self.index][0]
        return None if cols is None else [_Desc(c) for c in cols]

    def fetchall(self):
        return self.sets[self.index][1]

    def nextset(self):
        self.index += 1
        return True if self.index < len(self.sets) else None


def test_dbapi_runner_sends_one_query_and_reads_every_result_set():
    cursor = FakeCursor([(None, []), (["a", "b"], [(1, 2), (3, 4)]), (["c"], [])])

    class Conn:
        def cursor(self):
            return cursor

    runner = DbapiRunner(Conn())
    assert runner.batch(["SET x = 1", "SELECT 1", "SELECT 2"]) == [[], [{"a": 1, "b": 2}, {"a": 3, "b": 4}], []]
    assert cursor.executed == ["SET x = 1;\nSELECT 1;\nSELECT 2"] and runner.round_trips == 1


def test_human_bytes():
    assert [h.human_bytes(v) for v in (None, 10, 2048, 3 * 1024 ** 3)] == ["unknown", "10 B", "2.0 kB", "3.0 GB"]
