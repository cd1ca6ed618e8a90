"""Helpers for the pg_backup / backup_verify integration tests (not a test file).

Each test database gets a unique name (`i5_<what>_<pid>_<random>`) and is dropped by the
fixture that created it; scratch databases use a per-test prefix, so `leftovers()` only ever
sees this test's own databases.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]


def unique(what: str) -> str:
    return f"i5_{what}_{os.getpid()}_{secrets.token_hex(3)}"


def admin(primary: dict, dbname: str = "postgres"):
    return psycopg.connect(host=primary["host"], port=primary["port"], user=primary["user"],
                           password=primary["password"], dbname=dbname, autocommit=True)


def create_db(primary: dict, name: str, sql: str = "") -> None:
    with admin(primary) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    if sql:
        with admin(primary, name) as conn:
            conn.execute(sql)


def drop_db(primary: dict, name: str) -> None:
    with admin(primary) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def database(primary: dict, what: str, sql: str = ""):
    name = unique(what)
    try:
        create_db(primary, name, sql)
        yield name
    finally:
        drop_db(primary, name)


def leftovers(primary: dict, prefix: str) -> list[str]:
    with admin(primary) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                            (prefix.replace("_", "\\_") + "%",)).fetchall()
    return [r[0] for r in rows]


def table_counts(primary: dict, dbname: str) -> dict:
    with admin(primary, dbname) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        return {f"{s}.{t}": conn.execute(f'SELECT count(*) FROM ONLY "{s}"."{t}"').fetchone()[0]  # noqa: S608
                for s, t in rows}


def conn_args(primary: dict, dbname: str | None = None) -> dict:
    out = {"login_host": primary["host"], "login_port": primary["port"], "login_user": primary["user"],
           "login_password": primary["password"]}
    if dbname:
        out["login_db"] = dbname
    return out


def target_args(primary: dict) -> dict:
    return {"login_host": primary["host"], "login_port": primary["port"], "login_user": primary["user"],
            "login_password": primary["password"]}


# Small source: a few tables, an awkward name, an empty table.
SMALL_SQL = """
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 5000) g;
CREATE TABLE orders (id bigint PRIMARY KEY, user_id int REFERENCES users, total numeric(10,2));
INSERT INTO orders SELECT g, 1 + g % 5000, (g % 997) / 10.0 FROM generate_series(1, 40000) g;
CREATE SCHEMA "Billing";
CREATE TABLE "Billing"."Invoice Lines" (id int, note text);
INSERT INTO "Billing"."Invoice Lines" SELECT g, repeat('x', g % 50) FROM generate_series(1, 1234) g;
CREATE TABLE audit_empty (id int);
"""


def module_env(ansible_env: dict) -> dict:
    """Environment to run a module file directly (PYTHONPATH = the tests' collection root)."""
    env = dict(ansible_env)
    env["PYTHONPATH"] = env["ANSIBLE_COLLECTIONS_PATH"]
    for key in list(env):
        if key.startswith("PG"):
            del env[key]
    return env


def run_module(name: str, args: dict, env: dict, check_mode: bool = False, timeout: int = 300) -> dict:
    """Run plugins/modules/<name>.py the way AnsiballZ does (args file), return its JSON."""
    payload = dict(args)
    if check_mode:
        payload["_ansible_check_mode"] = True
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"ansible_collections.ops.runbooks.plugins.modules.{name}", handle.name],
            env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    finally:
        os.unlink(handle.name)
    try:
        out = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(f"module {name} printed no JSON (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-2000:]}") from exc
    assert "Traceback" not in proc.stderr, proc.stderr
    out["_rc"] = proc.returncode
    out["_raw"] = proc.stdout + proc.stderr
    return out


def playbook(venv_bin: Path, env: dict, play: str, *args: str, timeout: int = 600):
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False, dir="/tmp") as handle:
        handle.write(play)
    try:
        return subprocess.run(
            [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
             f"ansible_python_interpreter={sys.executable}", handle.name, *args],
            cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    finally:
        os.unlink(handle.name)


def statuses(result: dict) -> dict:
    return {name: item["status"] for name, item in result.get("checks", {}).items()}
