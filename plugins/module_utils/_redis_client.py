# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Redis connection options shared by the ops.runbooks modules (standalone and cluster).

Documented by the `ops.runbooks._redis` doc fragment. A module does:

    spec = redis_argument_spec()
    spec.update(my_options)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    check_redis(module)
    try:
        client = connect(module.params)      # redis.Redis or redis.cluster.RedisCluster
    except RedisConnectionError as exc:
        module.fail_json(msg=str(exc))

`client_kwargs()`, `cluster_mode()` and `failure_message()` are pure and unit-tested.
"""

from __future__ import annotations

import traceback
from urllib.parse import unquote, urlsplit

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import (
    connection_failure,
    first_hint,
    redact,
)

try:
    import redis
    from redis.cluster import RedisCluster
except ImportError:
    HAS_REDIS = False
    REDIS_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_REDIS = True
    REDIS_IMPORT_ERROR = None

CLIENT_NAME = "ops.runbooks"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class RedisConnectionError(Exception):
    """Redis could not be reached or refused us; the message says what to check."""


def redis_argument_spec() -> dict:
    """Connection options; keep in sync with plugins/doc_fragments/_redis.py."""
    return {
        "login_host": {"type": "str", "default": "localhost", "fallback": (env_fallback, ["REDIS_HOST"])},
        "login_port": {"type": "int", "default": 6379, "fallback": (env_fallback, ["REDIS_PORT"])},
        "login_user": {"type": "str"},
        "login_password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["REDIS_PASSWORD"])},
        "db": {"type": "int", "default": 0},
        "tls": {"type": "bool", "default": False},
        "tls_ca_certs": {"type": "path"},
        "tls_certfile": {"type": "path"},
        "tls_keyfile": {"type": "path", "no_log": False},
        "url": {"type": "str", "no_log": True, "fallback": (env_fallback, ["REDIS_URL"])},
        # raw, not str: `cluster: true` in YAML is a boolean and must not trigger a
        # string-conversion warning. cluster_mode() validates it.
        "cluster": {"type": "raw", "default": "auto"},
        "socket_timeout": {"type": "float", "default": 10.0},
    }


def check_redis(module) -> None:
    """Fail the module with install instructions when redis-py is missing."""
    if not HAS_REDIS:
        module.fail_json(msg=missing_required_lib("redis"), exception=REDIS_IMPORT_ERROR)


def cluster_mode(value) -> bool | str:
    """Normalise the `cluster` option to True, False or "auto"; ValueError if unusable."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "auto").strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"cluster must be auto, true or false, got {value!r}")


def _uses_tls(params: dict) -> bool:
    return bool(params.get("tls") or params.get("tls_ca_certs") or params.get("tls_certfile")
                or params.get("tls_keyfile"))


def client_kwargs(params: dict) -> dict:
    """Keyword arguments for `redis.Redis(...)`, or `{"url": ..., **kwargs}` for `from_url`.

    `url` replaces login_host, login_port, login_user, login_password, db and tls. Setting a
    tls_* file turns TLS on. Unset options are omitted.
    """
    timeout = params.get("socket_timeout")
    kwargs = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "client_name": CLIENT_NAME}
    tls_files = {
        "ssl_ca_certs": params.get("tls_ca_certs"),
        "ssl_certfile": params.get("tls_certfile"),
        "ssl_keyfile": params.get("tls_keyfile"),
    }
    url = params.get("url")
    if url:
        kwargs["url"] = url
        if url.lower().startswith("rediss://"):
            kwargs.update(tls_files)
    else:
        kwargs.update(
            host=params.get("login_host"),
            port=params.get("login_port"),
            username=params.get("login_user"),
            password=params.get("login_password"),
            db=params.get("db"),
        )
        if _uses_tls(params):
            kwargs["ssl"] = True
            kwargs.update(tls_files)
    return {k: v for k, v in kwargs.items() if v not in (None, "")}


def cluster_kwargs(kwargs: dict) -> dict:
    """Turn client_kwargs() output into RedisCluster arguments (a cluster only has db 0)."""
    kwargs = dict(kwargs)
    db = kwargs.pop("db", 0)
    if db:
        raise RedisConnectionError(
            f"db={db} is not possible with a Redis Cluster, which only has database 0; set db: 0"
        )
    return kwargs


