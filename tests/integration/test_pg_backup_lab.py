"""pg_backup on the lab PostgreSQL 15: check mode == real run, min_interval makes a second run
unchanged, retention only touches its own backups, directory format in parallel, a DSN, the
password never in the output (-vvv), and a bad-input table."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess

import pytest
from backup_data import (
    SMALL_SQL,
    conn_args,
    database,
    module_env,
    playbook,
    run_module,
    table_counts,
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
    with database(primary, "bksrc", SMALL_SQL) as name:
        yield name


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


PLAY = """
- name: pg_backup check, real, again
  hosts: localhost
  gather_facts: false
  module_defaults:
    ops.runbooks.pg_backup:
      login_host: "{{ pg.host }}"
      login_port: "{{ pg.port }}"
      login_user: "{{ pg.user }}"
      login_password: "{{ pg.password }}"
      login_db: "{{ source_db }}"
      dest: "{{ dest }}"
      keep: 2
      min_interval: 1h
  tasks:
    - name: Check mode
      ops.runbooks.pg_backup:
      check_mode: true
      diff: true
      register: r_check
    - name: Real
      ops.runbooks.pg_backup:
      diff: true
      register: r_real
    - name: Again (min_interval)
      ops.runbooks.pg_backup:
      register: r_again
    - name: Again in check mode
      ops.runbooks.pg_backup:
      check_mode: true
      register: r_again_check
    - name: Save
      ansible.builtin.copy:
        content: "{{ {'check': r_check, 'real': r_real, 'again': r_again, 'again_check': r_again_check} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def test_check_real_again_and_secret_at_vvv(primary, source, venv_bin, ansible_env, tmp_path):
    dest = tmp_path / "bk"
    dest.mkdir()
    out = tmp_path / "out.json"
    extra = {"pg": primary, "source_db": source, "dest": str(dest), "out": str(out)}
    proc = playbook(venv_bin, ansible_env, PLAY, "-vvv", "-e", json.dumps(extra))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert primary["password"] not in proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    check, real, again, again_check = data["check"], data["real"], data["again"], data["again_check"]
    assert check["changed"] is True and real["changed"] is True
    assert check["action"] == real["action"] == "dump"
    assert check["removed"] == real["removed"] == []
    assert os.path.dirname(check["backup_path"]) == os.path.dirname(real["backup_path"]) == str(dest)
    assert check["diff"]["before"] == real["diff"]["before"] == {"backups": []}
    assert len(check["diff"]["after"]["backups"]) == len(real["diff"]["after"]["backups"]) == 1
    assert "manifest" not in check
    assert again["changed"] is False and again["action"] == "reuse"
    assert again["backup_path"] == real["backup_path"] and again["manifest"] == real["manifest"]
    assert again_check["changed"] is False and again_check["backup_path"] == real["backup_path"]
    assert sorted(os.listdir(dest)) == sorted([os.path.basename(real["backup_path"]),
                                               os.path.basename(real["manifest_path"])])
    manifest = json.loads(open(real["manifest_path"], encoding="utf-8").read())
    assert manifest == real["manifest"]
    assert manifest["sha256"] == sha256(real["backup_path"])
    assert manifest["tables"] == table_counts(primary, source)
    assert manifest["tables"]["Billing.Invoice Lines"] == 1234
    assert manifest["server_version"].startswith("15.")
    assert manifest["database"] == source and manifest["format"] == "custom"
    assert manifest["database_size_bytes"] > 0 and manifest["dump_size_bytes"] == os.path.getsize(real["backup_path"])
    assert manifest["started_at"] <= manifest["finished_at"]


def test_retention_keeps_newest_and_never_touches_foreign_files(primary, source, env, tmp_path):
    foreign = {"notes.txt": b"keep me", "other.dump": b"PGDMP not ours",
               "other.dump.manifest.json": json.dumps({"tool": "someone-else", "dump": "other.dump"}).encode()}
    for name, body in foreign.items():
        (tmp_path / name).write_bytes(body)
    args = {**conn_args(primary, source), "dest": str(tmp_path), "keep": 2}
    made = []
    for _round in range(3):
        res = run_module("pg_backup", args, env)
        assert res["_rc"] == 0, res["_raw"][-2000:]
        made.append(res["backup_path"])
    assert res["removed"] == [made[0]]
    assert res["backups"] == [made[2], made[1]]
    names = sorted(os.listdir(tmp_path))
    expected = sorted([*foreign, *(os.path.basename(p) for p in made[1:]),
                       *(os.path.basename(p) + ".manifest.json" for p in made[1:])])
    assert names == expected
    # check mode predicts the same removal a real run makes
    predicted = run_module("pg_backup", args, env, check_mode=True)
    real = run_module("pg_backup", args, env)
    assert predicted["removed"] == real["removed"] == [made[1]]
    assert predicted["changed"] is True and real["changed"] is True


def test_directory_format_parallel_with_dsn(primary, source, env, tmp_path):
    dsn = (f"postgresql://{primary['user']}:{primary['password']}@{primary['host']}:{primary['port']}/{source}"
           "?sslmode=disable")
    res = run_module("pg_backup", {"dsn": dsn, "dest": str(tmp_path), "format": "directory", "jobs": 2,
                                   "compress": 1}, env)
    assert res["_rc"] == 0, res["_raw"][-2000:]
    assert primary["password"] not in res["_raw"]
    path = res["backup_path"]
    assert os.path.isdir(path) and path.endswith(".dir")
    files = res["manifest"]["files"]
    assert "toc.dat" in files and len(files) >= 5
    for rel, meta in files.items():
        assert sha256(os.path.join(path, rel)) == meta["sha256"]
    assert res["manifest"]["tables"] == table_counts(primary, source)
    listing = subprocess.run(["pg_restore", "--list", path], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public orders" in listing


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD = [
    ({"dest": "/nonexistent/bk"}, "is not an existing directory"),
    ({"keep": 0}, "keep=0 would delete every backup"),
    ({"jobs": 2}, "jobs > 1 needs format=directory"),
    ({"compress": 12}, "compress=12 is invalid"),
    ({"min_interval": "often"}, "min_interval: invalid duration 'often'"),
    ({"prefix": "../evil"}, "is not a safe file name part"),
    ({"format": "tar"}, "value of format must be one of"),
    ({"login_port": "CLOSED"}, "check that PostgreSQL is running"),
    ({"login_password": "WRONG"}, "password authentication failed"),
    ({"login_db": "i5_no_such_db"}, 'database "i5_no_such_db" does not exist'),
]


@pytest.mark.parametrize(("bad", "expected"), BAD, ids=[f"{next(iter(b))}-{i}" for i, (b, _e) in enumerate(BAD)])
def test_bad_input(primary, source, env, tmp_path, bad, expected):
    args = {**conn_args(primary, source), "dest": str(tmp_path)}
    wrong = "wrong-" + secrets.token_hex(6)
    bad = {k: (closed_port() if v == "CLOSED" else wrong if v == "WRONG" else v) for k, v in bad.items()}
    args.update(bad)
    res = run_module("pg_backup", args, env)
    assert res["_rc"] == 1 and res["failed"], res
    assert expected in res["msg"], res["msg"]
    assert res.get("changed", False) is False
    assert os.listdir(tmp_path) == []
    assert wrong not in res["_raw"] and primary["password"] not in res["_raw"]
