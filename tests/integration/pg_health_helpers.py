"""Helpers for the pg_health integration tests: a private PostgreSQL 15, the core run in
process, the module run through `ansible`, and marked client sessions.

Not a test module (no `test_` prefix): imported by test_pg_health_*.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from ansible_collections.ops.runbooks.plugins.module_utils import _pg_health as core
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import connect

from lab import core as labcore

PG_BIN = Path("/usr/lib/postgresql/15/bin")
APP_PREFIX = "pgh-test"


def token() -> str:
    return secrets.token_hex(4)


def params_for(node: dict, **over) -> dict:
    """Module-style connection parameters for a lab/private node."""
    base = {
        "login_host": node["host"], "login_port": node["port"], "login_user": node["user"],
        "login_password": node["password"], "login_db": node["dbname"], "login_unix_socket": None,
        "ssl_mode": "disable", "ssl_rootcert": None, "connect_timeout": 10, "dsn": None,
    }
    base.update(over)
    return base


def run_core(params: dict, checks=None, thresholds=None, **options) -> dict:
    """One full pg_health run in process: connect (the module's code) + the core."""
    conn = connect(params)
    try:
        return core.run(core.DbapiRunner(conn), checks, thresholds, options)
    finally:
        conn.close()


def session(node: dict, app: str, dbname: str | None = None, autocommit=True, **over) -> psycopg.Connection:
    """A client session visible in pg_stat_activity under application_name `app`."""
    kw = {"host": node["host"], "port": node["port"], "user": node["user"], "password": node["password"],
          "dbname": dbname or node["dbname"], "application_name": app, "connect_timeout": 10}
    kw.update(over)
    return psycopg.connect(**kw, autocommit=autocommit)


def send_async(conn: psycopg.Connection, sql: str) -> None:
    """Start `sql` on the server and return at once (it keeps running or waiting)."""
    conn.pgconn.send_query(sql.encode())


def close_quietly(conn) -> None:
    with contextlib.suppress(Exception):
        conn.cancel()
    with contextlib.suppress(Exception):
        conn.close()


def wait_until(predicate, what: str, timeout: float = 20.0, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {last!r}")


@contextlib.contextmanager
def private_postgres():
    """A throwaway PostgreSQL 15 nobody else uses: initdb in a temp dir, a free port, scram password,
    pg_stat_statements loaded and installed. Stopped (and its pid reaped) on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="pgh-private-"))
    tmp.chmod(0o755)
    shutil.chown(tmp, "postgres", "postgres")
    data, sock = tmp / "data", tmp / "run"
    sock.mkdir()
    shutil.chown(sock, "postgres", "postgres")
    password = "pgh-" + secrets.token_hex(8)
    pwfile = tmp / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, "postgres", "postgres")
    port = labcore.free_port()
    pid = None
    try:
        labcore.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                    user="postgres", timeout=120)
        with open(data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n"
                       "fsync = off\nmax_connections = 20\nshared_preload_libraries = 'pg_stat_statements'\n")
        labcore.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(tmp / "log"), "start"],
                    user="postgres", timeout=90)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        node = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": password,
                "dbname": "postgres", "socket_dir": str(sock), "pid": pid}
        with session(node, f"{APP_PREFIX}-setup") as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        yield node
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data),
                            "-m", "fast", "-w", "stop"], capture_output=True, check=False, timeout=60)
        if pid:
            labcore.kill_pid(pid)
        shutil.rmtree(tmp, ignore_errors=True)


def adhoc(venv_bin: Path, env: dict, args: dict, *extra: str, check_mode: bool = False, diff: bool = False,
          module: str = "ops.runbooks.pg_health"):
    """Run `module` once with `ansible localhost -m`; return (rc, module result, all output)."""
    cmd = [str(venv_bin / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", module,
           "-a", json.dumps(args), "-e", f"ansible_python_interpreter={venv_bin / 'python'}", *extra]
    if check_mode:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    run_env = dict(env, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
                   ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_LOCALHOST_WARNING="0")
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=False, timeout=180)
    out = proc.stdout + proc.stderr
    result = {}
    match = re.search(r"^localhost \| [A-Z!]+ => (\{.*?^\})", proc.stdout, re.S | re.M)
    if match:
        with contextlib.suppress(ValueError):
            result = json.loads(match.group(1))
    return proc.returncode, result, out
