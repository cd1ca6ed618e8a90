"""backup_verify fault table on the lab PostgreSQL 15: each fault gives a clear message, leaves no
scratch database behind and never touches the source database. Small databases, direct module runs."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys

import pytest
from backup_data import (
    SMALL_SQL,
    admin,
    conn_args,
    create_db,
    database,
    drop_db,
    leftovers,
    module_env,
    run_module,
    statuses,
    table_counts,
    target_args,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def primary(pg_lab):
    return pg_lab["primary"]


@pytest.fixture(scope="module")
def env(ansible_env):
    return module_env(ansible_env)


@pytest.fixture(scope="module")
def source(primary):
    with database(primary, "faultsrc", SMALL_SQL) as name:
        yield name


@pytest.fixture(scope="module")
def backup(primary, source, env, tmp_path_factory):
    dest = tmp_path_factory.mktemp("faults-bk")
    res = run_module("pg_backup", {**conn_args(primary, source), "dest": str(dest)}, env)
    assert res["_rc"] == 0 and res["changed"], res
    return res


@pytest.fixture
def prefix(primary):
    pre = f"i5f{secrets.token_hex(3)}_"
    yield pre
    for name in leftovers(primary, pre):  # only reached when a test already failed on leftovers
        drop_db(primary, name)


@pytest.fixture(scope="module")
def source_before(primary, source, backup):
    return table_counts(primary, source)


def copy_backup(backup: dict, tmp_path, with_manifest: bool = True) -> str:
    dump = tmp_path / os.path.basename(backup["backup_path"])
    shutil.copy(backup["backup_path"], dump)
    if with_manifest:
        shutil.copy(backup["manifest_path"], str(dump) + ".manifest.json")
    return str(dump)


def verify(primary, env, prefix, **args):
    base = {"restore_test": True, "restore_target": target_args(primary), "scratch_prefix": prefix, "jobs": 2}
    base.update(args)
    return run_module("backup_verify", base, env)


def assert_clean(primary, prefix, source, source_before):
    assert leftovers(primary, prefix) == []
    assert table_counts(primary, source) == source_before


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_good_backup_is_ok_and_leaves_nothing(primary, env, backup, prefix, source, source_before):
    res = verify(primary, env, prefix, path=backup["backup_path"], max_age="1h")
    assert res["_rc"] == 0, res["_raw"][-2000:]
    assert res["status"] == "ok" and res["changed"] is False
    assert statuses(res)["restore"] == "ok" and statuses(res)["row_counts"] == "ok"
    assert res["tables"]["Billing.Invoice Lines"] == {"expected": 1234, "actual": 1234, "status": "ok"}
    assert res["tables"]["public.audit_empty"]["actual"] == 0
    assert res["scratch_db"].startswith(prefix)
    assert_clean(primary, prefix, source, source_before)


def test_missing_file(primary, env, prefix, source, source_before, tmp_path):
    res = verify(primary, env, prefix, path=str(tmp_path / "nope.dump"))
    assert res["_rc"] == 1 and res["failed"]
    assert res["checks"]["exists"]["status"] == "critical"
    assert "does not exist" in res["msg"] and "nope.dump" in res["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_truncated_dump(primary, env, backup, prefix, source, source_before, tmp_path):
    dump = copy_backup(backup, tmp_path)
    size = os.path.getsize(dump)
    with open(dump, "r+b") as handle:
        handle.truncate(size // 2)
    res = verify(primary, env, prefix, path=dump)
    assert res["_rc"] == 1
    st = statuses(res)
    assert st["checksum"] == "critical"
    assert "critical" in (st["toc"], st["restore"])
    assert "sha256 mismatch" in res["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_truncated_dump_without_restore_is_still_caught(primary, env, backup, prefix, source, source_before,
                                                        tmp_path):
    dump = copy_backup(backup, tmp_path)
    with open(dump, "r+b") as handle:
        handle.truncate(os.path.getsize(dump) - 4096)
    res = verify(primary, env, prefix, path=dump, checksum="none", restore_test=False)
    assert res["_rc"] == 1
    assert "critical" in (statuses(res)["toc"], statuses(res)["integrity"]), res["checks"]
    assert_clean(primary, prefix, source, source_before)


def test_flipped_byte(primary, env, backup, prefix, source, source_before, tmp_path):
    dump = copy_backup(backup, tmp_path)
    offset = os.path.getsize(dump) // 2
    with open(dump, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    res = verify(primary, env, prefix, path=dump)
    assert res["_rc"] == 1
    assert res["checks"]["checksum"]["status"] == "critical"
    assert "sha256 mismatch" in res["checks"]["checksum"]["msg"]
    assert "modified or corrupted" in res["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_dump_of_an_empty_database(primary, env, prefix, source, source_before, tmp_path):
    with database(primary, "empty") as empty:
        bk = run_module("pg_backup", {**conn_args(primary, empty), "dest": str(tmp_path)}, env)
        assert bk["_rc"] == 0 and bk["manifest"]["tables"] == {}
    res = verify(primary, env, prefix, path=bk["backup_path"])
    assert res["_rc"] == 1
    assert res["checks"]["toc"]["status"] == "critical"
    assert "holds no table data" in res["msg"] and "allow_empty" in res["msg"]
    assert_clean(primary, prefix, source, source_before)
    res = verify(primary, env, prefix, path=bk["backup_path"], allow_empty=True, restore_test=False)
    assert res["_rc"] == 0 and res["status"] == "ok", res["problems"]


def test_manifest_missing(primary, env, backup, prefix, source, source_before, tmp_path):
    dump = copy_backup(backup, tmp_path, with_manifest=False)
    res = verify(primary, env, prefix, path=dump)
    assert res["_rc"] == 1
    assert res["checks"]["manifest"]["status"] == "critical"
    assert "manifest" in res["msg"] and "is missing" in res["msg"]
    assert_clean(primary, prefix, source, source_before)
    # the same dump with its sha256 given and live counts instead: fine
    sha = backup["manifest"]["sha256"]
    res = verify(primary, env, prefix, path=dump, checksum=sha, compare="source", **conn_args(primary, source))
    assert res["_rc"] == 0, res["problems"]
    assert statuses(res)["checksum"] == "ok" and statuses(res)["row_counts"] == "ok"
    assert_clean(primary, prefix, source, source_before)


def test_older_than_rpo(primary, env, backup, prefix, source, source_before, tmp_path):
    dump = copy_backup(backup, tmp_path)
    manifest_path = dump + ".manifest.json"
    with open(manifest_path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    from datetime import datetime, timedelta, timezone
    manifest["finished_at"] = (datetime.now(timezone.utc) - timedelta(hours=26)).isoformat()  # noqa: UP017
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
    res = verify(primary, env, prefix, path=dump, max_age="1h", restore_test=False)
    assert res["_rc"] == 1
    assert res["checks"]["age"]["status"] == "critical"
    assert "26.0 h old" in res["msg"] and "RPO (max_age) is 60 min" in res["msg"]
    # without a manifest the file's modification time counts
    os.unlink(manifest_path)
    old = os.path.getmtime(dump) - 2 * 86400
    os.utime(dump, (old, old))
    res = verify(primary, env, prefix, path=dump, max_age="1h", restore_test=False, checksum="none")
    assert res["checks"]["age"]["status"] == "critical"
    assert "file modification time" in res["checks"]["age"]["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_scratch_target_unreachable(primary, env, backup, prefix, source, source_before):
    target = {**target_args(primary), "login_port": closed_port(), "connect_timeout": 3}
    res = verify(primary, env, prefix, path=backup["backup_path"], restore_target=target)
    assert res["_rc"] == 1
    assert res["checks"]["restore"]["status"] == "critical"
    assert "restore target unreachable" in res["msg"] and "check that PostgreSQL is running" in res["msg"]
    assert res["checks"]["integrity"]["status"] == "ok"  # still read without the restore
    assert primary["password"] not in res["_raw"].replace('"VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"', "")
    assert_clean(primary, prefix, source, source_before)


def test_wrong_target_password_is_named_and_never_shown(primary, env, backup, prefix, source, source_before):
    wrong = "wrong-" + secrets.token_hex(6)
    res = verify(primary, env, prefix, path=backup["backup_path"],
                 restore_target={**target_args(primary), "login_password": wrong})
    assert res["_rc"] == 1
    assert "password authentication failed" in res["msg"]
    assert wrong not in res["_raw"]
    assert_clean(primary, prefix, source, source_before)


def test_scratch_name_collision(primary, env, backup, prefix, source, source_before):
    taken = f"{prefix}taken"
    create_db(primary, taken, "CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (42);")
    try:
        res = verify(primary, env, prefix, path=backup["backup_path"], scratch_db=taken)
        assert res["_rc"] == 1
        assert res["checks"]["restore"]["status"] == "critical"
        assert "already exists" in res["msg"] and "left untouched" in res["msg"]
        assert leftovers(primary, prefix) == [taken]
        with admin(primary, taken) as conn:  # the existing database was not touched
            assert conn.execute("SELECT id FROM keep_me").fetchall() == [(42,)]
    finally:
        drop_db(primary, taken)
    assert_clean(primary, prefix, source, source_before)


def test_restore_failing_half_way_drops_the_scratch_db(primary, env, prefix, source, source_before, tmp_path):
    """A plain dump whose SQL fails after some tables were created: psql stops, the scratch DB goes."""
    sql = tmp_path / "broken.sql.gz"
    with gzip.open(sql, "wb") as handle:
        handle.write(b"CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\nCREATE TABLE b (id int REFERENCES nope);\n"
                     b"-- PostgreSQL database dump complete\n")
    res = verify(primary, env, prefix, path=str(sql), checksum="none", compare="none")
    assert res["_rc"] == 1
    assert res["checks"]["restore"]["status"] == "critical"
    assert 'relation "nope" does not exist' in res["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_stale_scratch_of_a_dead_run_is_dropped_untagged_is_not(
        primary, env, backup, prefix, source, source_before):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale, untagged = f"{prefix}stale", f"{prefix}notours"
    create_db(primary, stale)
    create_db(primary, untagged)
    try:
        with admin(primary) as conn:
            conn.execute(f"COMMENT ON DATABASE {stale} IS 'ops.runbooks.backup_verify scratch host={host} "
                         f"pid={dead.pid} started=2026-01-01T00:00:00Z'")
        res = verify(primary, env, prefix, path=backup["backup_path"], stale_after="3650d")
        assert res["_rc"] == 0, res["problems"]
        assert res["stale_scratch_dropped"] == [stale]
        assert leftovers(primary, prefix) == [untagged]
    finally:
        drop_db(primary, stale)
        drop_db(primary, untagged)
    assert_clean(primary, prefix, source, source_before)


def test_plain_gz_runbook_style(primary, env, prefix, source, source_before, tmp_path):
    """`pg_dump "$DATABASE_URL" | gzip > db.sql.gz` (runbook 003/004): streamed integrity, restore,
    live row counts; then a truncated and a corrupted copy."""
    gz = tmp_path / "db_20251026.sql.gz"
    dump = subprocess.run(["pg_dump", "-h", primary["host"], "-p", str(primary["port"]), "-U", primary["user"],
                           "-d", source], capture_output=True, check=True,
                          env={**os.environ, "PGPASSWORD": primary["password"]}).stdout
    gz.write_bytes(gzip.compress(dump))
    args = {"latest_in": str(tmp_path), "pattern": "db_*.sql.gz", "checksum": "none", "compare": "source",
            **conn_args(primary, source)}
    res = verify(primary, env, prefix, **args)
    assert res["_rc"] == 0, res["problems"]
    assert res["format"] == "plain_gz"
    assert statuses(res)["integrity"] == "ok" and statuses(res)["row_counts"] == "ok"
    assert res["tables"]["public.orders"] == {"expected": 40000, "actual": 40000, "status": "ok"}
    res = verify(primary, env, prefix, **args, restore_test=False)
    assert res["_rc"] == 0 and res["checks"]["integrity"]["status"] == "ok"

    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    res = verify(primary, env, prefix, **args, restore_test=False)
    assert res["_rc"] == 1 and "truncated" in res["checks"]["integrity"]["msg"]
    res = verify(primary, env, prefix, **args)
    assert res["_rc"] == 1 and res["checks"]["restore"]["status"] == "critical"
    assert "truncated" in res["checks"]["integrity"]["msg"]

    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(corrupt))
    res = verify(primary, env, prefix, **args, restore_test=False)
    assert res["_rc"] == 1 and res["checks"]["integrity"]["status"] == "critical"
    assert "corrupt" in res["checks"]["integrity"]["msg"] or "truncated" in res["checks"]["integrity"]["msg"]
    assert_clean(primary, prefix, source, source_before)


def test_shrink_against_previous_backup(primary, env, prefix, source, source_before, tmp_path):
    (tmp_path / "db_1.sql").write_bytes(b"x" * 10000 + b"\n-- PostgreSQL database dump complete\n")
    os.utime(tmp_path / "db_1.sql", (1, 1))
    (tmp_path / "db_2.sql").write_bytes(b"-- tiny\n-- PostgreSQL database dump complete\n")
    res = verify(primary, env, prefix, latest_in=str(tmp_path), pattern="db_*.sql", checksum="none",
                 restore_test=False, max_shrink_pct=20, min_size="1kB")
    assert res["_rc"] == 1
    assert res["backup_path"].endswith("db_2.sql")
    assert res["checks"]["shrink"]["status"] == "critical" and "smaller than the previous" in res["msg"]
    assert res["checks"]["size"]["status"] == "critical" and "min_size" in res["msg"]
    assert_clean(primary, prefix, source, source_before)


BAD_INPUT = [
    ({"jobs": 0}, "jobs=0 is out of range"),
    ({"checksum": "abc"}, "neither 'manifest', 'none' nor a 64-character sha256"),
    ({"scratch_prefix": "X-"}, "scratch_prefix 'X-' is unsafe"),
    ({"scratch_db": "postgres"}, "must start with scratch_prefix"),
    ({"max_age": "soon"}, "max_age: invalid duration 'soon'"),
    ({"min_size": "lots"}, "min_size: invalid size 'lots'"),
    ({"tolerance_pct": 500}, "tolerance_pct=500.0 is out of range"),
    ({"restore_target": None}, "restore_test=true needs restore_target"),
    ({"latest_in": "/nonexistent-dir"}, "mutually exclusive"),
    ({"jobs": "many"}, "jobs"),
    ({"format": "zip"}, "value of format must be one of"),
]


BAD_IDS = [f"{next(iter(b))}-{i}" for i, (b, _e) in enumerate(BAD_INPUT)]


@pytest.mark.parametrize(("bad", "expected"), BAD_INPUT, ids=BAD_IDS)
def test_bad_input(primary, env, backup, prefix, source, source_before, bad, expected):
    args = {"path": backup["backup_path"], "restore_test": True, "restore_target": target_args(primary),
            "scratch_prefix": prefix}
    args.update(bad)
    if args.get("restore_target") is None:
        args.pop("restore_target")
    res = run_module("backup_verify", args, env)
    assert res["_rc"] == 1 and res["failed"]
    assert expected in res["msg"], res["msg"]
    assert res.get("changed", False) is False
    assert_clean(primary, prefix, source, source_before)


def test_directory_format_backup_verifies_and_a_flipped_byte_in_one_file_is_caught(
        primary, env, prefix, source, source_before, tmp_path):
    bk = run_module("pg_backup", {**conn_args(primary, source), "dest": str(tmp_path), "format": "directory",
                                  "jobs": 2}, env)
    assert bk["_rc"] == 0, bk["_raw"][-2000:]
    res = verify(primary, env, prefix, path=bk["backup_path"])
    assert res["_rc"] == 0, res["problems"]
    assert res["format"] == "directory" and res["tables"]["public.orders"]["actual"] == 40000
    assert res["tables_counted_during_restore"] >= 1
    biggest = max(bk["manifest"]["files"], key=lambda rel: bk["manifest"]["files"][rel]["size"])
    target = os.path.join(bk["backup_path"], biggest)
    with open(target, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0x01]))
    res = verify(primary, env, prefix, path=bk["backup_path"])
    assert res["_rc"] == 1 and res["checks"]["checksum"]["status"] == "critical"
    assert_clean(primary, prefix, source, source_before)


def test_fail_on_never_reports_without_failing(primary, env, prefix, source, source_before, tmp_path):
    res = verify(primary, env, prefix, path=str(tmp_path / "nope.dump"), fail_on="never")
    assert res["_rc"] == 0 and not res.get("failed")
    assert res["status"] == "critical" and res["problems"][0].startswith("exists: backup")
    assert_clean(primary, prefix, source, source_before)
