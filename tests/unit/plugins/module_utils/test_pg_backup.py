from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _pg_backup as pb

UTC = dt.timezone.utc  # noqa: UP017
NOW = dt.datetime(2026, 3, 1, 3, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90.0), ("90", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0), ("2d", 172800.0),
    ("1w", 604800.0), ("0.5h", 1800.0), ("26H", 93600.0),
])
def test_parse_duration(text, seconds):
    assert pb.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1x", "h1", "", "1h foo", -5, True, "1h-2m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        pb.parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    (100, 100), ("100", 100), ("500kB", 500000), ("1MiB", 1048576), ("2GB", 2000000000), ("1.5k", 1500),
])
def test_parse_size(text, size):
    assert pb.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1XB", -1, False, "MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        pb.parse_size(text)


def test_libpq_env_carries_the_password_only_in_the_environment_and_drops_inherited_pg_vars():
    env = pb.libpq_env({"host": "db", "port": 5433, "user": "u", "password": "s3cret", "sslmode": "require",
                        "application_name": "ops.runbooks", "connect_timeout": 5},
                       base_env={"PATH": "/bin", "PGHOST": "elsewhere", "PGSERVICE": "x"}, dbname="app")
    assert env == {"PATH": "/bin", "PGHOST": "db", "PGPORT": "5433", "PGUSER": "u", "PGPASSWORD": "s3cret",
                   "PGSSLMODE": "require", "PGAPPNAME": "ops.runbooks", "PGCONNECT_TIMEOUT": "5",
                   "PGDATABASE": "app"}


def test_libpq_env_refuses_unknown_keywords():
    with pytest.raises(pb.PgBackupError, match="cannot be passed"):
        pb.libpq_env({"weird_option": "1"}, base_env={})


def test_pg_dump_argv_has_no_secret_and_uses_the_snapshot():
    argv = pb.pg_dump_argv("/usr/bin/pg_dump", "directory", "/bk/x.dir.partial", "00000003-1B-1", 4, 6)
    assert argv == ["/usr/bin/pg_dump", "--format=d", "--file=/bk/x.dir.partial", "--snapshot=00000003-1B-1",
                    "--no-password", "--jobs=4", "--compress=6"]
    assert "--jobs" not in " ".join(pb.pg_dump_argv("pg_dump", "custom", "/f", "s", 4, None))


def test_pg_tool_prefers_bin_dir_then_server_major_then_path():
    assert pb.pg_tool("pg_dump", "/opt/pg/bin", 15, exists=lambda p: True) == "/opt/pg/bin/pg_dump"
    with pytest.raises(pb.PgBackupError, match="check pg_bin_dir"):
        pb.pg_tool("pg_dump", "/opt/pg/bin", 15, exists=lambda p: False)
    assert pb.pg_tool("pg_dump", None, 16, exists=lambda p: "/16/" in p) == "/usr/lib/postgresql/16/bin/pg_dump"
    assert pb.pg_tool("pg_dump", None, 16, exists=lambda p: False, which=lambda n: "/usr/bin/" + n) == \
        "/usr/bin/pg_dump"
    with pytest.raises(pb.PgBackupError, match="postgresql-client-16"):
        pb.pg_tool("pg_dump", None, 16, exists=lambda p: False, which=lambda n: None)


def manifest(dest, name, finished, database="app", prefix="app", tool=pb.TOOL):
    data = {"tool": tool, "dump": name, "database": database, "prefix": prefix, "finished_at": finished}
    (dest / name).write_bytes(b"PGDMP")
    (dest / (name + pb.MANIFEST_SUFFIX)).write_text(json.dumps(data))


