"""The pure pg_dr core: input validation, the promote guards, the fence/rename/drop/comment plans
and the space verdict, on a fake client that records every statement it is sent."""

from __future__ import annotations

import datetime as dt
import os
from types import SimpleNamespace

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _pg_dr as core
from ansible_collections.ops.runbooks.plugins.module_utils._backup_verify import SCRATCH_TAG
from ansible_collections.ops.runbooks.plugins.module_utils._pg_dr import (
    DR_TAG,
    ConnectFailed,
    PgDrError,
    data_loss_seconds,
    is_unreachable,
    parse_lsn,
    promote_guard,
    rename_plan,
    tagged,
    validate,
)

UTC = dt.timezone.utc  # noqa: UP017
T0 = dt.datetime(2026, 11, 23, 3, 0, 0, tzinfo=UTC)


class FakeClient:
    """Answers the core's queries from plain state; records the statements that change things."""

    def __init__(self, in_recovery=False, read_only="off", version_num=150018, current_db="postgres",
                 standby=None, databases=None, other_sessions=0, promote_ok=True, stays_in_recovery=False,
                 rename_errors=(), superuser=True, can_promote=True, alter_system=False):
        self.in_recovery, self.read_only, self.version_num = in_recovery, read_only, version_num
        self.current_db = current_db
        self.standby = {"receive_lsn": "0/3000200", "replay_lsn": "0/3000100", "last_replay_at": T0,
                        "replay_paused": False, "receiver_status": None, "receiver_sender": None, **(standby or {})}
        self.databases = {name: dict(d) for name, d in (databases or {}).items()}
        self.other_sessions = other_sessions
        self.promote_ok, self.stays_in_recovery = promote_ok, stays_in_recovery
        self.rename_errors = list(rename_errors)
        self.superuser, self.can_promote, self.alter_system = superuser, can_promote, alter_system
        self.changes: list[str] = []
        self.closed = False

    def rows(self, sql, params=None):
        if "pg_dr:server" in sql:
            return [{"in_recovery": self.in_recovery, "server_version": "15.18", "server_version_num": self.version_num,
                     "read_only": self.read_only, "current_database": self.current_db, "login_user": "ops",
                     "superuser": self.superuser, "createdb": self.superuser}]
        if "pg_dr:standby" in sql:
            return [dict(self.standby, can_promote=self.can_promote)]
        if "pg_dr:database" in sql:
            db = self.databases.get(params[0])
            if db is None:
                return []
            return [dict({"name": params[0], "size_bytes": 100, "comment": None, "connections": 0,
                          "owner": self.superuser}, **db)]
        if "pg_dr:fence" in sql:
            return [{"other_sessions": self.other_sessions, "overrides": 0}]
        if "pg_current_wal_lsn()::text AS lsn" in sql and "walfile" not in sql:
            return [{"lsn": "0/3000300"}]
        if "pg_promote" in sql:
            self.changes.append("promote")
            self.in_recovery = self.stays_in_recovery
            return [{"done": self.promote_ok}]
        if "walfile" in sql:
            return [{"walfile": "000000020000000000000003", "final_replay_at": T0 + dt.timedelta(seconds=5),
                     "lsn": "0/3000300"}]
        if "current_setting('default_transaction_read_only')" in sql:
            return [{"v": self.read_only}]
        if "pg_terminate_backend" in sql:
            self.changes.append("terminate")
            killed, self.other_sessions = self.other_sessions, 0
            return [{"pid": i, "ok": True} for i in range(killed)]
        if "has_parameter_privilege" in sql:
            return [{"ok": self.alter_system}]
        if "quote_literal" in sql:
            return [{"lit": "'" + params[0].replace("'", "''") + "'"}]
        raise AssertionError(f"unexpected query: {sql}")

    def one(self, sql, params=None):
        rows = self.rows(sql, params)
        return rows[0] if rows else {}

    def run(self, sql, params=None):
        self.changes.append(sql)
        if sql.startswith("ALTER SYSTEM"):
            self.read_only = "on"
        if sql.startswith("ALTER DATABASE") and self.rename_errors:
            raise self.rename_errors.pop(0)

    def close(self):
        self.closed = True


