"""Every pg_health check against real trouble made on the shared lab primary/standby.

Each test creates its own trouble (sessions marked `pgh-test-<token>`, a private database
`pgh_<token>`, a uniquely named slot or role) and finds *that* trouble in the result, so
other helpers' concurrent load on the shared lab cannot make it pass or fail. Everything is
removed in finalizers; WAL replay paused on the shared standby is always resumed.
"""

from __future__ import annotations

# Table names are generated tokens, never user input.
# ruff: noqa: S608
import contextlib

import pytest
from pg_health_helpers import close_quietly, params_for, run_core, send_async, session, token, wait_until


@pytest.fixture(scope="module")
def primary(pg_lab):
    return pg_lab["primary"]


@pytest.fixture(scope="module")
def standby(pg_lab):
    return pg_lab["standby"]


@pytest.fixture(scope="module")
def dbname(primary):
    """A private database on the shared primary, dropped (with its sessions) at the end."""
    name = f"pgh_{token()}"
    with session(primary, "pgh-test-admin") as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield name
    with session(primary, "pgh-test-admin") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sessions():
    """Connections a test opens; cancelled and closed whatever happens."""
    opened = []
    yield opened
    for conn in opened:
        close_quietly(conn)


@pytest.fixture
def app():
    return f"pgh-test-{token()}"


def mine(rows, app):
    return [r for r in rows if r.get("application_name") == app]


def test_long_query_is_found_with_its_status(primary, dbname, sessions, app):
    conn = session(primary, app, dbname)
    sessions.append(conn)
    send_async(conn, "SELECT pg_sleep(60)")
    params = params_for(primary, login_db=dbname)
    thr = {"long_query_seconds": {"warning": 1, "critical": 3600}}

    def found():
        result = run_core(params, ["long_queries"], thr)
        return result if mine(result["checks"]["long_queries"]["details"], app) else None

    result = wait_until(found, "the pg_sleep query to pass 1 s")
    check = result["checks"]["long_queries"]
    row = mine(check["details"], app)[0]
    assert row["query"] == "SELECT pg_sleep(60)" and row["state"] == "active" and row["seconds"] >= 1
    assert check["status"] in ("warning", "critical") and check["value"] >= row["seconds"] - 0.001
    assert any(p.startswith("warning:") or p.startswith("critical:") for p in check["problems"])
    # critical once over the critical level
    crit = run_core(params, ["long_queries"], {"long_query_seconds": {"warning": 1, "critical": 1}})
    assert crit["checks"]["long_queries"]["status"] == "critical"
    # scoped to another database, our session is not reported
    other = run_core(params, ["long_queries"], thr, databases=["postgres"])
    assert not mine(other["checks"]["long_queries"]["details"], app)


def test_idle_in_transaction_is_found(primary, dbname, sessions, app):
    conn = session(primary, app, dbname, autocommit=False)
    sessions.append(conn)
    conn.execute("SELECT 1")  # opens a transaction, then the session sits idle in it
    params = params_for(primary, login_db=dbname)
    thr = {"idle_in_transaction_seconds": {"warning": 1, "critical": 3600}}

    def found():
        result = run_core(params, ["idle_in_transaction"], thr)
        return result if mine(result["checks"]["idle_in_transaction"]["details"], app) else None

    result = wait_until(found, "the idle-in-transaction session to pass 1 s")
    row = mine(result["checks"]["idle_in_transaction"]["details"], app)[0]
    assert row["state"] == "idle in transaction" and row["seconds"] >= 1
    assert result["checks"]["idle_in_transaction"]["status"] in ("warning", "critical")
    assert any("sessions idle in transaction longer than 1 s" in p for p in result["problems"])


