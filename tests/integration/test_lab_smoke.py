"""Each part of the lab is a real, working service (the foundation every other test stands on)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parents[2]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback lab URL
        return resp.status, resp.read().decode()


def _connect(node: dict, **kw):
    return psycopg.connect(host=node["host"], port=node["port"], user=node["user"],
                           password=node["password"], dbname=node["dbname"], **kw)


def test_row_written_on_primary_is_read_on_standby(pg_lab):
    marker = uuid.uuid4().hex
    with _connect(pg_lab["primary"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lab_smoke (marker text PRIMARY KEY)")
        conn.execute("INSERT INTO lab_smoke VALUES (%s)", (marker,))
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    with _connect(pg_lab["standby"], autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        found = None
        for _attempt in range(100):  # replication is asynchronous: poll until replayed
            row = conn.execute("SELECT to_regclass('lab_smoke') IS NOT NULL").fetchone()[0]
            if row:
                found = conn.execute("SELECT marker FROM lab_smoke WHERE marker = %s", (marker,)).fetchone()
                if found:
                    break
            time.sleep(0.1)
        assert found == (marker,)


def test_postgres_requires_the_password(pg_lab):
    node = dict(pg_lab["primary"], password="wrong")
    try:
        _connect(node, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("the lab primary accepted a wrong password")


def test_redis_standalone_and_cluster_of_three_masters(redis_lab):
    standalone = redis_lab["standalone"]
    client = redis.Redis(host=standalone["host"], port=standalone["port"], password=standalone["password"])
    assert client.ping() is True
    node = redis_lab["cluster"]["nodes"][0]
    cluster = redis.RedisCluster(host=node["host"], port=node["port"])
    try:
        masters = [n for n in cluster.cluster_nodes().values() if "master" in n["flags"]]
        assert len(masters) == 3
        assert cluster.cluster_info()["cluster_state"] == "ok"
        # keys spread over the three masters: every master owns some of 30 keys
        for i in range(30):
            cluster.set(f"lab:smoke:{i}", i)
        owners = {cluster.get_node_from_key(f"lab:smoke:{i}").port for i in range(30)}
        assert len(owners) == 3
    finally:
        cluster.close()


def test_compose_service_answers_on_loopback(compose_lab):
    status, body = _get(compose_lab["url"])
    assert status == 200
    assert body.strip()
    ps = subprocess.run(
        ["docker", "compose", "-p", compose_lab["project_name"], "ps", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    assert ps.stdout.strip(), "docker compose ps listed no container"


def test_pm2_app_is_online(hostapp_lab):
    env = dict(os.environ, PM2_HOME=hostapp_lab["pm2_home"])
    out = subprocess.run(["pm2", "jlist"], env=env, capture_output=True, text=True, check=True).stdout
    apps = [a for a in json.loads(out[out.index("["):]) if a["name"] == hostapp_lab["app_name"]]
    assert apps, f"{hostapp_lab['app_name']} not in pm2 jlist"
    assert {a["pm2_env"]["status"] for a in apps} == {"online"}


def test_nginx_proxies_to_the_app_and_the_app_reaches_its_services(hostapp_lab):
    status, body = _get(hostapp_lab["nginx_url"].rstrip("/") + "/api/health")
    health = json.loads(body)
    assert status == 200
    assert health["status"] == "healthy"
    assert health["services"]["database"]["status"] == "healthy"
    assert health["services"]["redis"]["status"] == "healthy"


def test_ansible_ping_reaches_each_droplet_over_ssh(lab_state, venv_bin):
    hosts = [h["name"] for h in lab_state["droplets"]["hosts"]]
    proc = subprocess.run(
        [str(venv_bin / "ansible"), "-i", "inventories/lab", "droplet", "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in hosts:
        assert f"{host} | SUCCESS" in proc.stdout, proc.stdout