def opts(**over):
    base = {"action": "info", "name": None, "new_name": None, "comment": None, "terminate": False, "force": False,
            "old_primary": None, "incident_time": None, "max_data_loss": None, "wait_timeout": 60,
            "tablespace": None, "path": None, "need": None}
    base.update(over)
    return validate(base)


# ---------------------------------------------------------------------------- helpers


def test_parse_lsn():
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn(None) is None


@pytest.mark.parametrize("message", [
    "cannot connect ...: connection failed: Connection refused; check ...",
    "connection to server at \"10.0.0.9\", port 5432 failed: timeout expired",
    "could not translate host name \"gone.internal\" to address: Name or service not known",
    "FATAL: the database system is shutting down",
])
def test_unreachable_errors(message):
    assert is_unreachable(message)


@pytest.mark.parametrize("message", [
    "FATAL: password authentication failed for user \"postgres\"",
    "FATAL: database \"nope\" does not exist",
    "FATAL: no pg_hba.conf entry for host",
])
def test_a_server_that_refuses_the_login_is_not_unreachable(message):
    assert not is_unreachable(message)


def test_tags():
    assert tagged(f"{SCRATCH_TAG} host=x pid=1 started=2026-11-23T00:00:00Z")
    assert tagged(f"{DR_TAG} drill 2026-11-23")
    assert not tagged("production since 2026-11-23")
    assert not tagged(None) and not tagged("")
    assert not tagged(f"restored: {DR_TAG}")


def test_data_loss_is_incident_minus_last_replay_never_negative():
    assert data_loss_seconds(T0, T0 + dt.timedelta(minutes=20)) == 1200.0
    assert data_loss_seconds(T0, T0 - dt.timedelta(seconds=5)) == 0.0
    assert data_loss_seconds(None, T0) is None


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("over", "message"), [
    ({"action": "explode"}, "unknown action 'explode'"),
    ({"action": "rename", "name": "a"}, "action=rename needs new_name"),
    ({"action": "drop"}, "action=drop needs name"),
    ({"action": "comment", "name": "a"}, "action=comment needs comment"),
    ({"action": "rename", "name": "a", "new_name": "a"}, "are both 'a'"),
    ({"action": "drop", "name": "x" * 64}, "longer than 63 bytes"),
    ({"action": "drop", "name": ""}, "non-empty database name"),
    ({"action": "drop", "name": "a\x00b"}, "NUL"),
    ({"action": "promote", "max_data_loss": "soon"}, "max_data_loss: invalid duration"),
    ({"action": "promote", "incident_time": "yesterday"}, "not an ISO 8601 time"),
    ({"action": "promote", "wait_timeout": 0}, "wait_timeout=0 is out of range"),
    ({"action": "space", "need": "lots"}, "need: invalid size"),
    ({"action": "space", "path": "/tmp", "tablespace": "fast"}, "mutually exclusive"),
    ({"action": "fence", "old_primary": {"login_host": "x"}}, "old_primary only applies to action=promote"),
])
def test_bad_input_is_refused_with_a_reason(over, message):
    with pytest.raises(PgDrError, match=message.replace("(", r"\(").replace(")", r"\)")):
        opts(**over)


def test_validation_parses_durations_sizes_and_times():
    got = opts(action="promote", max_data_loss="15m", incident_time="2026-11-23T03:12:00", need="2GiB")
    assert got["max_data_loss"] == 900.0
    assert got["need"] == 2 * 1024 ** 3
    assert got["incident_time"] == dt.datetime(2026, 11, 23, 3, 12, tzinfo=UTC)  # no zone means UTC


# ---------------------------------------------------------------------------- promote