def test_blocking_lock_names_waiter_and_blocker(primary, dbname, sessions, app):
    table = f"locked_{token()}"
    holder = session(primary, app, dbname, autocommit=False)
    waiter = session(primary, app, dbname)
    sessions.extend([waiter, holder])
    holder.execute(f"CREATE TABLE {table} (id int)")
    holder.commit()
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    holder_pid = holder.info.backend_pid
    send_async(waiter, f"SELECT count(*) FROM {table}")
    params = params_for(primary, login_db=dbname)
    thr = {"blocking_lock_seconds": {"warning": 1, "critical": 3600}}

    def found():
        result = run_core(params, ["blocking_locks"], thr)
        rows = mine(result["checks"]["blocking_locks"]["details"], app)
        return result if rows and rows[0]["seconds"] >= 1 else None

    result = wait_until(found, "the waiter to wait 1 s on the lock")
    check = result["checks"]["blocking_locks"]
    row = mine(check["details"], app)[0]
    assert row["pid"] == waiter.info.backend_pid and row["blocked_by"] == [holder_pid]
    assert row["blockers"][0]["pid"] == holder_pid and row["blockers"][0]["state"] == "idle in transaction"
    assert check["status"] in ("warning", "critical")
    assert check["problems"] and check["value"] >= row["seconds"] - 0.001


def test_replication_lag_is_seen_from_both_sides(primary, standby, dbname):
    params_p = params_for(primary, login_db=dbname)
    params_s = params_for(standby, login_db="postgres")
    healthy = run_core(params_s, ["connectivity", "replication"], expect_role="standby")
    assert healthy["role"] == "standby" and healthy["checks"]["connectivity"]["status"] == "ok"
    assert healthy["checks"]["replication"]["details"][0]["receiver_status"] == "streaming"

    thr = {"replication_lag_bytes": {"warning": 1024 * 1024, "critical": 1024 ** 4},
           "replication_lag_seconds": {"warning": None, "critical": None}}
    table = f"lag_{token()}"
    admin_s = session(standby, "pgh-test-admin", "postgres")
    try:
        admin_s.execute("SELECT pg_wal_replay_pause()")
        with session(primary, "pgh-test-writer", dbname) as writer:
            writer.execute(f"CREATE TABLE {table} AS SELECT g, repeat('x', 500) AS pad "
                           "FROM generate_series(1, 10000) g")

        def primary_sees_lag():
            result = run_core(params_p, ["replication"], thr)
            rows = result["checks"]["replication"]["details"]
            return result if rows and max(r["replay_lag_bytes"] or 0 for r in rows) >= 1024 * 1024 else None

        on_primary = wait_until(primary_sees_lag, "pg_stat_replication to show 1 MB of replay lag")
        check = on_primary["checks"]["replication"]
        assert check["status"] == "warning" and check["value"]["lag_bytes"] >= 1024 * 1024
        assert any("behind" in p for p in check["problems"])

        on_standby = run_core(params_s, ["replication"], thr)
        check = on_standby["checks"]["replication"]
        row = check["details"][0]
        assert row["replay_paused"] is True and row["replay_lag_bytes"] >= 1024 * 1024
        assert check["status"] == "warning" and check["value"]["replay_lag_bytes"] >= 1024 * 1024
        assert any("WAL replay is paused" in p for p in check["problems"])
    finally:
        with contextlib.suppress(Exception):
            admin_s.execute("SELECT pg_wal_replay_resume()")
        admin_s.close()
    # and it recovers once replay resumes
    caught_up = wait_until(
        lambda: (r := run_core(params_s, ["replication"], thr))["checks"]["replication"]["status"] == "ok" and r,
        "the standby to replay what it received")
    assert caught_up["checks"]["replication"]["details"][0]["replay_paused"] is False


