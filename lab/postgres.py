"""Lab part "postgres": a PostgreSQL 15 primary and a streaming standby on loopback.

Both run as the `postgres` OS user (PostgreSQL refuses root) from data directories
under LAB_DIR/postgres, on free ports, with a password for TCP clients (scram) so
that secret handling is exercised for real; the unix socket (in the same folder)
stays `trust` for the lab's own bootstrap.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from . import core

PG_BIN = Path(os.environ.get("OPS_LAB_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
SUPERUSER = "postgres"
DBNAME = "opslab"


def _bin(name: str) -> str:
    path = PG_BIN / name
    if not path.exists():
        raise core.LabError(f"{path} not found: install PostgreSQL 15 (`apt-get install postgresql-15`)")
    return str(path)


def _pg_ctl(data_dir: Path, *args: str, check: bool = True):
    return core.run([_bin("pg_ctl"), "-D", str(data_dir), *args], user=OS_USER, check=check, timeout=120)


def _running(data_dir: Path) -> bool:
    return data_dir.exists() and _pg_ctl(data_dir, "status", check=False).returncode == 0


def _psql(socket_dir: str, port: int, sql: str, dbname: str = "postgres") -> str:
    proc = core.run(
        ["psql", "-h", socket_dir, "-p", port, "-U", SUPERUSER, "-d", dbname, "-XAtqc", sql],
        user=OS_USER,
    )
    return proc.stdout.strip()


def _write_conf(data_dir: Path, port: int, socket_dir: Path) -> None:
    with open(data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write(
            f"listen_addresses = '{core.HOST}'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
            "wal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\n"
            "hot_standby = on\nmax_connections = 50\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "track_io_timing = on\nlogging_collector = off\n"
        )


def _start(data_dir: Path, log: Path) -> None:
    _pg_ctl(data_dir, "-w", "-t", "60", "-l", str(log), "start")


def _pid(data_dir: Path):
    pidfile = data_dir / "postmaster.pid"
    return int(pidfile.read_text().split()[0]) if pidfile.exists() else None


def up(state: dict) -> dict:
    entry = state.get("postgres") or {}
    if entry and all(_running(Path(entry[r]["data_dir"])) for r in ("primary", "standby")):
        return entry
    if entry:  # half-started or stale: start over cleanly
        down(entry)

    base = core.part_dir("postgres")
    shutil.chown(base, OS_USER, OS_USER)
    password = "lab-" + secrets.token_hex(8)
    primary_dir, standby_dir = base / "primary", base / "standby"
    socket_dir = base / "run"
    for path in (primary_dir, standby_dir, socket_dir):
        shutil.rmtree(path, ignore_errors=True)
    socket_dir.mkdir()
    shutil.chown(socket_dir, OS_USER, OS_USER)

    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, OS_USER, OS_USER)
    pwfile.chmod(0o600)
    core.run(
        [_bin("initdb"), "-D", primary_dir, "-U", SUPERUSER, "--pwfile", pwfile,
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
        user=OS_USER, timeout=120,
    )
    pwfile.unlink()
    with open(primary_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
        hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    primary_port = core.free_port()
    _write_conf(primary_dir, primary_port, socket_dir)
    _start(primary_dir, base / "primary.log")
    _psql(str(socket_dir), primary_port, f"CREATE DATABASE {DBNAME}")
    _psql(str(socket_dir), primary_port, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", DBNAME)

    standby_port = core.free_port()
    core.run(
        [_bin("pg_basebackup"), "-h", core.HOST, "-p", primary_port, "-U", SUPERUSER,
         "-D", standby_dir, "-R", "-X", "stream", "-c", "fast"],
        user=OS_USER, env={"PGPASSWORD": password}, timeout=300,
    )
    with open(standby_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write(f"port = {standby_port}\n")
    _start(standby_dir, base / "standby.log")

    common = {"host": core.HOST, "user": SUPERUSER, "password": password, "dbname": DBNAME,
              "socket_dir": str(socket_dir)}
    entry = {
        "version": _psql(str(socket_dir), primary_port, "SHOW server_version"),
        "primary": {**common, "port": primary_port, "data_dir": str(primary_dir), "pid": _pid(primary_dir)},
        "standby": {**common, "port": standby_port, "data_dir": str(standby_dir), "pid": _pid(standby_dir)},
    }
    core.wait_for(
        lambda: _psql(str(socket_dir), primary_port,
                      "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1",
        "the standby to stream from the primary", timeout=60,
    )
    return entry


def down(entry: dict) -> None:
    pids = []
    for role in ("standby", "primary"):
        node = entry.get(role) or {}
        data_dir = Path(node.get("data_dir", "/nonexistent"))
        pids.append(_pid(data_dir) if data_dir.exists() else node.get("pid"))
        if _running(data_dir):
            _pg_ctl(data_dir, "-m", "immediate", "-W", "stop", check=False)
    core.kill_pid(*pids)
    shutil.rmtree(core.LAB_DIR / "postgres", ignore_errors=True)


def status(entry: dict) -> dict:
    result = {"ok": True}
    for role in ("primary", "standby"):
        node = entry.get(role) or {}
        try:
            in_recovery = _psql(node["socket_dir"], node["port"], "SELECT pg_is_in_recovery()")
            result[role] = {"port": node["port"], "in_recovery": in_recovery == "t"}
            result["ok"] &= (in_recovery == "t") == (role == "standby")
        except (core.LabError, KeyError) as exc:
            result[role] = {"error": str(exc)}
            result["ok"] = False
    return result
