from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import threading

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _backup_verify as bv
from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import TOOL

UTC = dt.timezone.utc  # noqa: UP017
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_age_within_and_over_rpo():
    assert bv.evaluate_age(600, 3600, "manifest")["status"] == "ok"
    item = bv.evaluate_age(26 * 3600, 3600, "file modification time")
    assert item["status"] == "critical"
    assert item["msg"].startswith("backup is 26.0 h old (file modification time); RPO (max_age) is 60 min")
    assert (item["value"], item["threshold"]) == (93600, 3600)
    assert bv.evaluate_age(10, None, "x")["status"] == "ok"


def test_size_and_shrink():
    assert bv.evaluate_size(10, 100)["status"] == "critical"
    assert bv.evaluate_size(1000, 100)["status"] == "ok"
    assert bv.evaluate_shrink(50, ("/bk/prev", 100), 20)["status"] == "critical"
    assert bv.evaluate_shrink(50, ("/bk/prev", 100), 20)["value"] == 50.0
    assert bv.evaluate_shrink(90, ("/bk/prev", 100), 20)["status"] == "ok"
    assert bv.evaluate_shrink(200, ("/bk/prev", 100), 20)["status"] == "ok"  # growth is fine
    assert bv.evaluate_shrink(50, None, 20)["status"] == "skipped"
    assert bv.evaluate_shrink(50, ("/bk/prev", 100), None)["status"] == "skipped"


def test_checksum():
    assert bv.evaluate_checksum("AB" * 32, "ab" * 32, "manifest")["status"] == "ok"
    item = bv.evaluate_checksum("ab" * 32, "cd" * 32, "manifest")
    assert item["status"] == "critical" and "sha256 mismatch" in item["msg"]
    assert bv.evaluate_checksum("ab" * 32, None, "manifest", error="EIO")["status"] == "critical"


TOC = """;
; Archive created at 2026-11-23 14:14:27 UTC
;     dbname: app
;
6; 2615 16480 SCHEMA - s postgres
215; 1259 16473 TABLE public a postgres
216; 1259 16481 TABLE s Odd Name postgres
3347; 0 16473 TABLE DATA public a postgres
3348; 0 16481 TABLE DATA s Odd Name postgres
3204; 2606 16479 CONSTRAINT public a a_pkey postgres
"""


def test_parse_toc():
    assert bv.parse_toc(TOC) == {"entries": 6, "table_data": ["public.a", "s.Odd Name"],
                                 "ids": {3347: ("public", "a"), 3348: ("s", "Odd Name")}}


def test_evaluate_toc():
    assert bv.evaluate_toc(0, TOC, "", False)["status"] == "ok"
    empty = bv.evaluate_toc(0, "6; 2615 16480 SCHEMA - s postgres\n", "", False)
    assert empty["status"] == "critical" and "holds no table data" in empty["msg"]
    assert bv.evaluate_toc(0, "6; 2615 16480 SCHEMA - s postgres\n", "", True)["status"] == "ok"
    bad = bv.evaluate_toc(1, "", "pg_restore: error: could not read from input file: end of file\n", False)
    assert bad["status"] == "critical" and "end of file" in bad["msg"] and "truncated" in bad["msg"]


def test_compare_counts_exact_and_tolerance():
    item, tables = bv.compare_counts({"a": 10, "b": 0}, {"a": 10, "b": 0}, 0, "manifest")
    assert item["status"] == "ok" and tables["a"] == {"expected": 10, "actual": 10, "status": "ok"}
    item, tables = bv.compare_counts({"a": 10, "b": 5}, {"a": 9}, 0, "manifest")
    assert item["status"] == "critical"
    assert "a has 9 rows, manifest says 10" in item["msg"] and "b missing after restore" in item["msg"]
    item, _tables = bv.compare_counts({"a": 1000}, {"a": 990}, 2.0, "live source")
    assert item["status"] == "ok" and item["threshold"] == "2.0% tolerance"
    item, tables = bv.compare_counts({"a": 1}, {"a": 1, "new": 3}, 0, "manifest")
    assert item["status"] == "warning" and tables["new"]["status"] == "warning"


def snap(sid, status, minutes_ago, kind="automated"):
    return {"DBSnapshotIdentifier": sid, "Status": status, "SnapshotType": kind,
            "SnapshotCreateTime": NOW - dt.timedelta(minutes=minutes_ago)}