def test_inactive_replication_slot_is_a_warning(primary):
    slot = f"pgh_slot_{token()}"
    params = params_for(primary)
    with session(primary, "pgh-test-admin") as admin:
        admin.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        try:
            result = run_core(params, ["replication_slots"])
            check = result["checks"]["replication_slots"]
            row = next(r for r in check["details"] if r["slot_name"] == slot)
            assert row["active"] is False and row["retained_bytes"] >= 0
            ours = [p for p in check["problems"] if f"'{slot}'" in p]
            assert ours and ours[0].startswith("warning: replication slot") and "is inactive" in ours[0]
            assert check["status"] in ("warning", "critical")
            big = run_core(params, ["replication_slots"], {"slot_retained_bytes": {"warning": 0, "critical": 0}})
            ours = [p for p in big["checks"]["replication_slots"]["problems"] if f"'{slot}'" in p]
            assert ours[0].startswith("critical:")
        finally:
            admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_dead_tuples_are_found_and_cleared_by_vacuum(primary, dbname):
    table = f"dead_{token()}"
    params = params_for(primary, login_db=dbname)
    # a session that ends flushes its table statistics at once
    with session(primary, "pgh-test-writer", dbname) as writer:
        writer.execute(f"CREATE TABLE {table} (id int, pad text) WITH (autovacuum_enabled = off)")
        writer.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 5000) g")
        writer.execute(f"DELETE FROM {table} WHERE id <= 3000")

    def found():
        result = run_core(params, ["vacuum"])
        rows = [r for r in result["checks"]["vacuum"]["details"] if r["relname"] == table]
        return (result, rows[0]) if rows else None

    result, row = wait_until(found, "the dead tuples to reach pg_stat_user_tables")
    assert row["dead_tuples"] == 3000 and row["live_tuples"] == 2000 and row["dead_percent"] == 60.0
    assert row["vacuum_age_seconds"] is None  # never vacuumed
    check = result["checks"]["vacuum"]
    assert check["status"] == "critical"
    assert any(f"table public.{table} in {dbname} has 60% dead tuples (3000 dead), last vacuum never" in p
               for p in check["problems"])
    with session(primary, "pgh-test-writer", dbname) as writer:
        writer.execute(f"VACUUM {table}")
    after = run_core(params, ["vacuum"])
    assert not [r for r in after["checks"]["vacuum"]["details"] if r["relname"] == table]
    assert after["checks"]["vacuum"]["status"] == "ok"


def test_statements_not_installed_then_installed(primary, dbname):
    params = params_for(primary, login_db=dbname)
    absent = run_core(params, ["statements"])
    check = absent["checks"]["statements"]
    assert check["status"] == "ok" and check["value"] is None
    assert f"pg_stat_statements is not installed in database {dbname}" in check["note"]

    with session(primary, "pgh-test-admin", dbname) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for _i in range(3):
            admin.execute("SELECT pg_sleep(0.05)")
    result = run_core(params, ["statements"], {"statement_mean_ms": {"warning": 20, "critical": 100000}},
                      databases=[dbname])
    check = result["checks"]["statements"]
    rows = [r for r in check["details"] if "pg_sleep" in r["query"]]
    assert rows and rows[0]["datname"] == dbname and rows[0]["calls"] >= 3 and rows[0]["mean_ms"] >= 45
    assert all(r["datname"] == dbname for r in check["details"])
    assert check["status"] == "warning" and "statement(s) average over 20 ms" in check["problems"][0]


def test_wraparound_connections_and_size_are_real_values(primary, dbname):
    params = params_for(primary, login_db=dbname)
    with session(primary, "pgh-test-admin", dbname) as admin:
        max_age = admin.execute("SELECT max(age(datfrozenxid)) FROM pg_database").fetchone()[0]
        size = admin.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        result = run_core(params, ["connections", "wraparound", "database_size"],
                          {"wraparound_percent": {"warning": 0}, "database_size_bytes": {"warning": 1}},
                          databases=[dbname])
    wrap = result["checks"]["wraparound"]
    assert wrap["details"][0]["xid_age"] >= max_age
    assert wrap["value"] == pytest.approx(100.0 * wrap["details"][0]["xid_age"] / 2 ** 31, abs=0.001)
    assert wrap["status"] == "warning"  # warning: 0 means any age is a warning
    sizes = result["checks"]["database_size"]
    assert [r["datname"] for r in sizes["details"]] == [dbname]
    assert abs(sizes["details"][0]["bytes"] - size) < 1024 * 1024 and sizes["status"] == "warning"
    conns = result["checks"]["connections"]
    assert any(r["datname"] == dbname and r["count"] >= 1 for r in conns["details"])  # the admin session


def _try(func, *args):
    try:
        return func(*args)
    except Exception:  # noqa: BLE001  # the role may not have reached the standby yet
        return None


