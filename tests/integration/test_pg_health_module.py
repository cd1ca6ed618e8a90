"""ops.runbooks.pg_health through Ansible: a healthy private server is ok with no problems
(check mode == real run, never changed), every bad input fails with a message that says what
to do and no traceback, secrets never reach the output even at -vvv."""

from __future__ import annotations

import socket

import pytest
from pg_health_helpers import adhoc, params_for, private_postgres, session, token

VOLATILE = ("latency_ms", "connect_ms", "invocation")


@pytest.fixture(scope="module")
def private_pg():
    with private_postgres() as node:
        yield node


@pytest.fixture(scope="module")
def args(private_pg):
    return {k: v for k, v in params_for(private_pg).items() if v is not None}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_secret_absent(secret: str, out: str) -> None:
    at = out.find(secret)
    assert at < 0, f"secret leaked here: ...{out[max(0, at - 800):at + 80]}..."


def comparable(result: dict) -> dict:
    """The parts of a result that must not differ between two runs on a quiet server."""
    return {
        "status": result["status"], "role": result["role"], "problems": result["problems"],
        "changed": result["changed"], "round_trips": result["round_trips"],
        "checks": {name: c["status"] for name, c in result["checks"].items()},
    }


def test_healthy_server_is_ok_with_no_problems_in_check_mode_and_real_runs(venv_bin, ansible_env, args):
    rc_check, checked, out = adhoc(venv_bin, ansible_env, args, check_mode=True)
    assert rc_check == 0, out[-3000:]
    rc1, first, out = adhoc(venv_bin, ansible_env, args)
    assert rc1 == 0, out[-3000:]
    rc2, second, out = adhoc(venv_bin, ansible_env, args)
    assert rc2 == 0, out[-3000:]

    assert first["status"] == "ok", first["problems"]
    assert first["problems"] == [] and first["notes"] == []
    assert first["changed"] is False and second["changed"] is False
    assert first["role"] == "primary" and first["server_version"].startswith("15.")
    assert first["round_trips"] == 2
    assert set(first["checks"]) == {"connectivity", "connections", "long_queries", "idle_in_transaction",
                                    "blocking_locks", "replication", "replication_slots", "wraparound",
                                    "vacuum", "database_size", "statements"}
    assert first["checks"]["statements"]["details"], "pg_stat_statements is installed on the private server"
    assert first["checks"]["replication"]["summary"] == "primary with no standby connected"
    assert comparable(checked) == comparable(first) == comparable(second)


def test_pg_monitor_role_sees_everything_without_superuser(venv_bin, ansible_env, private_pg, args):
    name, pw = f"pgh_mon_{token()}", f"pw-{token()}"
    with session(private_pg, "pgh-test-admin") as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{pw}' IN ROLE pg_monitor")
    try:
        rc, result, out = adhoc(venv_bin, ansible_env, dict(args, login_user=name, login_password=pw))
        assert rc == 0, out[-3000:]
        assert result["privileges"] == {"user": name, "superuser": False, "pg_monitor": True,
                                        "pg_read_all_stats": True}
        assert result["status"] == "ok" and result["notes"] == [], result["problems"]
        assert all(c["status"] == "ok" for c in result["checks"].values())
        assert pw not in out
    finally:
        with session(private_pg, "pgh-test-admin") as admin:
            admin.execute(f"DROP ROLE IF EXISTS {name}")