def test_rds_latest_available_and_fresh():
    out = bv.evaluate_rds([snap("old", "available", 2000), snap("new", "available", 30)], NOW, 3600, "db")
    assert out["rds_snapshot"]["status"] == "ok" and out["rds_snapshot"]["value"]["id"] == "new"
    assert out["rds_age"]["status"] == "ok" and out["rds_age"]["value"] == 1800


def test_rds_too_old_creating_and_none():
    out = bv.evaluate_rds([snap("s1", "available", 26 * 60)], NOW, 3600, "db")
    assert out["rds_age"]["status"] == "critical" and "RDS snapshot s1" in out["rds_age"]["msg"]
    out = bv.evaluate_rds([snap("s1", "available", 26 * 60), snap("s2", "creating", 1)], NOW, 30 * 3600, "db")
    assert out["rds_snapshot"]["status"] == "warning" and out["rds_age"]["status"] == "ok"
    out = bv.evaluate_rds([snap("s2", "failed", 1)], NOW, 3600, "db")
    assert out["rds_snapshot"]["status"] == "critical" and out["rds_age"]["status"] == "skipped"
    out = bv.evaluate_rds([], NOW, 3600, "prod")
    assert out["rds_snapshot"]["status"] == "critical" and "no RDS snapshot of prod" in out["rds_snapshot"]["msg"]


def test_naive_rds_times_are_utc():
    naive = {"DBSnapshotIdentifier": "s", "Status": "available", "SnapshotType": "manual",
             "SnapshotCreateTime": (NOW - dt.timedelta(hours=2)).replace(tzinfo=None)}
    assert bv.evaluate_rds([naive], NOW, 3600, "db")["rds_age"]["value"] == 7200


def test_overall_and_fail_on():
    checks = {"exists": bv.check("ok"), "age": bv.check("warning", "old-ish"), "toc": bv.skipped("plain")}
    assert bv.overall(checks) == ("warning", ["age: old-ish"])
    checks["restore"] = bv.check("critical", "failed")
    assert bv.overall(checks) == ("critical", ["age: old-ish", "restore: failed"])
    assert bv.should_fail("critical", "critical") and not bv.should_fail("warning", "critical")
    assert bv.should_fail("warning", "warning") and not bv.should_fail("critical", "never")
    assert not bv.should_fail("ok", "warning")


def test_scratch_name_and_tag_round_trip():
    name = bv.scratch_name("ops_verify_", NOW, "a1b2c3")
    assert name == "ops_verify_20260301120000_a1b2c3"
    assert len(bv.scratch_name("p" * 60, NOW)) == 63
    tag = bv.parse_scratch_comment(bv.scratch_comment("host-1", 4242, NOW))
    assert tag == {"host": "host-1", "pid": 4242, "started": NOW}
    assert bv.parse_scratch_comment("production database, do not drop") is None
    assert bv.parse_scratch_comment(None) is None


def test_stale_scratch_selection():
    def tag(host, pid, hours_ago):
        return bv.scratch_comment(host, pid, NOW - dt.timedelta(hours=hours_ago))
    rows = [
        ("ops_verify_dead", tag("me", 1, 1)),          # same host, dead pid -> stale
        ("ops_verify_alive", tag("me", 2, 1)),         # same host, alive -> keep
        ("ops_verify_other", tag("them", 3, 1)),       # other host, recent -> keep (cannot see its pid)
        ("ops_verify_ancient", tag("them", 3, 48)),    # other host, old -> stale
        ("ops_verify_untagged", None),                 # not ours -> never
        ("ops_verify_foreign", "some comment"),        # not ours -> never
        ("app_prod", tag("me", 1, 100)),               # wrong prefix -> never
    ]
    stale = bv.stale_scratch(rows, "ops_verify_", "me", lambda pid: pid == 2, NOW, 24 * 3600)
    assert stale == ["ops_verify_dead", "ops_verify_ancient"]


def test_pid_alive():
    assert bv.pid_alive(os.getpid())
    assert not bv.pid_alive(2 ** 22 + 12345)


def test_detect_format(tmp_path):
    (tmp_path / "c").write_bytes(b"PGDMP\x01\x0e")
    (tmp_path / "g").write_bytes(gzip.compress(b"SELECT 1;"))
    (tmp_path / "p").write_bytes(b"--\n-- PostgreSQL database dump\n")
    (tmp_path / "d").mkdir()
    assert [bv.detect_format(str(tmp_path / n)) for n in "cgpd"] == ["custom", "plain_gz", "plain", "directory"]