def test_non_superuser_roles(primary, standby, dbname, sessions, app):
    """pg_monitor sees other roles' sessions; a plain role runs every check but gets a note, and a
    view it may not read degrades that one check to unknown."""
    mon, plain, pw = f"pgh_mon_{token()}", f"pgh_plain_{token()}", f"pw-{token()}"
    with session(primary, "pgh-test-admin", dbname) as admin:
        admin.execute(f"CREATE ROLE {mon} LOGIN PASSWORD '{pw}' IN ROLE pg_monitor")
        admin.execute(f"CREATE ROLE {plain} LOGIN PASSWORD '{pw}'")
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    try:
        busy = session(primary, app, dbname)
        sessions.append(busy)
        send_async(busy, "SELECT pg_sleep(60)")
        thr = {"long_query_seconds": {"warning": 0.5, "critical": 3600}}
        as_mon = params_for(primary, login_db=dbname, login_user=mon, login_password=pw)
        result = wait_until(
            lambda: (r := run_core(as_mon, None, thr))
            and mine(r["checks"]["long_queries"]["details"], app) and r, "pg_monitor to see the query")
        assert result["privileges"]["superuser"] is False and result["privileges"]["pg_monitor"] is True
        assert not [n for n, c in result["checks"].items() if c["status"] == "unknown"]
        assert mine(result["checks"]["long_queries"]["details"], app)[0]["query"] == "SELECT pg_sleep(60)"
        assert result["notes"] == []

        as_plain = params_for(primary, login_db=dbname, login_user=plain, login_password=pw)
        result = run_core(as_plain, None, thr)
        assert result["privileges"]["pg_monitor"] is False
        assert not [n for n, c in result["checks"].items() if c["status"] == "unknown"]
        assert not mine(result["checks"]["long_queries"]["details"], app)  # hidden from a plain role
        assert any(f"GRANT pg_monitor TO {plain}" in n for n in result["notes"])
        # the lab standby's lag and state are hidden from a plain role: a note, not a false alarm
        assert result["checks"]["replication"]["status"] == "ok"
        assert f"GRANT pg_monitor TO {plain}" in result["checks"]["replication"]["note"]
        as_plain_standby = params_for(standby, login_db="postgres", login_user=plain, login_password=pw)
        on_standby = wait_until(lambda: _try(run_core, as_plain_standby, ["replication"]),
                                "the new role to reach the standby")
        assert on_standby["role"] == "standby" and on_standby["checks"]["replication"]["status"] == "ok"

        with session(primary, "pgh-test-admin", dbname) as admin:
            admin.execute("REVOKE SELECT ON pg_stat_statements FROM PUBLIC")
        result = run_core(as_plain, None, thr)
        assert result["checks"]["statements"]["status"] == "unknown"
        assert "permission denied" in result["checks"]["statements"]["note"]
        assert [n for n, c in result["checks"].items() if c["status"] == "unknown"] == ["statements"]
        assert result["round_trips"] > 2  # the batch failed and each check ran alone
        assert any(p.startswith("unknown: statements: check statements could not run: permission denied")
                   for p in result["problems"])
    finally:
        with session(primary, "pgh-test-admin", dbname) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {mon}")
            admin.execute(f"DROP ROLE IF EXISTS {plain}")


def test_unix_socket_and_dsn_reach_the_same_server(primary):
    by_socket = run_core(params_for(primary, login_host="ignored.invalid", login_unix_socket=primary["socket_dir"],
                                    login_password=None), ["connectivity"])
    assert by_socket["status"] == "ok" and by_socket["role"] == "primary"
    dsn = (f"postgresql://{primary['user']}:{primary['password']}@{primary['host']}:{primary['port']}/"
           f"{primary['dbname']}?sslmode=disable")
    by_dsn = run_core(params_for(primary, login_host=None, login_password=None, dsn=dsn), ["connectivity"])
    assert by_dsn["status"] == "ok" and by_dsn["checks"]["connectivity"]["details"][0]["database"] == primary["dbname"]