def measured(**over):
    base = {"data_loss_seconds": 10.0, "last_replay_at": "t", "incident_time": "i",
            "wal_receiver": {"status": None, "sender": None}}
    base.update(over)
    return base


def old(**over):
    base = {"target": "db1:5432", "reachable": True, "refused_login": False, "in_recovery": False,
            "read_only": False, "lsn": "0/1"}
    base.update(over)
    return base


def test_guard_refuses_a_writable_old_primary():
    reasons = promote_guard(measured(), old(), opts(action="promote"))
    assert reasons == ["old primary at db1:5432 is alive and accepts writes: fence it first (action=fence) or stop it; "
                       "promoting now would make two primaries"]


@pytest.mark.parametrize("state", [
    {"read_only": True}, {"in_recovery": True},
    {"reachable": False, "refused_login": False, "error": "Connection refused"},
])
def test_guard_accepts_a_fenced_demoted_or_dead_old_primary(state):
    assert promote_guard(measured(), old(**state), opts(action="promote")) == []


def test_guard_refuses_an_old_primary_that_answers_but_refuses_the_login():
    denied = old(reachable=False, refused_login=True, error="password authentication failed")
    reasons = promote_guard(measured(), denied, opts(action="promote"))
    assert len(reasons) == 1 and "answers but the login failed" in reasons[0]


def test_guard_refuses_while_the_standby_still_streams_unless_the_old_primary_was_checked():
    streaming = measured(wal_receiver={"status": "streaming", "sender": "10.0.0.5:5432"})
    reasons = promote_guard(streaming, None, opts(action="promote"))
    assert len(reasons) == 1 and "still streaming WAL from 10.0.0.5:5432" in reasons[0]
    assert promote_guard(streaming, old(read_only=True), opts(action="promote")) == []
    unreachable_from_here = old(reachable=False, error="timeout expired")
    assert len(promote_guard(streaming, unreachable_from_here, opts(action="promote"))) == 1


def test_guard_max_data_loss():
    limit = opts(action="promote", max_data_loss="15m")
    assert promote_guard(measured(data_loss_seconds=900.0), None, limit) == []
    over = promote_guard(measured(data_loss_seconds=901.0), None, limit)
    assert len(over) == 1 and "more than max_data_loss 15 min" in over[0]
    unknown = promote_guard(measured(data_loss_seconds=None), None, limit)
    assert len(unknown) == 1 and "cannot measure the data loss" in unknown[0]
    assert promote_guard(measured(data_loss_seconds=None), None, opts(action="promote")) == []


def test_promote_a_primary_is_a_no_op():
    client = FakeClient(in_recovery=False)
    result = core.promote(client, opts(action="promote"), check_mode=False)
    assert result["changed"] is False and result["promoted"] is False
    assert client.changes == []


def promote_opts(**over):
    return opts(action="promote", incident_time="2026-11-23T03:10:00Z", **over)


def test_promote_check_mode_measures_decides_and_changes_nothing():
    client = FakeClient(in_recovery=True)
    checked = core.promote(client, promote_opts(), check_mode=True)
    assert client.changes == []
    assert checked["changed"] is True and checked["promoted"] is True
    assert checked["lag_bytes"] == 0x100
    assert checked["data_loss_seconds"] == 600.0
    assert checked["last_replay_at"] == "2026-11-23T03:00:00.000Z"
    real = core.promote(FakeClient(in_recovery=True), promote_opts(), check_mode=False, clock=iter([1.0, 1.5]).__next__)
    assert checked.pop("msg") == "would promote: WAL received but not replayed 256 B, data loss at most 10 min"
    assert real.pop("msg") == ("promoted in 0.5 s to timeline 2: WAL received but not replayed 256 B, data loss at "
                               "most 10 min; after replaying what it had received: 10 min")
    assert {k: real[k] for k in checked} == checked
    assert real["timeline"] == 2 and real["promote_seconds"] == 0.5 and real["in_recovery"] is False
    assert real["final_data_loss_seconds"] == 595.0


