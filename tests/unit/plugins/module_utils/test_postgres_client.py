from __future__ import annotations

import socket

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _postgres_client as pg
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (
    PostgresConnectionError,
    connect,
    connect_kwargs,
    failure_message,
    hint_for,
    parse_dsn,
)

PASSWORD = "s3cr3t-Pa55"


def params(**overrides):
    base = {
        "login_host": None, "login_port": 5432, "login_user": "postgres", "login_password": None,
        "login_db": None, "login_unix_socket": None, "ssl_mode": "prefer", "ssl_rootcert": None,
        "connect_timeout": 10, "dsn": None,
    }
    base.update(overrides)
    return base


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kwargs_from_login_options():
    kw = connect_kwargs(params(login_host="db.example", login_port=25060, login_user="bunty",
                               login_password=PASSWORD, login_db="bunty_prod", ssl_mode="require"))
    assert kw == {
        "host": "db.example", "port": 25060, "user": "bunty", "password": PASSWORD,
        "dbname": "bunty_prod", "sslmode": "require", "connect_timeout": 10,
        "application_name": "ops.runbooks",
    }


def test_unset_options_are_left_to_libpq():
    kw = connect_kwargs(params())
    assert "host" not in kw and "password" not in kw and "dbname" not in kw and "sslrootcert" not in kw
    assert kw["user"] == "postgres" and kw["port"] == 5432


def test_unix_socket_wins_over_host():
    kw = connect_kwargs(params(login_host="db.example", login_unix_socket="/run/postgresql"))
    assert kw["host"] == "/run/postgresql"


def test_ssl_rootcert_is_passed():
    kw = connect_kwargs(params(ssl_mode="verify-full", ssl_rootcert="/etc/rds-ca.pem"))
    assert kw["sslmode"] == "verify-full" and kw["sslrootcert"] == "/etc/rds-ca.pem"


def test_dsn_overrides_login_options():
    dsn = f"postgresql://bot:{PASSWORD}@prod-db:5432/bot_production?sslmode=require"
    kw = connect_kwargs(params(login_host="ignored", login_password="ignored", dsn=dsn))
    assert kw == {"conninfo": dsn, "connect_timeout": 10, "application_name": "ops.runbooks"}


@pytest.mark.parametrize("dsn", [
    "postgresql://u@h/db?connect_timeout=3&application_name=mine",
    "host=h user=u connect_timeout=3 application_name='my app'",
])
def test_dsn_settings_are_not_overridden(dsn):
    assert connect_kwargs(params(dsn=dsn)) == {"conninfo": dsn}


def test_parse_dsn_both_forms():
    assert parse_dsn("postgres://u:p%40ss@h:6543/d?sslmode=require") == {
        "host": "h", "port": "6543", "user": "u", "password": "p@ss", "dbname": "d", "sslmode": "require",
    }
    assert parse_dsn("host=h port=5433 password='it\\'s secret' dbname = d") == {
        "host": "h", "port": "5433", "password": "it's secret", "dbname": "d",
    }


@pytest.mark.parametrize(("reason", "expected"), [
    ('FATAL:  password authentication failed for user "bot"', "login_password"),
    ('FATAL:  database "nope" does not exist', "login_db"),
    ("connection to server at \"127.0.0.1\", port 1 failed: Connection refused", "running and listening"),
    ("timeout expired", "connect_timeout"),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.5"', "pg_hba.conf"),
])
def test_hints(reason, expected):
    assert expected in hint_for(reason)


def test_failure_message_never_contains_the_password():
    dsn = f"postgresql://bot:{PASSWORD}@prod-db/bot_production"
    msg = failure_message(params(dsn=dsn), f'invalid dsn: missing "=" after "{dsn}"')
    assert PASSWORD not in msg and dsn not in msg
    assert "bot@prod-db:5432/bot_production" in msg
    msg = failure_message(params(login_host="h", login_password=PASSWORD), f"echo {PASSWORD}")
    assert PASSWORD not in msg and "********" in msg


def test_real_connection_failure_says_where_and_what_to_do():
    port = closed_port()
    with pytest.raises(PostgresConnectionError) as err:
        connect(params(login_host="127.0.0.1", login_port=port, login_user="bot",
                       login_password=PASSWORD, login_db="opslab", connect_timeout=3))
    msg = str(err.value)
    assert f"bot@127.0.0.1:{port}/opslab" in msg
    assert "check that PostgreSQL is running" in msg
    assert PASSWORD not in msg
    assert err.value.__context__ is None and err.value.__cause__ is None


def test_real_dsn_failure_hides_the_dsn():
    port = closed_port()
    dsn = f"postgresql://bot:{PASSWORD}@127.0.0.1:{port}/opslab"
    with pytest.raises(PostgresConnectionError) as err:
        connect(params(dsn=dsn, connect_timeout=3))
    assert PASSWORD not in str(err.value)


class FakeModule:
    def __init__(self):
        self.failed = None

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def test_check_psycopg_fails_with_install_hint(monkeypatch):
    monkeypatch.setattr(pg, "HAS_PSYCOPG", False)
    monkeypatch.setattr(pg, "PSYCOPG_IMPORT_ERROR", "Traceback: No module named 'psycopg'")
    module = FakeModule()
    with pytest.raises(SystemExit):
        pg.check_psycopg(module)
    assert "psycopg" in module.failed["msg"] and module.failed["exception"].startswith("Traceback")


def test_check_psycopg_passes_when_installed():
    pg.check_psycopg(FakeModule())  # psycopg is in the test venv


def test_other_server_spec_has_no_env_fallbacks_keeps_no_log_and_leaves_the_main_spec_alone():
    from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (
        other_server_argument_spec,
        postgres_argument_spec,
    )

    other = other_server_argument_spec(login_db="postgres")
    assert set(other) == set(postgres_argument_spec())
    assert not any("fallback" in opt for opt in other.values())
    assert other["login_password"]["no_log"] and other["dsn"]["no_log"]
    assert other["login_db"]["default"] == "postgres"
    assert "default" not in other_server_argument_spec()["login_db"]
    assert "fallback" in postgres_argument_spec()["login_host"]