BAD_INPUT = [
    # id, overrides, expected rc, words the msg must contain
    ("wrong_port", lambda a: {"login_port": closed_port()}, ["cannot connect to PostgreSQL", "Connection refused",
                                                             "login_host/login_port"]),
    ("wrong_password", lambda a: {"login_password": "wrong-pw-4b1d"}, ["password authentication failed",
                                                                       "check login_user and login_password"]),
    ("bad_dsn", lambda a: {"dsn": "host=127.0.0.1 port=notaport password=dsn-secret-77"},
     ["invalid integer value", "port"]),
    ("bad_dsn_uri", lambda a: {"dsn": "postgresql://u:uri-secret-88@127.0.0.1:99999999/x"},
     ["cannot connect to PostgreSQL"]),
    ("unknown_check", lambda a: {"checks": ["connectivity", "replication_lag"]},
     ["value of checks must be one or more of", "replication_lag"]),
    ("threshold_not_a_number", lambda a: {"thresholds": {"connections_percent": {"warning": "lots"}}},
     ["thresholds.connections_percent.warning must be a number or null"]),
    ("threshold_not_a_dict", lambda a: {"thresholds": {"long_query_seconds": 300}},
     ["thresholds.long_query_seconds must be a dict with warning and/or critical"]),
    ("threshold_unknown", lambda a: {"thresholds": {"lag": {"warning": 1}}},
     ["unknown threshold 'lag'; valid thresholds are"]),
    ("threshold_inverted", lambda a: {"thresholds": {"connections_percent": {"warning": 99, "critical": 90}}},
     ["warning (99) must not be above critical (90)"]),
    ("wrong_type_port", lambda a: {"login_port": "fivefourthreetwo"}, ["login_port", "int"]),
    ("negative_min_standbys", lambda a: {"min_standbys": -1}, ["min_standbys must be 0 or more"]),
    ("standby_check_on_primary", lambda a: {"expect_role": "standby", "checks": ["connectivity", "replication"]},
     ["PostgreSQL is critical", "server is a primary but expect_role is standby"]),
    ("missing_standby", lambda a: {"min_standbys": 1, "checks": ["replication"]},
     ["0 standby(s) connected, expected at least 1"]),
    ("bad_fail_on", lambda a: {"fail_on": "sometimes"}, ["value of fail_on must be one of: critical, warning, never"]),
]


@pytest.mark.parametrize(("overrides", "words"), [pytest.param(o, w, id=i) for i, o, w in BAD_INPUT])
def test_bad_input_fails_with_a_useful_message(venv_bin, ansible_env, args, overrides, words):
    changes = overrides(args)
    rc, result, out = adhoc(venv_bin, ansible_env, dict(args, **changes))
    assert rc == 2, out[-3000:]
    assert "localhost | FAILED!" in out and result.get("changed") is False, out[-3000:]
    for word in words:
        assert word in result["msg"], result["msg"]
    assert "Traceback" not in out
    for secret in ("wrong-pw-4b1d", "dsn-secret-77", "uri-secret-88", args["login_password"]):
        assert secret not in out


def test_unreachable_with_fail_on_never_is_reported_critical(venv_bin, ansible_env, args):
    rc, result, out = adhoc(venv_bin, ansible_env, dict(args, login_port=closed_port(), fail_on="never"))
    assert rc == 0, out[-3000:]
    assert result["status"] == "critical" and result["role"] is None
    assert result["checks"]["connectivity"]["status"] == "critical"
    assert result["problems"][0].startswith("critical: connectivity: cannot connect to PostgreSQL")
    assert "connections" in result["not_run"]


def test_fail_on_levels(venv_bin, ansible_env, args):
    warn = {"checks": ["connections"], "thresholds": {"connections_percent": {"warning": 0, "critical": 100}}}
    rc, result, out = adhoc(venv_bin, ansible_env, dict(args, **warn))
    assert rc == 0 and result["status"] == "warning", out[-3000:]
    rc, result, out = adhoc(venv_bin, ansible_env, dict(args, fail_on="warning", **warn))
    assert rc == 2 and result["msg"].startswith("PostgreSQL is warning (fail_on=warning): warning: connections:"), out


def test_secrets_never_reach_the_output_at_vvv(venv_bin, ansible_env, args):
    good = args["login_password"]
    rc, _result, out = adhoc(venv_bin, ansible_env, args, "-vvv")
    assert rc == 0, out[-3000:]
    assert_secret_absent(good, out)  # rc 0 with scram auth: the password was passed and used
    dsn = f"postgresql://postgres:{good}@127.0.0.1:{args['login_port']}/postgres?sslmode=disable"
    rc, _result, out = adhoc(venv_bin, ansible_env, {"dsn": dsn, "checks": ["connectivity"]}, "-vvv")
    assert rc == 0, out[-3000:]
    assert_secret_absent(good, out)
    wrong = f"wrong-{token()}"
    rc, _result, out = adhoc(venv_bin, ansible_env, dict(args, login_password=wrong), "-vvv")
    assert rc == 2 and "password authentication failed" in out
    assert_secret_absent(wrong, out)
    assert_secret_absent(good, out)