def test_promote_refusal_changes_nothing_and_force_overrides():
    limit = promote_opts(max_data_loss="5m")
    client = FakeClient(in_recovery=True)
    with pytest.raises(PgDrError, match="more than max_data_loss") as err:
        core.promote(client, limit, check_mode=False)
    assert client.changes == [] and err.value.result["promoted"] is False
    forced = core.promote(FakeClient(in_recovery=True), dict(limit, force=True), check_mode=False)
    assert forced["promoted"] is True and len(forced["forced"]) == 1


def test_promote_checks_the_old_primary_and_measures_what_it_has():
    def connect_old():
        return FakeClient(in_recovery=False, read_only="on")
    result = core.promote(FakeClient(in_recovery=True), promote_opts(), check_mode=True, connect_old=connect_old,
                          old_target="db1:5432")
    assert result["old_primary"]["read_only"] is True
    assert result["old_primary"]["unreceived_bytes"] == 0x100  # 0/3000300 - 0/3000200

    def gone():
        raise ConnectFailed("cannot connect: Connection refused")
    result = core.promote(FakeClient(in_recovery=True), promote_opts(), check_mode=True, connect_old=gone)
    assert result["old_primary"]["reachable"] is False and result["promoted"] is True


def test_paused_replay_is_resumed_only_before_14():
    on_15 = FakeClient(in_recovery=True, standby={"replay_paused": True})
    core.promote(on_15, promote_opts(), check_mode=False)
    assert not any("resume" in c for c in on_15.changes)
    on_13 = FakeClient(in_recovery=True, version_num=130010, standby={"replay_paused": True})
    result = core.promote(on_13, promote_opts(), check_mode=False)
    assert on_13.changes[0] == "SELECT pg_catalog.pg_wal_replay_resume()" and result["replay_resumed"] is True


def test_promote_that_does_not_finish_fails_honestly():
    with pytest.raises(PgDrError, match="still in recovery after 60 s") as err:
        core.promote(FakeClient(in_recovery=True, promote_ok=False, stays_in_recovery=True), promote_opts(),
                     check_mode=False)
    assert err.value.result["promoted"] is False


# ---------------------------------------------------------------------------- fence


def test_fence_plan():
    assert core.fence_plan(False, 3) == ["set_read_only", "terminate_sessions"]
    assert core.fence_plan(True, 0) == []


def test_fence_sets_read_only_terminates_then_is_idempotent():
    client = FakeClient(other_sessions=2)
    checked = core.fence(lambda: client, opts(action="fence"), check_mode=True, target="db1:5432")
    assert client.changes == [] and checked["changed"] is True and checked["terminated"] == 2
    real = core.fence(lambda: client, opts(action="fence"), check_mode=False, target="db1:5432")
    assert real == checked
    assert client.changes[:2] == ["ALTER SYSTEM SET default_transaction_read_only = on",
                                  "SELECT pg_catalog.pg_reload_conf()"]
    again = core.fence(lambda: client, opts(action="fence"), check_mode=False, target="db1:5432")
    assert again["changed"] is False and again["fenced"] is True and again["actions"] == []


def test_fence_unreachable_is_reported_not_failed():
    def gone():
        raise ConnectFailed("cannot connect to PostgreSQL as postgres@db1:5432/postgres: Connection refused; check")
    result = core.fence(gone, opts(action="fence"), check_mode=False, target="db1:5432")
    assert result == {"changed": False, "reachable": False, "fenced": False, "msg": result["msg"]}
    assert "could not be reached" in result["msg"] and "make sure it stays down" in result["msg"]


def test_fence_a_server_that_refuses_the_login_fails():
    def denied():
        raise ConnectFailed("cannot connect: FATAL: password authentication failed for user \"postgres\"")
    with pytest.raises(PgDrError, match="it answers but the login failed"):
        core.fence(denied, opts(action="fence"), check_mode=False, target="db1:5432")


