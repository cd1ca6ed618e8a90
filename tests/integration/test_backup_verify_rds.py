"""backup_verify's RDS checks against moto in server mode (the standard offline AWS stand-in),
started on a free port by a fixture and stopped by pid. Also: without boto3 the module still
verifies files and says what to install when `rds` is asked for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3  # requirements-dev.txt: moto[server] (pulls boto3)
import pytest
from backup_data import module_env, run_module

pytestmark = pytest.mark.slow
REGION = "ap-southeast-2"
SECRET = "moto-secret-" + os.urandom(4).hex()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as handle:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=handle,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def rds(moto):
    return boto3.client("rds", region_name=REGION, endpoint_url=moto, aws_access_key_id="testing",
                        aws_secret_access_key=SECRET)


@pytest.fixture(scope="module")
def env(ansible_env):
    env = module_env(ansible_env)
    for key in list(env):
        if key.startswith("AWS_"):
            del env[key]
    return env


def make_instance(rds, name: str, retention: int = 0):
    rds.create_db_instance(DBInstanceIdentifier=name, Engine="postgres", DBInstanceClass="db.t3.micro",
                           MasterUsername="app", MasterUserPassword="not-used-1234", AllocatedStorage=20,
                           BackupRetentionPeriod=retention)


def rds_args(moto, name, **extra):
    return {"rds": {"db_instance_identifier": name, "region": REGION, "endpoint_url": moto,
                    "aws_access_key_id": "testing", "aws_secret_access_key": SECRET, **extra}}


def test_latest_snapshot_available_and_fresh(moto, rds, env):
    make_instance(rds, "liquid-abt-production")
    rds.create_db_snapshot(DBInstanceIdentifier="liquid-abt-production", DBSnapshotIdentifier="manual-1")
    res = run_module("backup_verify", rds_args(moto, "liquid-abt-production", max_age="1h",
                                               snapshot_type="manual"), env)
    assert res["_rc"] == 0, res
    assert res["status"] == "ok" and res["changed"] is False
    assert res["checks"]["rds_snapshot"]["value"]["id"] == "manual-1"
    assert res["checks"]["rds_age"]["status"] == "ok"
    assert 0 <= res["checks"]["rds_age"]["value"] < 3600
    assert SECRET not in res["_raw"]


def test_snapshot_older_than_rpo(moto, rds, env):
    make_instance(rds, "old-db")
    rds.create_db_snapshot(DBInstanceIdentifier="old-db", DBSnapshotIdentifier="old-db-1")
    time.sleep(2.2)
    res = run_module("backup_verify", rds_args(moto, "old-db", max_age="2s", snapshot_type="manual"), env)
    assert res["_rc"] == 1
    assert res["checks"]["rds_age"]["status"] == "critical"
    assert "RDS snapshot old-db-1" in res["msg"] and "RPO (max_age) is 2 s" in res["msg"]


def test_no_snapshot_at_all(moto, rds, env):
    make_instance(rds, "never-backed-up")
    res = run_module("backup_verify", rds_args(moto, "never-backed-up", max_age="1h", snapshot_type="manual"), env)
    assert res["_rc"] == 1
    assert res["checks"]["rds_snapshot"]["status"] == "critical"
    assert "no RDS snapshot of never-backed-up" in res["msg"]


def test_unknown_instance_is_a_clear_finding(moto, env):
    res = run_module("backup_verify", rds_args(moto, "no-such-instance", max_age="1h"), env)
    assert res["_rc"] == 1
    assert "no-such-instance" in res["msg"]
    assert "Traceback" not in res["_raw"]
    assert SECRET not in res["_raw"]


def test_bad_rds_max_age(moto, env):
    res = run_module("backup_verify", rds_args(moto, "x", max_age="yesterday"), env)
    assert res["_rc"] == 1 and "rds.max_age: invalid duration 'yesterday'" in res["msg"]


def test_without_boto3_files_still_verify_and_rds_says_what_to_install(moto, env, tmp_path):
    fake = tmp_path / "fake" / "boto3"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named boto3 (hidden by the test)')\n")
    no_boto = dict(env, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{env['PYTHONPATH']}")
    sql = tmp_path / "db.sql"
    sql.write_bytes(b"SELECT 1;\n-- PostgreSQL database dump complete\n")
    res = run_module("backup_verify", {"path": str(sql), "checksum": "none", "allow_empty": True}, no_boto)
    assert res["_rc"] == 0, res
    assert res["checks"]["integrity"]["status"] == "ok"
    res = run_module("backup_verify", rds_args(moto, "x"), no_boto)
    assert res["_rc"] == 1 and "Failed to import the required Python library (boto3)" in res["msg"]