def test_list_backups_only_ours_newest_first(tmp_path):
    manifest(tmp_path, "app_1.dump", "2026-01-01T00:00:00.000Z")
    manifest(tmp_path, "app_3.dump", "2026-01-03T00:00:00.000Z")
    manifest(tmp_path, "app_2.dump", "2026-01-02T00:00:00.000Z")
    manifest(tmp_path, "other_1.dump", "2026-01-04T00:00:00.000Z", database="other", prefix="other")
    manifest(tmp_path, "foreign.dump", "2026-01-05T00:00:00.000Z", tool="pgbackrest")
    (tmp_path / "broken.dump.manifest.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("x")
    found = pb.list_backups(str(tmp_path), "app", "app")
    assert [os.path.basename(b["path"]) for b in found] == ["app_3.dump", "app_2.dump", "app_1.dump"]


def test_list_backups_ignores_a_manifest_pointing_elsewhere(tmp_path):
    (tmp_path / "a.dump.manifest.json").write_text(json.dumps({"tool": pb.TOOL, "dump": "b.dump",
                                                               "database": "app", "finished_at": "x"}))
    assert pb.list_backups(str(tmp_path), "app") == []


def backups(n):
    return [{"path": f"/bk/app_{i}.dump", "manifest_path": f"/bk/app_{i}.dump.manifest.json",
             "finished_at": f"2026-01-0{i}T00:00:00.000Z"} for i in range(n, 0, -1)]


@pytest.mark.parametrize(("keep", "existing", "removed"), [
    (None, 5, []), (1, 3, ["/bk/app_3.dump", "/bk/app_2.dump", "/bk/app_1.dump"]),
    (2, 3, ["/bk/app_2.dump", "/bk/app_1.dump"]), (3, 2, []), (7, 0, []),
])
def test_plan_retention_counts_the_new_backup(keep, existing, removed):
    plan = pb.plan_retention(backups(existing), keep, "/bk/new.dump")
    assert [b["path"] for b in plan] == removed


def test_plan_backup_new_dump_path_and_retention():
    params = {"dest": "/bk", "prefix": "app", "format": "custom", "keep": 2, "min_interval": None}
    plan = pb.plan_backup(params, "app", backups(2), NOW, exists=lambda p: False)
    assert plan["action"] == "dump"
    assert plan["backup_path"] == "/bk/app_20260301T030000Z.dump"
    assert plan["manifest_path"] == "/bk/app_20260301T030000Z.dump.manifest.json"
    assert [b["path"] for b in plan["remove"]] == ["/bk/app_1.dump"]


def test_plan_backup_never_overwrites_an_existing_name():
    params = {"dest": "/bk", "prefix": "app", "format": "directory", "keep": None, "min_interval": None}
    taken = {"/bk/app_20260301T030000Z.dir"}
    plan = pb.plan_backup(params, "app", [], NOW, exists=lambda p: p in taken)
    assert plan["backup_path"] == "/bk/app_20260301T030000Z-1.dir"


def test_plan_backup_reuses_a_recent_backup_with_min_interval():
    params = {"dest": "/bk", "prefix": "app", "format": "custom", "keep": 2, "min_interval": "1h"}
    recent = [{"path": "/bk/app_9.dump", "manifest_path": "/bk/app_9.dump.manifest.json",
               "finished_at": "2026-03-01T02:30:00.000Z"}]
    plan = pb.plan_backup(params, "app", recent, NOW, exists=lambda p: True)
    assert plan["action"] == "reuse" and plan["backup_path"] == "/bk/app_9.dump" and plan["remove"] == []
    old = [dict(recent[0], finished_at="2026-03-01T01:00:00.000Z")]
    assert pb.plan_backup(params, "app", old, NOW, exists=lambda p: False)["action"] == "dump"


def test_sha256_dump_file_and_directory(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    digest, files = pb.sha256_dump(str(tmp_path / "f"))
    assert digest == hashlib.sha256(b"abc").hexdigest() and files == {}
    d = tmp_path / "d"
    d.mkdir()
    (d / "toc.dat").write_bytes(b"toc")
    (d / "3001.dat.gz").write_bytes(b"data")
    digest, files = pb.sha256_dump(str(d))
    lines = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n"
                    for name, body in [("3001.dat.gz", b"data"), ("toc.dat", b"toc")])
    assert digest == hashlib.sha256(lines.encode()).hexdigest()
    assert files["toc.dat"] == {"sha256": hashlib.sha256(b"toc").hexdigest(), "size": 3}
    assert pb.dump_size(str(d)) == 7


class FakeConn:
    def __init__(self, tables, counts):
        self.tables, self.counts, self.sql = tables, counts, []

    def execute(self, sql, params=None):
        self.sql.append(sql)
        outer = self

        class Cur:
            def fetchone(self):
                if "current_database()" in sql:
                    return ("app", "15.18", "150018", 12345)
                if "pg_export_snapshot" in sql:
                    return ("00000003-0000001B-1",)
                if "count(*)" in sql:
                    return (outer.counts[sql.split("ONLY ")[1]],)
                return None

            def fetchall(self):
                return outer.tables
        return Cur()


class FakeRunner:
    def __init__(self, rc=0, err=""):
        self.rc, self.err, self.calls = rc, err, []

    def run(self, argv, env=None, stdin_chunks=None, capture_stdout=True):
        self.calls.append((argv, env))
        out = [a for a in argv if a.startswith("--file=")][0].split("=", 1)[1]
        with open(out, "wb") as handle:
            handle.write(b"PGDMP fake")
        return self.rc, "", self.err


def test_take_backup_counts_in_the_exported_snapshot_and_writes_the_manifest(tmp_path):
    conn = FakeConn([("public", "users"), ("Billing", "Invoice Lines")],
                    {'"public"."users"': 3, '"Billing"."Invoice Lines"': 7})
    runner = FakeRunner()
    params = {"format": "custom", "prefix": "app", "jobs": 1, "compress": None}
    plan = {"backup_path": str(tmp_path / "app_1.dump"), "manifest_path": str(tmp_path / "app_1.dump.manifest.json")}
    result = pb.take_backup(conn, runner, plan, params, {"PGPASSWORD": "pw"}, "pg_dump", now=lambda: NOW)
    assert conn.sql[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    assert conn.sql[-1] == "ROLLBACK"
    argv, env = runner.calls[0]
    assert "--snapshot=00000003-0000001B-1" in argv and "pw" not in " ".join(argv)
    assert env == {"PGPASSWORD": "pw"}
    assert result["tables"] == {"public.users": 3, "Billing.Invoice Lines": 7}
    assert result["sha256"] == hashlib.sha256(b"PGDMP fake").hexdigest()
    assert json.loads((tmp_path / "app_1.dump.manifest.json").read_text()) == result
    assert sorted(os.listdir(tmp_path)) == ["app_1.dump", "app_1.dump.manifest.json"]


def test_take_backup_failure_removes_the_partial_dump(tmp_path):
    conn = FakeConn([], {})
    plan = {"backup_path": str(tmp_path / "x.dump"), "manifest_path": str(tmp_path / "x.dump.manifest.json")}
    runner = FakeRunner(rc=1, err="pg_dump: error: query failed: permission denied for table secrets\n")
    with pytest.raises(pb.PgBackupError, match="permission denied for table secrets"):
        pb.take_backup(conn, runner, plan, {"format": "custom", "prefix": "x"}, {}, "pg_dump", now=lambda: NOW)
    assert os.listdir(tmp_path) == []
    assert conn.sql[-1] == "ROLLBACK"


def test_apply_retention_stays_inside_dest(tmp_path):
    (tmp_path / "a.dump").write_bytes(b"x")
    (tmp_path / "a.dump.manifest.json").write_text("{}")
    outside = tmp_path.parent / f"outside-{os.getpid()}.dump"
    outside.write_bytes(b"x")
    try:
        removed = pb.apply_retention([
            {"path": str(tmp_path / "a.dump"), "manifest_path": str(tmp_path / "a.dump.manifest.json")},
            {"path": str(outside), "manifest_path": str(outside) + ".manifest.json"},
        ], str(tmp_path))
        assert os.listdir(tmp_path) == [] and outside.exists()
        assert removed[0] == str(tmp_path / "a.dump")
    finally:
        outside.unlink()


def test_process_runner_streams_stdin_and_reports_rc(tmp_path):
    runner = pb.ProcessRunner()
    rc, out, err = runner.run([sys.executable, "-c", "import sys; d=sys.stdin.buffer.read(); print(len(d))"],
                              stdin_chunks=iter([b"ab", b"cde"]))
    assert (rc, out.strip(), err) == (0, "5", "")
    rc, _out, err = runner.run([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert rc == 3 and err == "boom"


def test_process_runner_stops_the_child_when_the_feed_fails():
    def feed():
        yield b"x"
        raise ValueError("corrupt input")
    runner = pb.ProcessRunner()
    with pytest.raises(ValueError, match="corrupt input"):
        runner.run([sys.executable, "-c", "import sys,time; sys.stdin.read(); time.sleep(30)"], stdin_chunks=feed())


def test_last_line_prefers_the_error():
    assert pb.last_line("pg_restore: creating TABLE\npg_restore: error: could not read\nnoise\n") == \
        "pg_restore: error: could not read"
    assert pb.last_line("a\n\nb\n") == "b"