def test_candidates_newest_first_and_ignores_manifests_and_partials(tmp_path):
    for i, name in enumerate(["db_1.sql.gz", "db_2.sql.gz", "db_3.sql.gz.partial", "db_2.sql.gz.manifest.json",
                              "other.sql.gz", ".db_9.sql.gz"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    found = bv.candidates_in(str(tmp_path), "db_*")
    assert [os.path.basename(p) for p in found] == ["db_2.sql.gz", "db_1.sql.gz"]


def test_gzip_stream_ok_multi_member_truncated_corrupt(tmp_path):
    body = b"-- dump\n" + os.urandom(300000).hex().encode() + b"\n-- PostgreSQL database dump complete\n"
    good = tmp_path / "good.sql.gz"
    good.write_bytes(gzip.compress(body[:1000]) + gzip.compress(body[1000:]))
    assert b"".join(bv.gzip_chunks(str(good))) == body
    assert bv.plain_complete(str(good), bv.gzip_chunks(str(good))) == (True, len(body))
    data = good.read_bytes()
    (tmp_path / "trunc.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(bv.IntegrityError, match="truncated"):
        b"".join(bv.gzip_chunks(str(tmp_path / "trunc.gz")))
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.gz").write_bytes(bytes(bad))
    with pytest.raises(bv.IntegrityError):
        b"".join(bv.gzip_chunks(str(tmp_path / "bad.gz")))


def test_plain_complete(tmp_path):
    (tmp_path / "a.sql").write_bytes(b"SELECT 1;\n-- PostgreSQL database dump complete\n\n")
    (tmp_path / "b.sql").write_bytes(b"SELECT 1;\nCOPY t FROM stdin;\n1\n")
    assert bv.plain_complete(str(tmp_path / "a.sql"))[0] is True
    assert bv.plain_complete(str(tmp_path / "b.sql"))[0] is False


def test_signals_raise_turns_sigterm_into_interrupted_once():
    with pytest.raises(bv.Interrupted) as info, bv.signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(5)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


# ---------------------------------------------------------------------------- Verifier with fakes


class Runner:
    def __init__(self, toc_rc=0, toc=TOC, restore_rc=0, restore_err=""):
        self.calls = []
        self.toc_rc, self.toc, self.restore_rc, self.restore_err = toc_rc, toc, restore_rc, restore_err
        self.terminated = 0

    def run(self, argv, env=None, stdin_chunks=None, capture_stdout=True, on_stderr_line=None):
        self.calls.append((list(argv), env))
        if on_stderr_line is not None:  # what pg_restore --verbose -j N prints when a table's data is in
            on_stderr_line("pg_restore: finished item 3347 TABLE DATA a\n")
        if "--list" in argv:
            return self.toc_rc, self.toc, "" if self.toc_rc == 0 else "pg_restore: error: bad\n"
        return self.restore_rc, "", self.restore_err

    def terminate_all(self):
        self.terminated += 1


class Cursor:
    def __init__(self, rows):
        self.rows = rows

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows


class Server:
    """A fake PostgreSQL server: databases, comments and tables per database."""

    def __init__(self, tables=None):
        self.dbs = {"postgres": None}
        self.tables = tables or {}
        self.log = []

    def connect(self, dbname):
        server = self

        class Conn:
            def execute(self, sql, params=None):
                server.log.append((dbname, sql, params))
                if sql.startswith("CREATE DATABASE"):
                    server.dbs[sql.split('"')[1]] = None
                elif sql.startswith("DROP DATABASE"):
                    server.dbs.pop(sql.split('"')[1], None)
                elif sql.startswith("COMMENT ON DATABASE"):
                    server.dbs[sql.split('"')[1]] = sql.split("'")[1]
                elif "shobj_description" in sql:
                    return Cursor([(n, c) for n, c in server.dbs.items() if n.startswith("ops_verify_")])
                elif "FROM pg_catalog.pg_database WHERE datname" in sql:
                    return Cursor([(1,)] if params[0] in server.dbs else [])
                elif "count(*)" in sql:
                    ident = sql.split("ONLY ")[1]
                    schema, table = [p.strip('"') for p in ident.split('"."')]
                    return Cursor([(server.tables[f"{schema}.{table}"],)])
                elif "pg_total_relation_size" in sql:
                    return Cursor([tuple(k.split(".", 1)) for k in server.tables])
                return Cursor([])

            def close(self):
                pass
        return Conn()


def write_backup(tmp_path, tables, finished=NOW):
    dump = tmp_path / "app.dump"
    dump.write_bytes(b"PGDMP fake archive")
    import hashlib
    manifest = {"tool": TOOL, "dump": "app.dump", "database": "app", "prefix": "app",
                "finished_at": finished.isoformat().replace("+00:00", "Z"),
                "sha256": hashlib.sha256(dump.read_bytes()).hexdigest(), "tables": tables}
    (tmp_path / "app.dump.manifest.json").write_text(json.dumps(manifest))
    return str(dump)


def opts(**extra):
    base = {"path": None, "format": "auto", "checksum": "manifest", "restore_test": True, "compare": "manifest",
            "jobs": 2, "scratch_prefix": "ops_verify_", "stale_after": 86400, "cleanup_stale": True,
            "max_age": 3600}
    base.update(extra)
    return base


def verifier(o, server, runner, alive=lambda pid: True):
    return bv.Verifier(o, runner, target=server.connect, target_env=lambda db: {"PGDATABASE": db},
                       source=lambda: server.connect("app"), tool=lambda n: f"/bin/{n}", host="me", pid=99,
                       now=lambda: NOW + dt.timedelta(minutes=5), alive=alive)


def test_verifier_happy_path_drops_scratch_and_compares(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3, "s.Odd Name": 2})
    server = Server({"public.a": 3, "s.Odd Name": 2})
    runner = Runner()
    result = verifier(opts(path=path), server, runner).run()
    assert result["status"] == "ok", result["problems"]
    assert result["tables"]["s.Odd Name"] == {"expected": 2, "actual": 2, "status": "ok"}
    assert list(server.dbs) == ["postgres"]  # scratch dropped
    restore_argv, env = runner.calls[1]
    assert restore_argv[:5] == ["/bin/pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                                "--no-password"]
    assert "--jobs=2" in restore_argv and "--verbose" in restore_argv
    assert env == {"PGDATABASE": result["scratch_db"]}
    assert result["tables_counted_during_restore"] == 1  # public.a, from the "finished item 3347" line
    comment = [sql for _db, sql, _p in server.log if sql.startswith("COMMENT")][0]
    assert "host=me pid=99" in comment
    assert result["backup_age_seconds"] == 300


def test_verifier_restore_failure_still_drops_scratch(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    runner = Runner(restore_rc=1, restore_err="pg_restore: error: could not read from input file: end of file\n")
    result = verifier(opts(path=path), server, runner).run()
    assert result["status"] == "critical"
    assert result["checks"]["restore"]["status"] == "critical"
    assert "end of file" in result["checks"]["restore"]["msg"]
    assert list(server.dbs) == ["postgres"] and runner.terminated == 1


def test_verifier_interrupted_mid_restore_drops_scratch(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})

    class Interrupting(Runner):
        def run(self, argv, env=None, stdin_chunks=None, capture_stdout=True, on_stderr_line=None):
            if "--list" not in argv:
                raise bv.Interrupted(signal.SIGTERM)
            return super().run(argv, env, stdin_chunks, capture_stdout)
    runner = Interrupting()
    ver = verifier(opts(path=path), server, runner)
    with pytest.raises(bv.Interrupted):
        ver.run()
    assert list(server.dbs) == ["postgres"] and runner.terminated == 1
    assert ver.result["scratch_db"].startswith("ops_verify_")


def test_verifier_keep_scratch(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    result = verifier(opts(path=path, keep_scratch=True), server, Runner()).run()
    assert result["scratch_db"] in server.dbs


def test_verifier_row_count_mismatch(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 2})
    result = verifier(opts(path=path), server, Runner()).run()
    assert result["checks"]["row_counts"]["status"] == "critical"
    assert "public.a has 2 rows, manifest says 3" in result["problems"][0]


def test_verifier_explicit_scratch_name_collision_leaves_it(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    server.dbs["ops_verify_mine"] = "someone's data"
    result = verifier(opts(path=path, scratch_db="ops_verify_mine"), server, Runner()).run()
    assert result["checks"]["restore"]["status"] == "critical"
    assert "already exists" in result["checks"]["restore"]["msg"]
    assert server.dbs["ops_verify_mine"] == "someone's data"
    assert not any(sql.startswith(("CREATE", "DROP")) for _db, sql, _p in server.log)


def test_verifier_drops_stale_scratch_first(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    server.dbs["ops_verify_old"] = bv.scratch_comment("me", 12345, NOW)
    result = verifier(opts(path=path), server, Runner(), alive=lambda pid: pid != 12345).run()
    assert result["stale_scratch_dropped"] == ["ops_verify_old"]
    assert list(server.dbs) == ["postgres"]


def test_verifier_unreachable_target(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})

    def unreachable(_db):
        raise bv.TargetError("cannot connect to PostgreSQL as postgres@x:1/postgres: refused; check ...")
    ver = bv.Verifier(opts(path=path), Runner(), target=unreachable, target_env=lambda db: {},
                      tool=lambda n: n, now=lambda: NOW)
    result = ver.run()
    assert result["checks"]["restore"]["status"] == "critical"
    assert result["checks"]["restore"]["msg"].startswith("restore target unreachable: cannot connect")


def test_verifier_missing_and_manifest_missing(tmp_path):
    result = bv.Verifier(opts(path=str(tmp_path / "nope")), Runner()).run()
    assert result["checks"]["exists"]["status"] == "critical"
    assert result["checks"]["restore"]["status"] == "skipped"
    (tmp_path / "x.dump").write_bytes(b"PGDMP")
    server = Server({"public.a": 3})
    result = verifier(opts(path=str(tmp_path / "x.dump")), server, Runner()).run()
    assert result["checks"]["manifest"]["status"] == "critical"
    assert result["checks"]["checksum"]["status"] == "critical"
    assert list(server.dbs) == ["postgres"]


def test_table_counter_counts_each_table_once_on_several_connections():
    server = Server({"public.a": 3, "public.b": 4, "s.c": 5})
    counter = bv.TableCounter(lambda: server.connect("scratch"), 2, threading.Event())
    for ident in [("public", "a"), ("public", "b"), ("public", "a"), ("s", "c")]:
        counter.put(*ident)
    assert counter.finish() == {"public.a": 3, "public.b": 4, "s.c": 5}
    assert sum(1 for _db, sql, _p in server.log if "count(*)" in sql) == 3


def test_table_counter_reports_a_failure():
    def broken():
        raise bv.TargetError("gone")
    counter = bv.TableCounter(broken, 2, threading.Event())
    counter.put("public", "a")
    with pytest.raises(bv.TargetError, match="gone"):
        counter.finish()


def test_verifier_drop_failure_is_a_named_finding_not_a_crash(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    real_connect = server.connect

    def connect(dbname):
        conn = real_connect(dbname)
        execute = conn.execute

        def guarded(sql, params=None):
            if sql.startswith("DROP DATABASE"):
                raise RuntimeError("server closed the connection unexpectedly")
            return execute(sql, params)
        conn.execute = guarded
        return conn
    ver = bv.Verifier(opts(path=path), Runner(), target=connect, target_env=lambda db: {}, tool=lambda n: n,
                      now=lambda: NOW)
    result = ver.run()
    assert result["checks"]["cleanup"]["status"] == "critical"
    assert f"scratch database {result['scratch_db']} could not be dropped" in result["checks"]["cleanup"]["msg"]
    assert result["status"] == "critical"


def test_verifier_signal_landing_mid_create_still_drops(tmp_path):
    path = write_backup(tmp_path, {"public.a": 3})
    server = Server({"public.a": 3})
    real_connect = server.connect

    def connect(dbname):
        conn = real_connect(dbname)
        execute = conn.execute

        def interrupted_after_create(sql, params=None):
            out = execute(sql, params)
            if sql.startswith("CREATE DATABASE"):
                raise bv.Interrupted(signal.SIGTERM)  # the database exists, the call never returned
            return out
        conn.execute = interrupted_after_create
        return conn
    ver = bv.Verifier(opts(path=path), Runner(), target=connect, target_env=lambda db: {}, tool=lambda n: n,
                      now=lambda: NOW)
    with pytest.raises(bv.Interrupted):
        ver.run()
    assert list(server.dbs) == ["postgres"]
