"""The happy path on a ~200 MB database of the lab PostgreSQL 15: pg_backup then backup_verify in
one playbook (check mode == real run, nothing changed, secrets absent at -vvv), with writes going
on during the backup (the manifest must still match the restored dump exactly), and the
interrupted cases: SIGTERM mid-restore drops the scratch database; after a SIGKILL the next run
does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psycopg
import pytest
from backup_data import (
    REPO,
    admin,
    conn_args,
    database,
    leftovers,
    module_env,
    playbook,
    run_module,
    statuses,
    table_counts,
    target_args,
    unique,
)

pytestmark = pytest.mark.slow

BIG_SQL = """
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, kind int NOT NULL, payload text);
INSERT INTO events SELECT g, timestamptz '2026-01-01' + g * interval '1 second', g % 17,
                          md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 1200000) g;
CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2));
INSERT INTO accounts SELECT g, 'acct-' || g, (g % 100000) / 100.0 FROM generate_series(1, 300000) g;
CREATE TABLE blobs (id int, body text);
INSERT INTO blobs SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 20000) g;
CREATE TABLE live_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());
"""


@pytest.fixture(scope="module")
def primary(pg_lab):
    return pg_lab["primary"]


@pytest.fixture(scope="module")
def big_source(primary):
    """~215 MB on disk (1.5 M rows), ~60 MB as a custom dump; dropped at the end."""
    with database(primary, "big", BIG_SQL) as name:
        yield name


@pytest.fixture(scope="module")
def dest(tmp_path_factory):
    return tmp_path_factory.mktemp("big-bk")


@pytest.fixture(scope="module")
def env(ansible_env):
    return module_env(ansible_env)


def _writer(primary, dbname, stop: threading.Event, written: list):
    with admin(primary, dbname) as conn:
        while not stop.is_set():
            conn.execute("INSERT INTO live_writes DEFAULT VALUES")
            written.append(1)
            time.sleep(0.002)


PLAY = """
- name: Backup and prove it restorable
  hosts: localhost
  gather_facts: false
  # group/ops.runbooks.postgres works once meta/runtime.yml lists the modules (at merge);
  # per-module defaults work on this branch too
  module_defaults:
    ops.runbooks.pg_backup: &conn
      login_host: "{{ pg.host }}"
      login_port: "{{ pg.port }}"
      login_user: "{{ pg.user }}"
      login_password: "{{ pg.password }}"
    ops.runbooks.backup_verify: *conn
  tasks:
    - name: Back up
      ops.runbooks.pg_backup:
        login_db: "{{ source_db }}"
        dest: "{{ dest }}"
        keep: 2
      register: bk

    - name: Verify in check mode
      ops.runbooks.backup_verify: &verify
        path: "{{ bk.backup_path }}"
        max_age: 1h
        restore_test: true
        jobs: 2
        scratch_prefix: "{{ prefix }}"
        restore_target:
          login_host: "{{ pg.host }}"
          login_port: "{{ pg.port }}"
          login_password: "{{ pg.password }}"
      check_mode: true
      register: v_check

    - name: Verify for real, with diff
      ops.runbooks.backup_verify: *verify
      diff: true
      register: v_real

    - name: Save the results for the test
      ansible.builtin.copy:
        content: "{{ {'bk': bk, 'check': v_check, 'real': v_real} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def test_backup_then_verify_playbook(primary, big_source, dest, venv_bin, ansible_env, tmp_path):
    prefix = f"i5v{os.getpid()}_"
    out = tmp_path / "results.json"
    extra = {"pg": primary, "source_db": big_source, "dest": str(dest), "prefix": prefix, "out": str(out)}
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(primary, big_source, stop, written), daemon=True)
    writer.start()
    try:
        proc = playbook(venv_bin, ansible_env, PLAY, "-vvv", "-e", json.dumps(extra))
    finally:
        stop.set()
        writer.join()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # the password travels through module args and PGPASSWORD, never into the output
    assert primary["password"] not in proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    bk, check, real = data["bk"], data["check"], data["real"]
    assert bk["changed"] is True and bk["action"] == "dump"
    manifest = bk["manifest"]
    assert manifest["tables"]["public.events"] == 1200000
    assert manifest["tables"]["public.accounts"] == 300000
    assert written, "the writer did not write during the test"

    assert real["status"] == "ok", real["problems"]
    assert real["changed"] is False and check["changed"] is False
    assert "diff" not in real or not real["diff"]
    assert statuses(check) == statuses(real)
    assert check["tables"] == real["tables"]
    # live_writes kept growing during the backup, yet the restored dump matches the manifest
    # exactly: dump and counts come from the same snapshot
    assert real["tables"]["public.live_writes"]["expected"] == real["tables"]["public.live_writes"]["actual"]
    assert table_counts(primary, big_source)["public.live_writes"] == len(written)
    for name in ("checksum", "toc", "integrity", "restore", "row_counts", "age", "size"):
        assert real["checks"][name]["status"] == "ok", (name, real["checks"][name])
    assert real["restore_seconds"] > 0
    assert leftovers(primary, prefix) == []


def _start_verify(env, args):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ansible_collections.ops.runbooks.plugins.modules.backup_verify", handle.name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    return proc, handle.name


