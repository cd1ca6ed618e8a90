"""Benchmark: ops.runbooks.backup_verify (full: checksum + TOC + restore + row counts) against a
bare `pg_restore -j N` of the same dump, both measured here, in this run.

Starts a private throwaway PostgreSQL 15 (free port, temp dir, stopped at the end) so the
lab's primary/standby are not loaded with a gigabyte of WAL, fills it with ~--size-mb of
data (generate_series), takes the dump with ops.runbooks.pg_backup, then alternates
baseline and verify --rounds times and prints medians and ratios.

Not collected by pytest, not run by `make test`:

    .venv/bin/python bench/backup_verify/run.py [--size-mb 1100] [--jobs 2] [--rounds 3] [--no-gzip]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab import core  # noqa: E402

PG_BIN = Path(os.environ.get("OPS_LAB_PG_BIN", "/usr/lib/postgresql/15/bin"))


def sh(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}): {proc.stderr.strip()[-1000:]}")
    return proc


class Server:
    def __init__(self, base: Path):
        self.base = base
        self.data = base / "data"
        self.port = core.free_port()

    def start(self):
        shutil.chown(self.base, "postgres", "postgres")
        core.run([PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8"], user="postgres")
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.base}'\n"
                       "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\nmax_wal_size = '4GB'\n"
                       "checkpoint_timeout = '30min'\nmax_connections = 40\nlogging_collector = off\n")
        core.run([PG_BIN / "pg_ctl", "-D", self.data, "-w", "-l", self.base / "log", "start"], user="postgres")

    def stop(self):
        core.run([PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"], user="postgres", check=False)

    def psql(self, sql, db="postgres"):
        return sh(["psql", "-XAtq", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", db, "-c", sql]
                  ).stdout.strip()


def fill(server: Server, db: str, size_mb: int):
    scale = size_mb / 215.0  # the integration tests' dataset is ~215 MB at scale 1
    server.psql(f"CREATE DATABASE {db}")
    n_events, n_acc, n_blobs = int(1_200_000 * scale), int(300_000 * scale), int(20_000 * scale)
    half = n_events // 2
    sql = f"""
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, kind int NOT NULL, payload text);
INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 second', g % 17,
                          md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {half}) g;
CREATE TABLE events_archive (LIKE events INCLUDING ALL);
INSERT INTO events_archive SELECT g, timestamptz '2025-01-01' + g * interval '1 second', g % 17,
                          md5(g::text) || md5((g * 3)::text) FROM generate_series(1, {n_events - half}) g;
CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2));
INSERT INTO accounts SELECT g, 'acct-' || g, (g % 100000) / 100.0 FROM generate_series(1, {n_acc}) g;
CREATE INDEX ON accounts (name);
CREATE TABLE blobs (id int, body text);
INSERT INTO blobs SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, {n_blobs}) g;
"""  # noqa: S608  (only integers are interpolated)
    server.psql(sql, db)
    server.psql("VACUUM ANALYZE", db)
    return int(server.psql(f"SELECT pg_database_size('{db}')"))


def run_module(pp: str, name: str, args: dict) -> tuple[float, dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = pp
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", f"ansible_collections.ops.runbooks.plugins.modules.{name}",
                           handle.name], capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - start
    os.unlink(handle.name)
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise SystemExit(f"{name} failed: {result.get('msg')}")
    return elapsed, result


def timed(cmd, **kw) -> float:
    start = time.monotonic()
    sh(cmd, **kw)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--size-mb", type=int, default=1100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-gzip", action="store_true", help="skip the plain .sql.gz integrity comparison")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ops-bench-backup-verify-"))
    os.chmod(tmp, 0o755)  # noqa: S103  (the postgres OS user must traverse it)
    pgbase = tmp / "pg"
    pgbase.mkdir()
    server = Server(pgbase)
    rows = []
    try:
        server.start()
        pp = str(core.collection_path())
        conn = {"login_host": "127.0.0.1", "login_port": server.port, "login_user": "postgres"}
        t0 = time.monotonic()
        size = fill(server, "benchsrc", a.size_mb)
        print(f"# source database: {size / 1e6:.0f} MB, filled in {time.monotonic() - t0:.1f} s", flush=True)
        dest = tmp / "bk"
        dest.mkdir()

        pg_dump_s = timed(["pg_dump", "-Fc", "-h", "127.0.0.1", "-p", server.port, "-U", "postgres", "-d", "benchsrc",
                           "-f", tmp / "bare.dump"])
        pg_backup_s, bk = run_module(pp, "pg_backup", {**conn, "login_db": "benchsrc", "dest": str(dest)})
        dump = bk["backup_path"]
        dump_mb = os.path.getsize(dump) / 1e6
        print(f"# custom dump: {dump_mb:.0f} MB", flush=True)
        rows.append(("pg_dump -Fc (bare)", pg_dump_s, None))
        rows.append(("pg_backup (snapshot + manifest + sha256)", pg_backup_s, pg_dump_s))

        start = time.monotonic()
        digest = hashlib.sha256()
        with open(dump, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sha_s = time.monotonic() - start
        toc_s = timed(["pg_restore", "--list", dump])

        base, full, restore_only = [], [], []
        for rnd in range(a.rounds):
            server.psql("DROP DATABASE IF EXISTS baseline")
            server.psql("CREATE DATABASE baseline TEMPLATE template0")
            base.append(timed(["pg_restore", f"-j{a.jobs}", "--no-owner", "--no-privileges", "--exit-on-error",
                               "-h", "127.0.0.1", "-p", server.port, "-U", "postgres", "-d", "baseline", dump]))
            server.psql("DROP DATABASE baseline")
            elapsed, res = run_module(pp, "backup_verify", {
                "path": dump, "restore_test": True, "jobs": a.jobs, "max_age": "1h",
                "restore_target": conn})
            assert res["status"] == "ok", res["problems"]
            full.append(elapsed)
            restore_only.append(res["restore_seconds"])
            print(f"# round {rnd + 1}: bare pg_restore -j{a.jobs} {base[-1]:.2f} s, full verify {elapsed:.2f} s "
                  f"(its restore {res['restore_seconds']:.2f} s)", flush=True)
        b = statistics.median(base)
        rows.append(("sha256 of the dump (alone)", sha_s, b))
        rows.append(("pg_restore --list (alone)", toc_s, b))
        rows.append((f"bare pg_restore -j{a.jobs} (baseline)", b, b))
        rows.append((f"backup_verify full (checksum + TOC + restore -j{a.jobs} + row counts)", statistics.median(full),
                     b))

        if not a.no_gzip:
            gz = tmp / "plain.sql.gz"
            with open(gz, "wb") as out:
                dump_p = subprocess.Popen(["pg_dump", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                                           "-d", "benchsrc"], stdout=subprocess.PIPE)
                subprocess.run(["gzip", "-1"], stdin=dump_p.stdout, stdout=out, check=True)
                dump_p.wait()
            gzip_t = statistics.median(timed(["gzip", "-t", gz]) for _r in range(a.rounds))
            ours = statistics.median(run_module(pp, "backup_verify", {"path": str(gz), "checksum": "none"})[0]
                                     for _r in range(a.rounds))
            rows.append(("gzip -t of a plain dump (runbook 004)", gzip_t, None))
            rows.append(("backup_verify integrity of the same .sql.gz (streamed)", ours, gzip_t))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"Database {size / 1e6:.0f} MB, custom dump {dump_mb:.0f} MB, jobs={a.jobs}, median of {a.rounds} rounds "
          f"(2 CPUs, shared busy machine; private PostgreSQL 15, fsync off)")
    print()
    print("| step | seconds | ratio |")
    print("|---|---:|---:|")
    for name, secs, ref in rows:
        ratio = f"{secs / ref:.2f}x" if ref else "-"
        print(f"| {name} | {secs:.2f} | {ratio} |")
    target = statistics.median(full) / b
    paired = statistics.median(f / r for f, r in zip(full, base, strict=True))
    print()
    print(f"full verify / bare pg_restore -j{a.jobs}: ratio of medians {target:.2f}, median of per-round ratios "
          f"{paired:.2f} (target <= 1.15)")
    print("rounds (bare / full): " + ", ".join(f"{r:.2f} / {f:.2f}" for r, f in zip(base, full, strict=True)))


if __name__ == "__main__":
    main()
