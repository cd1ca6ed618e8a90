from __future__ import annotations

import socket

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _redis_client as rc
from ansible_collections.ops.runbooks.plugins.module_utils._redis_client import (
    RedisConnectionError,
    client_kwargs,
    cluster_kwargs,
    cluster_mode,
    connect,
    failure_message,
    hint_for,
)

PASSWORD = "s3cr3t-Redis"


def params(**overrides):
    base = {
        "login_host": "localhost", "login_port": 6379, "login_user": None, "login_password": None,
        "db": 0, "tls": False, "tls_ca_certs": None, "tls_certfile": None, "tls_keyfile": None,
        "url": None, "cluster": "auto", "socket_timeout": 10.0,
    }
    base.update(overrides)
    return base


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kwargs_standalone():
    kw = client_kwargs(params(login_host="prod-redis", login_password=PASSWORD, db=2))
    assert kw == {
        "host": "prod-redis", "port": 6379, "password": PASSWORD, "db": 2,
        "socket_timeout": 10.0, "socket_connect_timeout": 10.0, "client_name": "ops.runbooks",
    }


def test_kwargs_tls_and_acl_user():
    kw = client_kwargs(params(login_user="app", tls=True, tls_ca_certs="/etc/ca.pem"))
    assert kw["username"] == "app" and kw["ssl"] is True and kw["ssl_ca_certs"] == "/etc/ca.pem"
    assert "ssl_certfile" not in kw


def test_a_tls_file_turns_tls_on():
    assert client_kwargs(params(tls_ca_certs="/etc/ca.pem"))["ssl"] is True
    assert "ssl" not in client_kwargs(params())


def test_url_overrides_host_options():
    url = f"redis://:{PASSWORD}@cache:6380/1"
    kw = client_kwargs(params(login_host="ignored", login_password="ignored", db=5, url=url, tls_ca_certs="/ca"))
    assert kw == {"url": url, "socket_timeout": 10.0, "socket_connect_timeout": 10.0, "client_name": "ops.runbooks"}


def test_rediss_url_keeps_tls_files():
    kw = client_kwargs(params(url="rediss://cache:6379/0", tls_ca_certs="/ca"))
    assert kw["ssl_ca_certs"] == "/ca"


def test_cluster_kwargs_drop_db_zero_and_refuse_others():
    assert "db" not in cluster_kwargs(client_kwargs(params()))
    with pytest.raises(RedisConnectionError, match="only has database 0"):
        cluster_kwargs(client_kwargs(params(db=3)))


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", "auto"), (None, "auto"), (True, True), (False, False), ("true", True), ("False", False),
    ("yes", True), ("no", False), ("AUTO", "auto"),
])
def test_cluster_mode(value, expected):
    assert cluster_mode(value) == expected


def test_cluster_mode_rejects_nonsense():
    with pytest.raises(ValueError, match="auto, true or false"):
        cluster_mode("sometimes")


@pytest.mark.parametrize(("reason", "expected"), [
    ("WRONGPASS invalid username-password pair or user is disabled.", "login_password"),
    ("Authentication required.", "login_password"),
    ("Error 111 connecting to 127.0.0.1:1. Connection refused.", "running and reachable"),
    ("MOVED 3999 127.0.0.1:6381", "cluster: true"),
])
def test_hints(reason, expected):
    assert expected in hint_for(reason)


def test_failure_message_hides_password_and_url():
    url = f"redis://default:{PASSWORD}@cache:6380/0"
    msg = failure_message(params(url=url), f"bad {url}")
    assert PASSWORD not in msg and url not in msg and "cache:6380/0" in msg
    msg = failure_message(params(login_password=PASSWORD), f"bad {PASSWORD}")
    assert PASSWORD not in msg and "localhost:6379/0" in msg


@pytest.mark.parametrize("cluster", ["auto", True, False])
def test_real_connection_failure(cluster):
    port = closed_port()
    with pytest.raises(RedisConnectionError) as err:
        connect(params(login_host="127.0.0.1", login_port=port, login_password=PASSWORD,
                       cluster=cluster, socket_timeout=3))
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and PASSWORD not in msg
    assert err.value.__context__ is None


def test_real_url_failure_hides_url_password():
    port = closed_port()
    with pytest.raises(RedisConnectionError) as err:
        connect(params(url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0", socket_timeout=3))
    assert PASSWORD not in str(err.value)


def test_bad_cluster_value_is_reported():
    with pytest.raises(RedisConnectionError, match="cluster must be"):
        connect(params(cluster="maybe"))


def test_check_redis(monkeypatch):
    class Module:
        def fail_json(self, **kwargs):
            raise SystemExit(kwargs["msg"])

    monkeypatch.setattr(rc, "HAS_REDIS", False)
    with pytest.raises(SystemExit, match="redis"):
        rc.check_redis(Module())