def test_fence_a_standby_has_nothing_to_do():
    client = FakeClient(in_recovery=True)
    result = core.fence(lambda: client, opts(action="fence"), check_mode=False, target="db1:5432")
    assert result["changed"] is False and result["fenced"] is False and client.changes == []


# ---------------------------------------------------------------------------- rename / drop / comment


def db(exists=True, connections=0, comment=None):
    return {"exists": exists, "connections": connections, "comment": comment, "tagged": tagged(comment)}


@pytest.mark.parametrize(("old_db", "new_db", "terminate", "expected"), [
    (db(), db(False), False, ["rename"]),
    (db(connections=2), db(False), True, ["terminate_sessions", "rename"]),
    (db(False), db(), False, []),
])
def test_rename_plan(old_db, new_db, terminate, expected):
    assert rename_plan("app", "app_old", old_db, new_db, terminate) == expected


@pytest.mark.parametrize(("old_db", "new_db", "terminate", "message"), [
    (db(), db(), True, "'app_old' already exists"),
    (db(False), db(False), False, "neither 'app' nor 'app_old' exists"),
    (db(connections=3), db(False), False, "'app' has 3 connected session"),
])
def test_rename_refusals(old_db, new_db, terminate, message):
    with pytest.raises(PgDrError, match=message):
        rename_plan("app", "app_old", old_db, new_db, terminate)


def test_rename_refuses_the_connected_database():
    client = FakeClient(current_db="app", databases={"app": {}})
    with pytest.raises(PgDrError, match="the module is connected to it"):
        core.rename(client, opts(action="rename", name="app", new_name="app_old"), check_mode=False)
    assert client.changes == []


class InUse(Exception):
    sqlstate = "55006"


def test_rename_retries_when_sessions_reconnect():
    client = FakeClient(databases={"app": {"connections": 1}}, rename_errors=[InUse("being accessed")])
    result = core.rename(client, opts(action="rename", name="app", new_name="app_old", terminate=True),
                         check_mode=False, sleep=lambda s: None)
    assert result["renamed"] is True
    assert [c for c in client.changes if c.startswith("ALTER DATABASE")] == [
        'ALTER DATABASE "app" RENAME TO "app_old"'] * 2


def test_rename_without_terminate_reports_a_session_that_came_meanwhile():
    client = FakeClient(databases={"app": {}}, rename_errors=[InUse("being accessed")])
    with pytest.raises(PgDrError, match="connected to it meanwhile"):
        core.rename(client, opts(action="rename", name="app", new_name="app_old"), check_mode=False)


def test_rename_quotes_identifiers():
    client = FakeClient(databases={'we"ird': {}})
    core.rename(client, opts(action="rename", name='we"ird', new_name="x y"), check_mode=False)
    assert client.changes == ['ALTER DATABASE "we""ird" RENAME TO "x y"']


@pytest.mark.parametrize("comment", [f"{SCRATCH_TAG} host=h pid=1 started=x", f"{DR_TAG} drill"])
def test_drop_tagged(comment):
    client = FakeClient(databases={"app_dr": {"comment": comment}})
    checked = core.drop(client, opts(action="drop", name="app_dr"), check_mode=True)
    assert client.changes == [] and checked["changed"] is True
    core.drop(client, opts(action="drop", name="app_dr"), check_mode=False)
    assert client.changes == ['DROP DATABASE "app_dr" WITH (FORCE)']


def test_drop_untagged_needs_force():
    client = FakeClient(databases={"app": {"comment": "production"}})
    with pytest.raises(PgDrError, match="app does not carry the ops.runbooks tag: it was not created by a DR run; "
                                        "refusing to drop it; use force: true if you are sure"):
        core.drop(client, opts(action="drop", name="app"), check_mode=False)
    assert client.changes == []
    core.drop(client, opts(action="drop", name="app", force=True), check_mode=False)
    assert client.changes == ['DROP DATABASE "app" WITH (FORCE)']


