"""backup_verify with scratch_tablespace on a private PostgreSQL 15 whose tablespace lives on a tiny
tmpfs: a restore that does not fit fails cleanly (message names the full tablespace, scratch database
dropped, no file left in the tablespace, no pg_restore left running, source untouched, server still
up); a restore that fits lands in that tablespace; an unknown tablespace is refused with a hint.

Needs root (mount, chown to postgres) and PostgreSQL 15 binaries, like the private-PG tests."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from backup_data import conn_args, leftovers, module_env, run_module, statuses, table_counts, target_args
from pg_health_helpers import private_postgres

pytestmark = pytest.mark.slow

TAG = "i8j"
TINY_MB = 16
BIG_SQL = """
CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL);
INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 300000) g;
CREATE TABLE small (id int);
INSERT INTO small SELECT generate_series(1, 100);
"""
SMALL_SQL = """
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;
CREATE TABLE notes (id int, note text);
INSERT INTO notes SELECT g, repeat('n', g % 40) FROM generate_series(1, 500) g;
"""


@contextmanager
def tiny_tmpfs(size_mb: int):
    """A tmpfs of `size_mb` MB owned by postgres; always unmounted and removed."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (mount -t tmpfs); run the suite as root like make test does")
    mnt = Path(tempfile.mkdtemp(prefix=f"{TAG}-ts-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mnt)], check=True,
                   capture_output=True, timeout=30)
    try:
        shutil.chown(mnt, "postgres", "postgres")
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)
        mounted = subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0
        if not mounted:
            shutil.rmtree(mnt, ignore_errors=True)
        assert not mounted, f"{mnt} is still mounted"


def admin(node: dict, dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host=node["host"], port=node["port"], user=node["user"], password=node["password"],
                           dbname=dbname, autocommit=True)


def files_under(root: Path) -> list[str]:
    """Everything below root except PostgreSQL's own (empty) PG_<version>_<catalog> directory."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        found += [os.path.join(rel, name) for name in filenames]
        if rel != "." and not (os.sep not in rel and rel.startswith("PG_")):
            found.append(rel + "/")
        del dirnames  # walked by os.walk itself
    return sorted(found)


def pg_restore_processes(scratch_prefix: str) -> list[int]:
    """pids of pg_restore processes working on one of our scratch databases."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "pg_restore" and \
                any(scratch_prefix.encode() in arg for arg in argv):
            out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def lab():
    """A private PG 15 with a 16 MB tmpfs tablespace, a big and a small source database, each dumped
    with ops.runbooks.pg_backup."""
    with tiny_tmpfs(TINY_MB) as mnt, private_postgres() as node:
        space = f"{TAG}_tiny_{secrets.token_hex(2)}"
        with admin(node) as conn:
            conn.execute(f'CREATE TABLESPACE "{space}" LOCATION \'{mnt}\'')
            conn.execute('CREATE DATABASE "i8j_big"')
            conn.execute('CREATE DATABASE "i8j_small"')
            template_size = conn.execute("SELECT pg_database_size('template0')").fetchone()[0]
        with admin(node, "i8j_big") as conn:
            conn.execute(BIG_SQL)
        with admin(node, "i8j_small") as conn:
            conn.execute(SMALL_SQL)
        with admin(node) as conn:
            big_size = conn.execute("SELECT pg_database_size('i8j_big')").fetchone()[0]
        dumps = Path(tempfile.mkdtemp(prefix=f"{TAG}-dumps-"))
        try:
            yield {"node": node, "mnt": mnt, "space": space, "dumps": dumps, "big_size": big_size,
                   "template_size": template_size}
        finally:
            shutil.rmtree(dumps, ignore_errors=True)


@pytest.fixture(scope="module")
def env(ansible_env):
    return module_env(ansible_env)


def dump(lab, env, dbname):
    if dbname in lab.setdefault("done", {}):
        return lab["done"][dbname]
    dest = lab["dumps"] / dbname
    dest.mkdir()
    res = run_module("pg_backup", {**conn_args(lab["node"], dbname), "dest": str(dest), "ssl_mode": "disable"}, env)
    assert res["_rc"] == 0 and res["changed"], res.get("msg")
    lab["done"][dbname] = res
    return res


