"""A private PostgreSQL 15 primary + streaming standby for tests that must break replication
(promote, fence, stop the primary) without touching the shared lab.

Not a test module (no `test_` prefix). Usage:

    from pg_pair import private_pair

    with private_pair() as pair:
        with pair.primary.connect() as conn:
            conn.execute("CREATE TABLE t (id int)")
        pair.wait_replayed()               # the standby has replayed everything the primary wrote
        pair.primary.stop()                # pg_ctl stop -m fast, as the postgres OS user
        params = pair.standby.params()     # module-style login_* options
        ...
        pair.primary.start()

Both servers run as the `postgres` OS user from data directories under one temp dir, on free
loopback ports, with a random scram password over TCP (`trust` on their private Unix socket
directory only). The standby is made with `pg_basebackup -R -X stream`. On exit both servers
are stopped, their postmaster pids reaped and the temp dir removed, whatever state the test
left them in (stopped, promoted, paused).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from lab import core as labcore

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
DEFAULT_APP = "pgpair-test"


def _pg_ctl(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return labcore.run([str(PG_BIN / "pg_ctl"), "-D", str(data_dir), *args], user=OS_USER, check=check,
                       timeout=120)


@dataclass
class Node:
    """One server of the pair. `host`, `port`, `user`, `password`, `dbname` are its TCP login."""

    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str
    data_dir: Path
    log: Path
    socket_dir: Path
    pids: list[int] = field(default_factory=list)

    def params(self, **over) -> dict:
        """Module-style connection options (the shared postgres spec) for this node."""
        base = {"login_host": self.host, "login_port": self.port, "login_user": self.user,
                "login_password": self.password, "login_db": self.dbname, "ssl_mode": "disable",
                "connect_timeout": 5}
        base.update(over)
        return base

    def as_dict(self) -> dict:
        """The shape of the lab's `pg_lab` entries (host, port, user, password, dbname, ...)."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "dbname": self.dbname, "socket_dir": str(self.socket_dir), "data_dir": str(self.data_dir)}

    def connect(self, dbname: str | None = None, app: str = DEFAULT_APP, autocommit: bool = True,
                **over) -> psycopg.Connection:
        """A psycopg connection over TCP with the password (application_name `app`)."""
        kw = {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
              "dbname": dbname or self.dbname, "application_name": app, "connect_timeout": 5}
        kw.update(over)
        return psycopg.connect(**kw, autocommit=autocommit)

    def query(self, sql: str, params=None, dbname: str | None = None):
        """First row of `sql` on a fresh connection (None when no row)."""
        with self.connect(dbname=dbname) as conn:
            return conn.execute(sql, params).fetchone()

    def running(self) -> bool:
        return self.data_dir.exists() and _pg_ctl(self.data_dir, "status", check=False).returncode == 0

    def pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.exists() else None

    def start(self) -> None:
        """pg_ctl start (waits until it accepts connections, or until it is a standby that does)."""
        _pg_ctl(self.data_dir, "-w", "-t", "60", "-l", str(self.log), "start")
        pid = self.pid()
        if pid:
            self.pids.append(pid)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast|immediate|smart; a no-op when already stopped."""
        if self.running():
            _pg_ctl(self.data_dir, "-m", mode, "-w", "-t", "60", "stop")

    def in_recovery(self) -> bool:
        return bool(self.query("SELECT pg_is_in_recovery()")[0])


@dataclass
class Pair:
    primary: Node
    standby: Node
    base: Path

    def wait_streaming(self, timeout: float = 60) -> None:
        """Until the primary sees the standby streaming."""
        labcore.wait_for(lambda: self.primary.query(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0] == 1,
            f"the standby on port {self.standby.port} to stream", timeout=timeout, interval=0.1)

    def wait_replayed(self, timeout: float = 60) -> str:
        """Until the standby has replayed the primary's current WAL position; returns that LSN."""
        target = self.primary.query("SELECT pg_current_wal_lsn()::text")[0]
        labcore.wait_for(lambda: self.standby.query(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))[0],
            f"the standby to replay up to {target}", timeout=timeout, interval=0.1)
        return target

    def wait_received(self, timeout: float = 60) -> str:
        """Until the standby has received (flushed) the primary's current WAL position."""
        target = self.primary.query("SELECT pg_current_wal_lsn()::text")[0]
        labcore.wait_for(lambda: self.standby.query(
            "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (target,))[0],
            f"the standby to receive up to {target}", timeout=timeout, interval=0.1)
        return target


def _write_conf(data_dir: Path, port: int, socket_dir: Path) -> None:
    with open(data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{socket_dir}'\n"
                   "fsync = off\nfull_page_writes = off\nwal_level = replica\nmax_wal_senders = 5\n"
                   "hot_standby = on\nmax_connections = 30\nlogging_collector = off\n")


@contextlib.contextmanager
def private_pair(prefix: str = "pgpair", dbname: str = "postgres"):
    """Yield a `Pair` (primary + streaming standby, PostgreSQL 15) nobody else uses.

    `prefix` names the temp dir (use your task tag); `dbname` is the database the nodes'
    `params()` / `connect()` log in to (created on the primary when not `postgres`).
    """
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    base.chmod(0o755)
    shutil.chown(base, OS_USER, OS_USER)
    sock = base / "run"
    sock.mkdir()
    shutil.chown(sock, OS_USER, OS_USER)
    password = f"{prefix}-" + secrets.token_hex(8)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, OS_USER, OS_USER)
    pwfile.chmod(0o600)
    nodes: list[Node] = []
    try:
        primary = Node("primary", "127.0.0.1", labcore.free_port(), SUPERUSER, password, dbname,
                       base / "primary", base / "primary.log", sock)
        nodes.append(primary)
        labcore.run([str(PG_BIN / "initdb"), "-D", str(primary.data_dir), "-U", SUPERUSER, "--pwfile", str(pwfile),
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                    user=OS_USER, timeout=120)
        pwfile.unlink()
        with open(primary.data_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")
        _write_conf(primary.data_dir, primary.port, sock)
        primary.start()
        if dbname != "postgres":
            with primary.connect(dbname="postgres") as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')

        standby = Node("standby", "127.0.0.1", labcore.free_port(), SUPERUSER, password, dbname,
                       base / "standby", base / "standby.log", sock)
        nodes.append(standby)
        labcore.run([str(PG_BIN / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", SUPERUSER,
                     "-D", str(standby.data_dir), "-R", "-X", "stream", "-c", "fast"],
                    user=OS_USER, env={"PGPASSWORD": password}, timeout=300)
        with open(standby.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write(f"port = {standby.port}\n")
        standby.start()
        pair = Pair(primary, standby, base)
        pair.wait_streaming()
        yield pair
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                node.stop("immediate")
        # only postmasters still running from our data dirs (a stopped server's pid may be reused)
        labcore.kill_pid(*[p for node in nodes for p in node.pids if str(node.data_dir) in labcore.cmdline(p)])
        shutil.rmtree(base, ignore_errors=True)