def test_drop_missing_is_ok():
    result = core.drop(FakeClient(), opts(action="drop", name="gone"), check_mode=False)
    assert result["changed"] is False and result["dropped"] is False


def test_comment_is_idempotent_and_can_be_removed():
    client = FakeClient(databases={"app": {"comment": "old"}})
    assert core.comment(client, opts(action="comment", name="app", comment="old"), False)["changed"] is False
    core.comment(client, opts(action="comment", name="app", comment="it's new"), False)
    core.comment(client, opts(action="comment", name="app", comment=""), False)
    assert client.changes == ["COMMENT ON DATABASE \"app\" IS 'it''s new'", 'COMMENT ON DATABASE "app" IS NULL']
    none = FakeClient(databases={"app": {"comment": None}})
    assert core.comment(none, opts(action="comment", name="app", comment=""), False)["changed"] is False
    with pytest.raises(PgDrError, match="'gone' does not exist"):
        core.comment(none, opts(action="comment", name="gone", comment="x"), False)


# ---------------------------------------------------------------------------- space


def fake_statvfs(free_blocks, blocks=1000):
    return lambda path: SimpleNamespace(f_bavail=free_blocks, f_frsize=4096, f_blocks=blocks)


def test_space_enough_and_not_enough():
    ok = core.space(None, opts(action="space", path="/data", need="100kB"), statvfs=fake_statvfs(100),
                    exists=lambda p: True)
    assert ok["free_bytes"] == 409600 and ok["total_bytes"] == 4096000 and ok["enough"] is True
    with pytest.raises(PgDrError, match=r"only 409.6 kB free \(409600 bytes\) on /data, the restore needs 1.0 MB") \
            as err:
        core.space(None, opts(action="space", path="/data", need="1MB"), statvfs=fake_statvfs(100),
                   exists=lambda p: True)
    assert err.value.result["enough"] is False


def test_space_on_the_wrong_host_says_to_delegate():
    with pytest.raises(PgDrError, match="does not exist on ctl: run this task on the database host"):
        core.space(None, opts(action="space", path="/var/lib/postgresql"), exists=lambda p: False, host="ctl")


def test_space_default_tablespace_reads_the_data_directory():
    class TsClient(FakeClient):
        def rows(self, sql, params=None):
            if "pg_dr:tablespace" in sql:
                return [{"name": "pg_default", "location": ""}]
            if "data_directory" in sql:
                return [{"d": os.sep}]
            return super().rows(sql, params)
    result = core.space(TsClient, opts(action="space"))
    assert result["path"] == os.sep and result["tablespace"] == "pg_default"


# ---------------------------------------------------------------------------- privileges: refused before any change


def test_promote_without_pg_promote_privilege_is_refused_in_check_mode_too():
    for check_mode in (True, False):
        client = FakeClient(in_recovery=True, can_promote=False)
        with pytest.raises(PgDrError, match="ops may not execute pg_promote"):
            core.promote(client, promote_opts(), check_mode=check_mode)
        assert client.changes == []


def test_fence_needs_alter_system():
    client = FakeClient(superuser=False)
    with pytest.raises(PgDrError, match="ops may not ALTER SYSTEM SET default_transaction_read_only"):
        core.fence(lambda: client, opts(action="fence"), check_mode=True, target="db1:5432")
    granted = FakeClient(superuser=False, alter_system=True)
    assert core.fence(lambda: granted, opts(action="fence"), check_mode=True, target="db1:5432")["changed"] is True
    on_14 = FakeClient(superuser=False, alter_system=True, version_num=140010)
    with pytest.raises(PgDrError, match="may not ALTER SYSTEM"):
        core.fence(lambda: on_14, opts(action="fence"), check_mode=True, target="db1:5432")


