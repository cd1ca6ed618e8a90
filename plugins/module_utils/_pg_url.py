# Copyright: ops.runbooks contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read or replace the database, host or port of a postgres:// URL, keeping everything else
(user, password, query string) exactly as written. Pure functions, no Ansible imports."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_URL = re.compile(
    r"^(?P<scheme>postgres(?:ql)?://)"
    r"(?P<userinfo>[^@/?#]*@)?"
    r"(?P<hostport>\[[^\]]*\]|[^:/?#]*)(?::(?P<port>\d*))?"
    r"(?P<path>/[^?#]*)?"
    r"(?P<rest>[?#].*)?$",
    re.DOTALL,
)


class PgUrlError(ValueError):
    pass


def _split(url) -> dict:
    if not isinstance(url, str):
        raise PgUrlError(f"expected a URL string, got {type(url).__name__}")
    match = _URL.match(url)
    if not match:
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise PgUrlError(f"not a postgres:// or postgresql:// URL (scheme: {scheme})")
    return match.groupdict()


def read_part(url, part: str) -> str:
    p = _split(url)
    if part == "database":
        return unquote((p["path"] or "/")[1:])
    if part == "host":
        return p["hostport"].strip("[]")
    if part == "port":
        return p["port"] or ""
    if part == "user":
        return unquote((p["userinfo"] or "").rstrip("@").split(":", 1)[0])
    raise PgUrlError(f"unknown part {part!r}; use database, host, port or user")


def replace_parts(url, database=None, host=None, port=None) -> str:
    p = _split(url)
    if database is not None:
        if not str(database) or "/" in str(database):
            raise PgUrlError(f"bad database name {database!r}")
        p["path"] = "/" + quote(str(database), safe="")
    if host is not None:
        host = str(host)
        if not host or any(c in host for c in "/@?#"):
            raise PgUrlError(f"bad host {host!r}")
        p["hostport"] = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port is not None:
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise PgUrlError(f"bad port {port!r}") from None
        if not 0 < number < 65536:
            raise PgUrlError(f"port {number} is out of range 1-65535")
        p["port"] = str(number)
    return (p["scheme"] + (p["userinfo"] or "") + p["hostport"] + (f":{p['port']}" if p["port"] else "")
            + (p["path"] or "") + (p["rest"] or ""))