@pytest.fixture
def prefix(lab):
    pre = f"{TAG}v{secrets.token_hex(3)}_"
    yield pre
    with admin(lab["node"]) as conn:
        for name in leftovers(lab["node"], pre):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def verify(lab, env, prefix, path, **extra):
    args = {"path": path, "restore_test": True, "scratch_prefix": prefix, "jobs": 2,
            "restore_target": {**target_args(lab["node"]), "ssl_mode": "disable"}}
    args.update(extra)
    return run_module("backup_verify", args, env)


def test_the_setup_really_cannot_hold_the_big_database(lab):
    # guards the test below: the tablespace must be smaller than the restored data, larger than template0
    assert lab["big_size"] > TINY_MB * 1024 * 1024, lab["big_size"]
    assert lab["template_size"] < TINY_MB * 1024 * 1024 * 0.75, lab["template_size"]


def test_out_of_disk_is_a_clean_failure(lab, env, prefix):
    node, space = lab["node"], lab["space"]
    backup = dump(lab, env, "i8j_big")
    before = table_counts(node, "i8j_big")
    res = verify(lab, env, prefix, backup["backup_path"], scratch_tablespace=space)
    assert res["_rc"] == 1 and res["failed"] and res["changed"] is False
    st = statuses(res)
    assert st["restore"] == "critical", res["checks"]
    restore_msg = res["checks"]["restore"]["msg"]
    assert f"ran out of disk space in tablespace {space}" in restore_msg, restore_msg
    assert "No space left on device" in restore_msg or "could not extend file" in restore_msg, restore_msg
    assert "scratch_tablespace" in restore_msg and "Free space" in restore_msg
    assert f"ran out of disk space in tablespace {space}" in res["msg"]
    assert st["checksum"] == "ok"  # the backup itself is fine
    assert st.get("cleanup") is None, res["checks"].get("cleanup")
    assert res["scratch_db"].startswith(prefix)
    # nothing left behind
    assert leftovers(node, prefix) == []
    assert files_under(lab["mnt"]) == [], files_under(lab["mnt"])
    assert pg_restore_processes(prefix) == []
    # the source is untouched and the server still works
    assert table_counts(node, "i8j_big") == before
    with admin(node) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_restore_that_fits_lands_in_the_tablespace(lab, env, prefix):
    node, space = lab["node"], lab["space"]
    backup = dump(lab, env, "i8j_small")
    res = verify(lab, env, prefix, backup["backup_path"], scratch_tablespace=space, keep_scratch=True)
    assert res["_rc"] == 0, res.get("msg")
    assert res["status"] == "ok" and statuses(res)["restore"] == "ok" and statuses(res)["row_counts"] == "ok"
    assert res["tables"]["public.items"] == {"expected": 2000, "actual": 2000, "status": "ok"}
    scratch = res["scratch_db"]
    with admin(node) as conn:
        row = conn.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                           "WHERE d.datname = %s", (scratch,)).fetchone()
        assert row == (space,)
        conn.execute(f'DROP DATABASE "{scratch}"')
    assert files_under(lab["mnt"]) == []
    # the same verification without keep_scratch leaves nothing either
    res = verify(lab, env, prefix, backup["backup_path"], scratch_tablespace=space)
    assert res["_rc"] == 0 and res["status"] == "ok", res.get("msg")
    assert leftovers(node, prefix) == []
    assert files_under(lab["mnt"]) == []


@pytest.mark.parametrize(("tablespace", "expect"), [
    ("i8j_no_such_space", "does not exist"),
    ("", "is not a PostgreSQL tablespace name"),
    ("x" * 64, "is not a PostgreSQL tablespace name"),
])
def test_bad_tablespace(lab, env, prefix, tablespace, expect):
    backup = dump(lab, env, "i8j_small")
    res = verify(lab, env, prefix, backup["backup_path"], scratch_tablespace=tablespace)
    assert res["_rc"] == 1 and res["changed"] is False
    assert expect in res["msg"], res["msg"]
    if tablespace == "i8j_no_such_space":
        assert "create the tablespace" in res["msg"] and "scratch_tablespace" in res["msg"]
    assert "Traceback" not in res["_raw"]
    assert leftovers(lab["node"], prefix) == []
