from __future__ import annotations

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils._pg_url import PgUrlError, read_part, replace_parts

URL = "postgresql://app:s%40cr3t:x@db1.internal:5432/shop?sslmode=require&application_name=a/b"


def test_replace_database_keeps_credentials_and_query_byte_for_byte():
    out = replace_parts(URL, database="shop_dr_20261123")
    assert out == "postgresql://app:s%40cr3t:x@db1.internal:5432/shop_dr_20261123?sslmode=require&application_name=a/b"
    assert read_part(out, "database") == "shop_dr_20261123"


def test_replace_host_and_port():
    out = replace_parts(URL, host="10.0.0.7", port=6543)
    assert out.startswith("postgresql://app:s%40cr3t:x@10.0.0.7:6543/shop?")
    assert read_part(out, "host") == "10.0.0.7" and read_part(out, "port") == "6543"


@pytest.mark.parametrize("url, part, value", [
    ("postgres://db/x", "database", "x"),
    ("postgres://db", "database", ""),
    ("postgres://u@db:1/x", "user", "u"),
    ("postgres://[::1]:5433/x", "host", "::1"),
    ("postgres://db/x", "port", ""),
])
def test_read_parts(url, part, value):
    assert read_part(url, part) == value


def test_url_without_path_or_port_gets_them():
    assert replace_parts("postgres://u:p@db", database="n", port=1) == "postgres://u:p@db:1/n"


def test_ipv6_host_is_bracketed():
    assert replace_parts("postgres://u@db:5432/x", host="::1") == "postgres://u@[::1]:5432/x"


@pytest.mark.parametrize("url, kwargs, needle", [
    ("mysql://db/x", {"database": "y"}, "not a postgres"),
    (42, {"database": "y"}, "expected a URL string"),
    ("postgres://db/x", {"database": "a/b"}, "bad database"),
    ("postgres://db/x", {"port": 70000}, "out of range"),
    ("postgres://db/x", {"port": "abc"}, "bad port"),
    ("postgres://db/x", {"host": "a@b"}, "bad host"),
])
def test_bad_input(url, kwargs, needle):
    with pytest.raises(PgUrlError, match=needle):
        replace_parts(url, **kwargs)


def test_unknown_part():
    with pytest.raises(PgUrlError, match="unknown part"):
        read_part("postgres://db/x", "password")