@pytest.mark.parametrize(("action", "over", "message"), [
    ("rename", {"new_name": "app_old"}, "cannot rename 'app': ops is neither its owner nor a superuser"),
    ("drop", {"force": True}, "cannot drop 'app': ops is neither its owner nor a superuser"),
    ("comment", {"comment": "x"}, "cannot comment on 'app': ops is neither its owner nor a superuser"),
])
def test_database_actions_need_the_owner(action, over, message):
    client = FakeClient(superuser=False, databases={"app": {}})
    with pytest.raises(PgDrError, match=message):
        getattr(core, action)(client, opts(action=action, name="app", **over), check_mode=True)
    assert client.changes == []


def test_rename_needs_createdb_even_for_the_owner():
    client = FakeClient(superuser=False, databases={"app": {"owner": True}})
    with pytest.raises(PgDrError, match="renaming a database needs CREATEDB"):
        core.rename(client, opts(action="rename", name="app", new_name="app_old"), check_mode=True)


# ---------------------------------------------------------------- action=query (smoke queries)

class _QueryClient:
    """Answers by SQL text; records every statement (the transaction framing included)."""

    def __init__(self, answers):
        self.answers = answers
        self.statements = []

    def run(self, sql, params=None):
        self.statements.append(sql)

    def rows(self, sql, params=None):
        self.statements.append(sql)
        answer = self.answers[sql]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_query_runs_each_smoke_query_read_only_and_reports_every_verdict():
    opts = core.validate({"action": "query", "wait_timeout": 30, "queries": [
        {"name": "users", "sql": "SELECT count(*) FROM users", "min_value": 1},
        {"name": "any", "sql": "SELECT 'x'"},
    ]})
    client = _QueryClient({"SELECT count(*) FROM users": [{"count": 5}], "SELECT 'x'": [{"?column?": "x"}]})
    result = core.query(client, opts)
    assert result["changed"] is False and result["failed_queries"] == 0
    assert [q["ok"] for q in result["queries"]] == [True, True] and result["queries"][0]["value"] == 5
    assert client.statements[:3] == ["BEGIN TRANSACTION READ ONLY", "SET LOCAL statement_timeout = 30000",
                                     "SELECT count(*) FROM users"]
    assert client.statements.count("ROLLBACK") == 2


def test_query_failure_below_min_error_and_no_row_all_reported():
    opts = core.validate({"action": "query", "wait_timeout": 5, "queries": [
        {"name": "low", "sql": "a", "min_value": 10},
        {"name": "boom", "sql": "b"},
        {"name": "empty", "sql": "c"},
        {"name": "text", "sql": "d", "min_value": 1},
    ]})
    client = _QueryClient({"a": [{"n": 3}], "b": RuntimeError("relation \"x\" does not exist"), "c": [],
                           "d": [{"v": "abc"}]})
    with pytest.raises(core.PgDrError) as err:
        core.query(client, opts)
    msg = str(err.value)
    assert "low: 3 < min_value 10" in msg and 'boom: failed: relation "x" does not exist' in msg
    assert "empty: returned no row" in msg and "not a number" in msg
    assert err.value.result["failed_queries"] == 4


@pytest.mark.parametrize("queries, needle", [
    (None, "needs queries"),
    ([], "needs queries"),
    ([{"sql": "select 1"}], "needs a name"),
    ([{"name": "a", "sql": ""}], "needs sql"),
    ([{"name": "a", "sql": "x"}, {"name": "a", "sql": "y"}], "used twice"),
    ([{"name": "a", "sql": "x", "min_value": "lots"}], "min_value must be a number"),
    ([{"name": "a", "sql": "x", "max": 1}], "unknown key"),
])
def test_query_bad_input(queries, needle):
    with pytest.raises(core.PgDrError, match=needle):
        core.validate({"action": "query", "queries": queries})


def test_queries_only_with_action_query():
    with pytest.raises(core.PgDrError, match="only applies to action=query"):
        core.validate({"action": "info", "queries": [{"name": "a", "sql": "x"}]})