def _wait_mid_restore(primary, prefix, timeout=60):
    """Wait until a scratch DB with `prefix` exists and already holds a table; return (name, pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with admin(primary) as conn:
            rows = conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE %s",
                (prefix + "%",)).fetchall()
        for name, comment in rows:
            if comment and " pid=" in comment:
                try:
                    with admin(primary, name) as conn:
                        has = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'events'").fetchone()[0]
                except psycopg.Error:  # noqa: S112  (dropped under us)
                    continue
                if has:
                    return name, int(comment.split(" pid=")[1].split()[0])
        time.sleep(0.05)
    raise AssertionError("the restore did not start in time")


def _restore_children(name):
    out = subprocess.run(["pgrep", "-f", "--", f"--dbname={name}"], capture_output=True, text=True, check=False)
    return out.stdout.split()


@pytest.fixture(scope="module")
def big_backup(primary, big_source, dest, env):
    res = run_module("pg_backup", {**conn_args(primary, big_source), "dest": str(dest), "prefix": "sig"}, env)
    assert res["_rc"] == 0, res["_raw"][-2000:]
    return res


def test_sigterm_mid_restore_drops_the_scratch_db(primary, big_backup, venv_bin, ansible_env, tmp_path):
    """ansible-playbook runs the module; SIGTERM (what a timeout/kill sends) hits it mid-restore."""
    prefix = unique("sig").replace("i5_sig", "i5s") + "_"
    play = f"""
- name: Verify, to be interrupted
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Verify
      ops.runbooks.backup_verify:
        path: {big_backup['backup_path']}
        restore_test: true
        jobs: 1
        scratch_prefix: {prefix}
        restore_target: {json.dumps(target_args(primary))}
"""
    result = {}

    def _run():
        result["proc"] = playbook(venv_bin, ansible_env, play)

    runner = threading.Thread(target=_run)
    runner.start()
    try:
        name, pid = _wait_mid_restore(primary, prefix)
        assert _restore_children(name), "pg_restore should be running"
        os.kill(pid, signal.SIGTERM)
    finally:
        runner.join(timeout=120)
    proc = result["proc"]
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "interrupted by signal 15" in proc.stdout
    assert f"scratch database {name} was dropped" in proc.stdout
    assert leftovers(primary, prefix) == []
    assert _restore_children(name) == []


def test_sigkill_mid_restore_is_cleaned_by_the_next_run(primary, big_backup, env):
    prefix = unique("kill").replace("i5_kill", "i5k") + "_"
    args = {"path": big_backup["backup_path"], "restore_test": True, "jobs": 1, "scratch_prefix": prefix,
            "restore_target": target_args(primary)}
    proc, args_file = _start_verify(env, args)
    try:
        name, pid = _wait_mid_restore(primary, prefix)
        assert pid == proc.pid
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert leftovers(primary, prefix) == [name]  # nothing could clean up after SIGKILL
        res = run_module("backup_verify", {**args, "restore_test": True}, env)
        assert res["_rc"] == 0, res["problems"]
        assert res["stale_scratch_dropped"] == [name]
        assert leftovers(primary, prefix) == []
        deadline = time.monotonic() + 30
        while _restore_children(name) and time.monotonic() < deadline:  # the orphan pg_restore gives up
            time.sleep(0.2)
        assert _restore_children(name) == []
    finally:
        os.unlink(args_file)
        if proc.poll() is None:
            proc.kill()
        for left in leftovers(primary, prefix):
            with admin(primary) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{left}" WITH (FORCE)')


def test_pg_backup_sigterm_mid_dump_leaves_no_partial(primary, big_source, env, tmp_path):
    args = {**conn_args(primary, big_source), "dest": str(tmp_path), "compress": 9}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ansible_collections.ops.runbooks.plugins.modules.pg_backup", handle.name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not any(n.endswith(".partial") for n in os.listdir(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, "pg_dump did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=60)
    finally:
        os.unlink(handle.name)
    res = json.loads(out)
    assert res["failed"] and "interrupted by signal 15" in res["msg"] and "partial dump removed" in res["msg"]
    assert res["changed"] is False
    assert os.listdir(tmp_path) == []


def test_ansible_task_timeout_leaves_nothing_behind(primary, big_backup, venv_bin, ansible_env):
    """With the task keyword `timeout`, Ansible stops waiting; no scratch database is left behind."""
    prefix = unique("tmo").replace("i5_tmo", "i5t") + "_"
    play = f"""
- name: Verify with a task timeout shorter than the restore
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Verify
      ops.runbooks.backup_verify:
        path: {big_backup['backup_path']}
        restore_test: true
        jobs: 1
        scratch_prefix: {prefix}
        restore_target: {json.dumps(target_args(primary))}
      timeout: 2
"""
    proc = playbook(venv_bin, ansible_env, play)
    assert proc.returncode == 2 and "Timed out after 2 second" in proc.stdout, proc.stdout[-2000:]
    # After the timeout the module either runs to its end and drops its scratch database (seen
    # on a warm lab) or never gets as far as creating it (seen right after `lab up`): either way
    # nothing may be left once it is done.
    # First give a still-running module time to create its scratch database, then wait for it
    # to go.
    deadline = time.monotonic() + 30
    while not leftovers(primary, prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    deadline = time.monotonic() + 120
    while leftovers(primary, prefix) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(primary, prefix) == []