def describe_target(params: dict) -> str:
    """`host:port/db` (or the URL without its password) for messages."""
    url = params.get("url")
    if url:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        try:
            port = parts.port or 6379
        except ValueError:
            port = "?"
        return f"{host}:{port}{parts.path or ''}"
    return f"{params.get('login_host') or 'localhost'}:{params.get('login_port') or 6379}/{params.get('db') or 0}"


def secrets_of(params: dict) -> list[str]:
    found = [params.get("login_password"), params.get("url")]
    if params.get("url"):
        password = urlsplit(params["url"]).password
        found.append(password)
        found.append(unquote(password or ""))
    return [s for s in found if s]


_HINTS = [
    (r"WRONGPASS|invalid username-password|invalid password|NOAUTH|Authentication required|"
     r"AUTH <password> called without",
     "check login_user and login_password (or REDIS_PASSWORD, or the password in url)"),
    (r"only has database 0|not possible to use in cluster mode|SELECT is not allowed in cluster mode",
     "a Redis Cluster only has database 0; set db: 0"),
    (r"MOVED|CROSSSLOT|ASK \d", "this is a Redis Cluster; set cluster: true (or auto)"),
    (r"cluster support disabled|cluster mode is not enabled|This instance has cluster support disabled",
     "this Redis is not a cluster; set cluster: false (or auto)"),
    (r"SSL|certificate|TLS", "check tls, tls_ca_certs, tls_certfile and tls_keyfile"),
    (r"Connection refused|Error 111|Name or service not known|nodename nor servname|"
     r"Temporary failure in name resolution|Timeout|timed out|Connection reset|closed by server",
     "check that Redis is running and reachable there (login_host/login_port or REDIS_HOST/REDIS_PORT, "
     "firewalls, security groups); a server with in-transit encryption (ElastiCache) needs tls: true"),
    (r"scheme|Invalid URL|Redis URL", "fix url: it must look like redis://[:password@]host:port/db "
     "or rediss:// for TLS"),
]


_DEFAULT_HINT = "check the connection options (login_host, login_port, login_password, tls, cluster)"


def hint_for(reason: str) -> str:
    return first_hint(_HINTS, reason, _DEFAULT_HINT)


def failure_message(params: dict, reason: str) -> str:
    return connection_failure(f"cannot connect to Redis at {describe_target(params)}", reason,
                              _HINTS, _DEFAULT_HINT, secrets_of(params))


def is_cluster(client) -> bool:
    return HAS_REDIS and isinstance(client, RedisCluster)


def _standalone(kwargs: dict):
    kwargs = dict(kwargs)
    url = kwargs.pop("url", None)
    if url:
        return redis.Redis.from_url(url, **kwargs)
    return redis.Redis(**kwargs)


def _cluster(kwargs: dict):
    kwargs = cluster_kwargs(kwargs)
    url = kwargs.pop("url", None)
    if url:
        return RedisCluster.from_url(url, **kwargs)
    return RedisCluster(**kwargs)


def connect(params: dict):
    """Connect and ping; return redis.Redis or RedisCluster, or raise RedisConnectionError.

    With `cluster: auto`, a standalone connection asks `INFO cluster` and switches to a
    cluster client when `cluster_enabled:1`.
    """
    if not HAS_REDIS:
        raise RedisConnectionError(missing_required_lib("redis"))
    try:
        mode = cluster_mode(params.get("cluster"))
    except ValueError as exc:
        raise RedisConnectionError(str(exc)) from None
    kwargs = client_kwargs(params)
    try:
        if mode is True:
            client = _cluster(kwargs)
        else:
            client = _standalone(kwargs)
            if mode == "auto" and int(client.info("cluster").get("cluster_enabled", 0)) == 1:
                client.close()
                client = _cluster(kwargs)
        client.ping()
        return client
    except RedisConnectionError as exc:
        msg = redact(str(exc), secrets_of(params))
    except (redis.RedisError, redis.exceptions.RedisClusterException, ValueError, OSError) as exc:
        msg = failure_message(params, str(exc) or type(exc).__name__)
    # Raised outside the except block so the library exception (which may quote the URL)
    # is not chained into a traceback.
    raise RedisConnectionError(msg)
