"""ops.runbooks.pg_dr through Ansible on a private PostgreSQL 15 primary + standby (pg_pair.py),
never the shared lab's: promote (check mode == real run, then no change), the split-brain guard,
fence then promote, max_data_loss with a paused replay, rename / drop / comment / space, a
bad-input table and a -vvv run that must not show the password."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pg_health_helpers
import psycopg
import pytest
from ansible_collections.ops.runbooks.plugins.module_utils._backup_verify import SCRATCH_TAG
from ansible_collections.ops.runbooks.plugins.module_utils._pg_dr import DR_TAG
from pg_pair import private_pair

UTC = dt.timezone.utc  # noqa: UP017
# What a check-mode run predicts and a real run must report identically.
PROMOTE_KEYS = ("changed", "promoted", "in_recovery", "receive_lsn", "replay_lsn", "lag_bytes", "last_replay_at",
                "replay_paused", "incident_time", "data_loss_seconds", "forced")


def adhoc(venv_bin, env, args: dict, *extra: str, check_mode: bool = False, diff: bool = False):
    """Run pg_dr once with `ansible localhost -m`; return (rc, module result, all output)."""
    return pg_health_helpers.adhoc(venv_bin, env, args, *extra, check_mode=check_mode, diff=diff,
                                   module="ops.runbooks.pg_dr")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def iso_in(seconds: float) -> str:
    return (dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)).isoformat()


def seed(pair, rows: int = 3) -> None:
    with pair.primary.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders SELECT g, 'seed' FROM generate_series(1, %s) g", (rows,))


def order_ids(node) -> list[int]:
    with node.connect() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id").fetchall()]


def assert_diff(out: str, before: dict, after: dict) -> None:
    """--diff output (Ansible prints it as a unified diff of the JSON, not in the result)."""
    for sign, values in (("-", before), ("+", after)):
        for key, value in values.items():
            line = f'{sign}    "{key}": {json.dumps(value)}'
            assert line in [x.rstrip(",") for x in out.splitlines()], f"{line!r} not in the diff output: {out[-2000:]}"


def no_traceback(out: str) -> None:
    assert "Traceback" not in out, out[-3000:]


@pytest.fixture
def pair():
    """A fresh pair per test: promoting and fencing cannot be undone."""
    with private_pair("pgdr") as fresh:
        yield fresh


@pytest.fixture(scope="module")
def dbpair():
    """One pair for the database-level actions (rename, drop, comment, space, info, bad input)."""
    with private_pair("pgdr-db") as shared:
        yield shared


# ---------------------------------------------------------------------------- promote


def test_promote_with_the_primary_stopped_check_mode_equals_real_run_then_no_change(venv_bin, ansible_env, pair):
    seed(pair, 5)
    pair.wait_replayed()
    pair.primary.stop()
    args = dict(pair.standby.params(), action="promote", incident_time=iso_in(0), max_data_loss="1h",
                old_primary=pair.primary.params(connect_timeout=3))

    rc, checked, out = adhoc(venv_bin, ansible_env, args, check_mode=True, diff=True)
    assert rc == 0, out[-3000:]
    assert pair.standby.in_recovery(), "check mode promoted the standby"
    rc, real, out = adhoc(venv_bin, ansible_env, args, diff=True)
    assert rc == 0, out[-3000:]
    assert_diff(out, {"in_recovery": True}, {"in_recovery": False})
    rc, again, out = adhoc(venv_bin, ansible_env, args)
    assert rc == 0, out[-3000:]

    assert {k: checked[k] for k in PROMOTE_KEYS} == {k: real[k] for k in PROMOTE_KEYS}
    assert real["changed"] is True and real["promoted"] is True and real["forced"] == []
    assert checked["msg"].startswith("would promote: WAL received but not replayed 0 B, data loss at most ")
    assert real["msg"].startswith("promoted in ") and " s to timeline 2: " in real["msg"]
    assert real["old_primary"]["reachable"] is False and real["old_primary"]["refused_login"] is False
    assert real["lag_bytes"] == 0 and real["receive_lsn"] == real["replay_lsn"]
    assert real["timeline"] == 2
    assert 0 <= real["data_loss_seconds"] < 3600
    assert again["changed"] is False and again["promoted"] is False
    assert "already a primary" in again["msg"]

    assert not pair.standby.in_recovery()
    with pair.standby.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (100, 'after failover')")
    assert order_ids(pair.standby) == [1, 2, 3, 4, 5, 100]


def test_split_brain_guard_refuses_while_the_old_primary_accepts_writes(venv_bin, ansible_env, pair):
    seed(pair)
    pair.wait_replayed()
    with_old = dict(pair.standby.params(), action="promote", old_primary=pair.primary.params())
    for check_mode in (True, False):
        rc, result, out = adhoc(venv_bin, ansible_env, with_old, check_mode=check_mode)
        assert rc != 0, out[-3000:]
        no_traceback(out)
        assert (f"old primary at 127.0.0.1:{pair.primary.port} is alive and accepts writes: fence it first "
                "(action=fence) or stop it; promoting now would make two primaries") in result["msg"]
        assert result["changed"] is False and result["promoted"] is False
        assert result["old_primary"]["read_only"] is False

    rc, result, out = adhoc(venv_bin, ansible_env, dict(pair.standby.params(), action="promote"))
    assert rc != 0, out[-3000:]
    assert f"still streaming WAL from 127.0.0.1:{pair.primary.port}" in result["msg"]
    assert pair.standby.in_recovery(), "a refused promotion promoted the standby"
    with pair.primary.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (10, 'still the primary')")


def test_fence_then_promote(venv_bin, ansible_env, pair):
    seed(pair)
    pair.wait_replayed()
    writer = pair.primary.connect(app="pgdr-app")  # an application session that would keep writing
    writer.execute("INSERT INTO orders VALUES (20, 'before fence')")
    fence = dict(pair.primary.params(), action="fence")
    try:
        rc, checked, out = adhoc(venv_bin, ansible_env, fence, check_mode=True, diff=True)
        assert rc == 0, out[-3000:]
        writer.execute("INSERT INTO orders VALUES (21, 'check mode changed nothing')")
        rc, real, out = adhoc(venv_bin, ansible_env, fence, diff=True)
        assert rc == 0, out[-3000:]
        assert checked == real
        assert real["changed"] is True and real["fenced"] is True and real["reachable"] is True
        assert real["actions"] == ["set_read_only", "terminate_sessions"] and real["terminated"] == 1
        assert_diff(out, {"default_transaction_read_only": "off", "client_sessions": 1},
                    {"default_transaction_read_only": "on", "client_sessions": 0})
        with pytest.raises(psycopg.OperationalError):
            writer.execute("INSERT INTO orders VALUES (22, 'after fence')")
    finally:
        writer.close()

    with pair.primary.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("INSERT INTO orders VALUES (23, 'new session after fence')")
    rc, again, out = adhoc(venv_bin, ansible_env, fence)
    assert rc == 0, out[-3000:]
    assert again["changed"] is False and again["fenced"] is True and again["terminated"] == 0

    pair.wait_replayed()
    rc, promoted, out = adhoc(venv_bin, ansible_env, dict(pair.standby.params(), action="promote",
                                                          old_primary=pair.primary.params()))
    assert rc == 0, out[-3000:]
    assert promoted["promoted"] is True and promoted["forced"] == []
    assert promoted["old_primary"]["read_only"] is True and promoted["old_primary"]["unreceived_bytes"] == 0
    assert order_ids(pair.standby) == [1, 2, 3, 20, 21]

    pair.primary.stop()  # the fence is in postgresql.auto.conf: a restarted old primary still refuses writes
    pair.primary.start()
    assert pair.primary.query("SHOW default_transaction_read_only")[0] == "on"


def test_max_data_loss_refuses_then_force_promotes_and_replays_the_paused_wal(venv_bin, ansible_env, pair):
    seed(pair)
    pair.wait_replayed()
    pair.standby.query("SELECT pg_wal_replay_pause()")
    with pair.primary.connect() as conn:
        conn.execute("INSERT INTO orders SELECT g, 'while paused' FROM generate_series(4, 50) g")
    pair.wait_received()
    pair.primary.stop()
    args = dict(pair.standby.params(), action="promote", incident_time=iso_in(3600), max_data_loss="30m")

    rc, refused, out = adhoc(venv_bin, ansible_env, args)
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert "more than max_data_loss 30 min" in refused["msg"] and "force=true" in refused["msg"]
    assert refused["changed"] is False and refused["promoted"] is False
    assert refused["replay_paused"] is True and refused["lag_bytes"] > 0
    assert refused["data_loss_seconds"] > 1800
    assert pair.standby.in_recovery()
    assert pair.standby.query("SELECT pg_is_wal_replay_paused()")[0] is True

    rc, forced, out = adhoc(venv_bin, ansible_env, dict(args, force=True))
    assert rc == 0, out[-3000:]
    assert forced["promoted"] is True and len(forced["forced"]) == 1
    assert "max_data_loss" in forced["forced"][0]
    assert forced["final_replay_at"] > forced["last_replay_at"]  # the promotion replayed the paused WAL
    assert order_ids(pair.standby) == list(range(1, 51))


# ---------------------------------------------------------------------------- fence edge cases


def test_fence_unreachable_and_standby_are_not_failures(venv_bin, ansible_env, dbpair):
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_port=closed_port()),
                                                        action="fence"))
    assert rc == 0, out[-3000:]
    assert result["changed"] is False and result["reachable"] is False and result["fenced"] is False
    assert "could not be reached" in result["msg"] and "make sure it stays down" in result["msg"]

    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.standby.params(), action="fence"))
    assert rc == 0, out[-3000:]
    assert result["changed"] is False and result["fenced"] is False and result["in_recovery"] is True
    assert "no primary to fence" in result["msg"]


# ---------------------------------------------------------------------------- database actions


@pytest.fixture
def dbname(dbpair, request):
    name = f"pgdr_{request.node.name[5:25]}"
    with dbpair.primary.connect() as conn:
        for suffix in ("", "_old", "_other"):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}{suffix}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with dbpair.primary.connect() as conn:
        for suffix in ("", "_old", "_other"):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}{suffix}" WITH (FORCE)')


def exists(node, name: str) -> bool:
    return node.query("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))[0] == 1


def test_rename_needs_terminate_when_sessions_are_connected(venv_bin, ansible_env, dbpair, dbname):
    new = f"{dbname}_old"
    args = dict(dbpair.primary.params(), action="rename", name=dbname, new_name=new)
    app = dbpair.primary.connect(dbname=dbname, app="pgdr-app")
    try:
        rc, result, out = adhoc(venv_bin, ansible_env, args)
        assert rc != 0, out[-3000:]
        assert f"'{dbname}' has 1 connected session(s)" in result["msg"] and "terminate=true" in result["msg"]
        assert exists(dbpair.primary, dbname) and not exists(dbpair.primary, new)

        rc, checked, out = adhoc(venv_bin, ansible_env, dict(args, terminate=True), check_mode=True, diff=True)
        assert rc == 0, out[-3000:]
        assert exists(dbpair.primary, dbname) and not exists(dbpair.primary, new)
        app.execute("SELECT 1")  # check mode terminated nothing
        rc, real, out = adhoc(venv_bin, ansible_env, dict(args, terminate=True), diff=True)
        assert rc == 0, out[-3000:]
        assert checked == real
        assert real["changed"] is True and real["renamed"] is True and real["terminated"] == 1
        assert_diff(out, {"database": dbname, "sessions": 1}, {"database": new, "sessions": 0})
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    finally:
        app.close()
    assert not exists(dbpair.primary, dbname) and exists(dbpair.primary, new)
    rc, again, out = adhoc(venv_bin, ansible_env, dict(args, terminate=True))
    assert rc == 0, out[-3000:]
    assert again["changed"] is False and "already renamed" in again["msg"]


def test_rename_without_sessions_and_its_refusals(venv_bin, ansible_env, dbpair, dbname):
    other = f"{dbname}_other"
    with dbpair.primary.connect() as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="rename", name=dbname,
                                                        new_name=other))
    assert rc != 0, out[-3000:]
    assert f"'{other}' already exists" in result["msg"] and "nothing was changed" in result["msg"]
    assert exists(dbpair.primary, dbname) and exists(dbpair.primary, other)

    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_db=dbname), action="rename",
                                                        name=dbname, new_name=f"{dbname}_old"))
    assert rc != 0, out[-3000:]
    assert "the module is connected to it; set login_db to another database" in result["msg"]

    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="rename", name=dbname,
                                                        new_name=f"{dbname}_old"))
    assert rc == 0, out[-3000:]
    assert result["changed"] is True and result["terminated"] == 0 and result["actions"] == ["rename"]
    assert exists(dbpair.primary, f"{dbname}_old")


def test_drop_only_tagged_databases_unless_forced(venv_bin, ansible_env, dbpair, dbname):
    args = dict(dbpair.primary.params(), action="drop", name=dbname)
    rc, result, out = adhoc(venv_bin, ansible_env, args)
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert result["msg"].startswith(f"{dbname} does not carry the ops.runbooks tag: it was not created by a DR run; "
                                    "refusing to drop it; use force: true if you are sure")
    assert exists(dbpair.primary, dbname)

    for tag in (f"{DR_TAG} drill 2026-11-23", f"{SCRATCH_TAG} host=x pid=1 started=2026-11-23T00:00:00Z"):
        with dbpair.primary.connect() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}_other"')
            conn.execute(f"COMMENT ON DATABASE \"{dbname}_other\" IS '{tag}'")
        holder = dbpair.primary.connect(dbname=f"{dbname}_other", app="pgdr-app")
        try:
            tagged_args = dict(args, name=f"{dbname}_other")
            rc, checked, out = adhoc(venv_bin, ansible_env, tagged_args, check_mode=True)
            assert rc == 0 and checked["changed"] is True and exists(dbpair.primary, f"{dbname}_other"), out[-3000:]
            rc, real, out = adhoc(venv_bin, ansible_env, tagged_args)
            assert rc == 0, out[-3000:]
            assert real["dropped"] is True and real == checked
            assert not exists(dbpair.primary, f"{dbname}_other")
        finally:
            holder.close()
        rc, again, out = adhoc(venv_bin, ansible_env, tagged_args)
        assert rc == 0 and again["changed"] is False, out[-3000:]

    rc, forced, out = adhoc(venv_bin, ansible_env, dict(args, force=True))
    assert rc == 0 and forced["dropped"] is True, out[-3000:]
    assert not exists(dbpair.primary, dbname)


def test_comment_is_idempotent_and_tags_for_drop(venv_bin, ansible_env, dbpair, dbname):
    args = dict(dbpair.primary.params(), action="comment", name=dbname, comment=f"{DR_TAG} drill it's mine")
    rc, checked, out = adhoc(venv_bin, ansible_env, args, check_mode=True, diff=True)
    assert rc == 0, out[-3000:]
    assert dbpair.primary.query("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                                (dbname,))[0] is None
    rc, real, out = adhoc(venv_bin, ansible_env, args, diff=True)
    assert rc == 0 and real == checked, out[-3000:]
    assert real["changed"] is True and real["tagged"] is True
    assert_diff(out, {}, {"comment": f"{DR_TAG} drill it's mine"})
    rc, again, out = adhoc(venv_bin, ansible_env, args)
    assert rc == 0 and again["changed"] is False, out[-3000:]

    rc, info, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="info", name=dbname))
    assert rc == 0, out[-3000:]
    assert info["database"]["comment"] == f"{DR_TAG} drill it's mine" and info["database"]["tagged"] is True

    rc, untag, out = adhoc(venv_bin, ansible_env, dict(args, comment="production since the restore"))
    assert rc == 0 and untag["changed"] is True and untag["tagged"] is False, out[-3000:]
    rc, refused, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="drop", name=dbname))
    assert rc != 0 and "does not carry the ops.runbooks tag" in refused["msg"], out[-3000:]


def test_info_on_the_standby_and_on_a_database(venv_bin, ansible_env, dbpair, dbname):
    holder = dbpair.primary.connect(dbname=dbname, app="pgdr-app")
    try:
        rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="info", name=dbname),
                                check_mode=True)
    finally:
        holder.close()
    assert rc == 0, out[-3000:]
    assert result["changed"] is False and result["in_recovery"] is False and result["read_only"] is False
    assert result["server_version"].startswith("15.") and result["current_lsn"]
    assert result["database"]["exists"] is True and result["database"]["connections"] == 1
    assert result["database"]["size_bytes"] > 1_000_000 and result["database"]["owned"] is True

    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.standby.params(), action="info", name="nope"))
    assert rc == 0, out[-3000:]
    assert result["in_recovery"] is True and result["standby"]["wal_receiver"]["status"] == "streaming"
    assert result["database"] == {"name": "nope", "exists": False, "size_bytes": None, "comment": None,
                                  "connections": 0, "tagged": False, "owned": False}


def test_space_of_the_default_tablespace_and_of_a_path(venv_bin, ansible_env, dbpair):
    rc, ok, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="space", need="1MB"))
    assert rc == 0, out[-3000:]
    assert ok["changed"] is False and ok["path"] == str(dbpair.primary.data_dir) and ok["tablespace"] == "pg_default"
    assert 1_000_000 <= ok["free_bytes"] <= ok["total_bytes"] and ok["enough"] is True

    rc, short, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="space", need="1000TB"))
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert re.search(rf"only [\d.]+ [kMGT]?B free \(\d+ bytes\) on {re.escape(str(dbpair.primary.data_dir))} "
                     r"\(tablespace pg_default\), the restore needs 1000.0 TB", short["msg"]), short["msg"]
    assert "free space on that filesystem" in short["msg"] and short["enough"] is False

    rc, by_path, out = adhoc(venv_bin, ansible_env, {"action": "space", "path": str(dbpair.base), "need": "1kB"})
    assert rc == 0 and by_path["tablespace"] is None and by_path["free_bytes"] > 0, out[-3000:]

    rc, elsewhere, out = adhoc(venv_bin, ansible_env, {"action": "space", "path": "/nonexistent/pgdata"})
    assert rc != 0, out[-3000:]
    assert "/nonexistent/pgdata does not exist on" in elsewhere["msg"] and "delegate_to" in elsewhere["msg"]


def test_missing_privileges_are_refused_before_anything_changes(venv_bin, ansible_env, dbpair, dbname):
    role, password = f"{dbname}_plain"[:40], "plain-" + dbpair.primary.password[-8:]
    with dbpair.primary.connect() as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        conn.execute(f"COMMENT ON DATABASE \"{dbname}\" IS '{DR_TAG} drill'")
    try:
        plain = {"login_user": role, "login_password": password}
        rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(**plain), action="fence"),
                                check_mode=True)
        assert rc != 0 and f"{role} may not ALTER SYSTEM SET default_transaction_read_only" in result["msg"], out
        rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(**plain), action="drop",
                                                            name=dbname))
        assert rc != 0 and f"{role} is neither its owner nor a superuser" in result["msg"], out[-3000:]
        assert exists(dbpair.primary, dbname)
        dbpair.wait_replayed()
        rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.standby.params(**plain), action="promote",
                                                            force=True), check_mode=True)
        assert rc != 0 and f"{role} may not execute pg_promote()" in result["msg"], out[-3000:]

        with dbpair.primary.connect() as conn:
            conn.execute(f'GRANT ALTER SYSTEM ON PARAMETER default_transaction_read_only TO "{role}"')
        rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(**plain), action="fence"),
                                check_mode=True)
        assert rc == 0 and result["changed"] is True and result["fenced"] is True, out[-3000:]
        assert dbpair.primary.query("SHOW default_transaction_read_only")[0] == "off"
    finally:
        with dbpair.primary.connect() as conn:
            conn.execute(f'REVOKE ALTER SYSTEM ON PARAMETER default_transaction_read_only FROM "{role}"')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


# ---------------------------------------------------------------------------- bad input


BAD_INPUT = [
    ("wrong type wait_timeout", {"action": "promote", "wait_timeout": "soon"}, "wait_timeout"),
    ("wrong type terminate", {"action": "rename", "name": "a", "new_name": "b", "terminate": "perhaps"}, "terminate"),
    # ansible-core names neither the option nor the value here; nothing the module can add before it runs
    ("wrong type old_primary", {"action": "promote", "old_primary": "db1"}, "dictionary requested"),
    ("unknown action", {"action": "explode"}, "value of action must be one of"),
    ("missing name", {"action": "drop"}, "action=drop needs name"),
    ("missing new_name", {"action": "rename", "name": "x"}, "action=rename needs new_name"),
    ("bad duration", {"action": "promote", "max_data_loss": "a while"}, "max_data_loss: invalid duration"),
    ("bad size", {"action": "space", "need": "plenty"}, "need: invalid size"),
    ("bad incident time", {"action": "promote", "incident_time": "last night"}, "is not an ISO 8601 time"),
    ("name too long", {"action": "drop", "name": "x" * 70}, "longer than 63 bytes"),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_fails_with_a_reason_and_no_traceback(venv_bin, ansible_env, dbpair, case, args, message):
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), **args))
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert message in result.get("msg", ""), (case, result.get("msg"), out[-2000:])
    assert result.get("changed") is False
    assert dbpair.primary.password not in out


def test_unreachable_host_and_wrong_password(venv_bin, ansible_env, dbpair):
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_port=closed_port()),
                                                        action="info"))
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert "cannot connect to PostgreSQL" in result["msg"] and "check that PostgreSQL is running" in result["msg"]

    wrong = "wrong-" + dbpair.primary.password[::-1]
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_password=wrong), action="drop",
                                                        name="postgres"))
    assert rc != 0, out[-3000:]
    no_traceback(out)
    assert "password authentication failed" in result["msg"] and "check login_user and login_password" in result["msg"]
    assert wrong not in out

    # a fence target that answers but refuses the login is alive: that must fail, not pass as "unreachable"
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_password=wrong), action="fence"))
    assert rc != 0 and "it answers but the login failed" in result["msg"], out[-3000:]
    assert wrong not in out


def test_dangerous_values_change_nothing(venv_bin, ansible_env, dbpair, dbname):
    with dbpair.primary.connect() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}_other"')
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="drop", name=dbname))
    assert rc != 0 and "refusing to drop it" in result["msg"], out[-3000:]
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(), action="rename", name=dbname,
                                                        new_name=f"{dbname}_other", terminate=True))
    assert rc != 0 and "already exists" in result["msg"], out[-3000:]
    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_db=dbname), action="drop",
                                                        name=dbname, force=True))
    assert rc != 0 and "the module is connected to it" in result["msg"], out[-3000:]
    assert exists(dbpair.primary, dbname) and exists(dbpair.primary, f"{dbname}_other")


def test_passwords_never_appear_at_vvv(venv_bin, ansible_env, dbpair):
    secret = dbpair.primary.password
    dsn = (f"postgresql://{dbpair.primary.user}:{secret}@{dbpair.primary.host}:{dbpair.primary.port}/postgres"
           "?sslmode=disable")
    args = dict(dbpair.standby.params(), action="promote", old_primary={"dsn": dsn})
    rc, result, out = adhoc(venv_bin, ansible_env, args, "-vvv", check_mode=True)
    assert rc != 0 and "is alive and accepts writes" in result["msg"], out[-3000:]
    assert "login_password" in out, "the -vvv output does not show the module arguments at all"
    at = out.find(secret)
    assert at < 0, f"secret leaked here: ...{out[max(0, at - 800):at + 80]}..."

    rc, result, out = adhoc(venv_bin, ansible_env, dict(dbpair.primary.params(login_password=secret + "x"),
                                                        action="info"), "-vvv")
    assert rc != 0 and secret not in out


# ---------------------------------------------------------------------------- the pair helper itself


def test_private_pair_streams_and_leaves_nothing_behind():
    from lab import core as labcore

    with private_pair("pgdr-self") as fresh:
        nodes = (fresh.primary, fresh.standby)
        pids = [node.pid() for node in nodes]
        assert fresh.standby.in_recovery() and not fresh.primary.in_recovery()
        seed(fresh, 2)
        fresh.wait_replayed()
        assert order_ids(fresh.standby) == [1, 2]
        fresh.standby.stop()
        assert not fresh.standby.running()
        fresh.standby.start()
        fresh.wait_streaming()
    assert not fresh.base.exists()
    assert all(not labcore.pid_alive(pid) for pid in pids)
    assert not any(labcore.port_open(node.port) for node in nodes)  # nothing listens (TIME_WAIT may linger)


def test_space_of_a_small_tablespace_refuses_a_restore_that_does_not_fit(venv_bin, ansible_env):
    """A real 8 MiB filesystem (tmpfs) as a tablespace: the restore target out of disk, for real."""
    from pg_health_helpers import params_for, private_postgres, session

    base = Path(tempfile.mkdtemp(prefix="pgdr-ts-"))  # not under pytest's tmp: the postgres user must reach it
    base.chmod(0o755)
    mnt = base / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700,uid=postgres,gid=postgres", "tmpfs",
                              str(mnt)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        with private_postgres() as node:
            with session(node, "pgdr-test") as conn:
                conn.execute(f"CREATE TABLESPACE pgdr_small LOCATION '{mnt}'")
            args = dict({k: v for k, v in params_for(node).items() if v is not None}, action="space",
                        tablespace="pgdr_small")
            try:
                rc, short, out = adhoc(venv_bin, ansible_env, dict(args, need="20MB"))
                assert rc != 0, out[-3000:]
                no_traceback(out)
                assert re.search(rf"only [\d.]+ MB free \(\d+ bytes\) on {re.escape(str(mnt))} \(tablespace "
                                 r"pgdr_small\), the restore needs 20.0 MB", short["msg"]), short["msg"]
                assert short["total_bytes"] == 8 * 1024 * 1024 and short["enough"] is False

                rc, fits, out = adhoc(venv_bin, ansible_env, dict(args, need="1MB"))
                assert rc == 0, out[-3000:]
                assert fits["path"] == str(mnt) and fits["tablespace"] == "pgdr_small" and fits["enough"] is True

                rc, missing, out = adhoc(venv_bin, ansible_env, dict(args, tablespace="pgdr_nope"))
                assert rc != 0 and "tablespace 'pgdr_nope' does not exist" in missing["msg"], out[-3000:]
            finally:
                with session(node, "pgdr-test") as conn:
                    conn.execute("DROP TABLESPACE IF EXISTS pgdr_small")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
