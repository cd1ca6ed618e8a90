"""redis_cache_flush on PRIVATE throwaway Redis servers (free ports, temp dir, stopped by pid):
the destructive modes (FLUSHDB/FLUSHALL ASYNC), the bad-input table, and a hash slot that
moves between the scan and the delete in a real 3-master cluster. The shared lab is never
flushed."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest
import redis
from ansible_collections.ops.runbooks.plugins.module_utils._redis_cache_flush import (
    CacheFlusher,
    hash_slot,
    primaries,
)
from redis.cluster import RedisCluster
from redis_private import HOST, PrivateRedis, load_keys, run_steps

PASSWORD = "priv-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def standalone():
    with PrivateRedis(password=PASSWORD) as rd:
        yield rd


@pytest.fixture(scope="module")
def cluster():
    with PrivateRedis(cluster=True) as rd:
        yield rd


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def conn(rd, **extra):
    args = {"login_host": HOST, "login_port": rd.port}
    if rd.password:
        args["login_password"] = rd.password
    args.update(extra)
    return args


def test_flushdb_only_that_database_check_mode_first_then_idempotent(standalone, tmp_path, venv_bin, ansible_env):
    db0 = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD, db=0)
    db1 = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD, db=1)
    db0.flushall()
    db0.mset({f"zero:{i}": 1 for i in range(100)})
    db1.mset({f"one:{i}": 1 for i in range(250)})
    args = conn(standalone, mode="db", db=1, force=True)
    proc, (check, real, again) = run_steps(
        tmp_path, [{"args": args, "check": True}, {"args": args}, {"args": args}], venv_bin, ansible_env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert check["changed"] is real["changed"] is True
    assert check["matched"] == real["matched"] == check["deleted"] == real["deleted"] == 250
    assert real["mode"] == "db" and again["changed"] is False and again["matched"] == 0
    assert db1.dbsize() == 0 and db0.dbsize() == 100


def test_flushall_empties_every_database(standalone, tmp_path, venv_bin, ansible_env):
    db0 = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD, db=0)
    db2 = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD, db=2)
    db0.flushall()
    db0.mset({f"a:{i}": 1 for i in range(10)})
    db2.mset({f"b:{i}": 1 for i in range(20)})
    args = conn(standalone, mode="all", force=True)
    proc, (check, real, again) = run_steps(
        tmp_path, [{"args": args, "check": True}, {"args": args}, {"args": args}], venv_bin, ansible_env)
    assert check["changed"] is True and check["deleted"] == real["deleted"] == 30
    assert again["changed"] is False
    assert db0.dbsize() == 0 and db2.dbsize() == 0


def test_bad_input_table_says_what_to_do_and_changes_nothing(standalone, tmp_path, venv_bin, ansible_env):
    client = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD)
    client.flushall()
    load_keys(standalone.port, "cache:", 500, password=PASSWORD)
    wrong = "wrong-" + uuid.uuid4().hex[:8]
    dead = closed_port()
    table = [
        (conn(standalone, patterns=["*"]), "pattern '*' matches every key; set force: true"),
        (conn(standalone, patterns=["**"], exclude_patterns=["sess:*"]), "set force: true"),
        (conn(standalone, mode="db"), "mode: db runs FLUSHDB ASYNC and removes every key; set force: true"),
        (conn(standalone, mode="all"), "set force: true to confirm"),
        (conn(standalone, patterns=[{"a": 1}]), "patterns entries must be strings; {'a': 1} is a dict"),
        (conn(standalone, patterns={"a": 1}), "patterns"),
        (conn(standalone), "mode: pattern needs patterns"),
        (conn(standalone, patterns=["cache:*"], max_keys=499), "more than max_keys=499 keys match"),
        (conn(standalone, patterns=["cache:*"], action="expire"), "action: expire needs ttl"),
        (conn(standalone, patterns=["cache:*"], action="expire", ttl=-5), "ttl must be a positive number"),
        (conn(standalone, patterns=["cache:*"], ttl=60), "ttl is only used with action: expire"),
        (conn(standalone, patterns=["cache:*"], batch_size="lots"), "batch_size"),
        (conn(standalone, patterns=["cache:*"], action="purge"), "action"),
        (conn(standalone, patterns=["cache:*"], cluster="maybe"), "cluster must be auto, true or false"),
        (conn(standalone, patterns=["cache:*"], login_password=wrong), "check login_user and login_password"),
        ({"login_host": HOST, "login_port": dead, "patterns": ["cache:*"]},
         f"cannot connect to Redis at {HOST}:{dead}/0"),
    ]
    proc, results = run_steps(tmp_path, [{"args": args} for args, _msg in table], venv_bin, ansible_env, "-vvv")
    for (args, message), result in zip(table, results, strict=True):
        assert result.get("failed") is True, (args, result)
        assert result.get("changed") is False, (args, result)
        assert message in result["msg"], (message, result["msg"])
        assert "module_stderr" not in result, result  # the module did not crash
        assert "Traceback" not in str(result.get("exception", "")), result
    assert client.dbsize() == 500  # nothing was deleted by any of them
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert PASSWORD not in output and wrong not in output


def test_cluster_flushdb_runs_on_every_primary(cluster, tmp_path, venv_bin, ansible_env):
    rc = RedisCluster(host=HOST, port=cluster.port)
    rc.mset_nonatomic({f"k:{i}": 1 for i in range(600)})
    args = conn(cluster, mode="db", force=True)
    proc, (check, real, again) = run_steps(
        tmp_path, [{"args": args, "check": True}, {"args": args}, {"args": args}], venv_bin, ansible_env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert check["deleted"] == real["deleted"] == 600 and real["changed"] is True
    assert len(real["nodes"]) == 3 and all(n["deleted"] > 0 for n in real["nodes"])
    assert again["changed"] is False
    assert [redis.Redis(host=HOST, port=port).dbsize() for port in cluster.ports] == [0, 0, 0]
    rc.close()


def _node_ids(rd):
    ids = {}
    for line in rd.cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        ids[int(fields[1].split(":")[1].split("@")[0])] = fields[0]
    return ids


def _migrate_slot(rd, slot, src_port, dst_port):
    """Move a slot and its keys from src to dst the way redis-cli --cluster reshard does."""
    ids = _node_ids(rd)
    rd.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[src_port], port=dst_port)
    rd.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[dst_port], port=src_port)
    src = redis.Redis(host=HOST, port=src_port)
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.execute_command("MIGRATE", HOST, dst_port, "", 0, 5000, "KEYS", *keys)
    for port in rd.ports:
        rd.cli("CLUSTER", "SETSLOT", str(slot), "NODE", ids[dst_port], port=port)


def test_cluster_slot_moving_between_scan_and_delete_does_not_crash(cluster):
    rc = RedisCluster(host=HOST, port=cluster.port)
    prefix = f"mv-{uuid.uuid4().hex[:6]}"
    rc.mset_nonatomic({f"{prefix}:{i}": 1 for i in range(3000)})
    rc.mset_nonatomic({f"{prefix}:{{hot}}:{i}": 1 for i in range(200)})  # all in one slot
    slot = hash_slot(b"hot")
    src_port = rc.get_node_from_key(f"{prefix}:{{hot}}:0").port
    dst_port = next(p for p in cluster.ports if p != src_port)

    flusher = CacheFlusher(primaries(rc, True, "x"), {"patterns": [f"{prefix}:*"], "max_keys": 0}, fallback=rc)
    original = flusher.apply_node
    moved = threading.Lock()
    done = []

    def apply_after_moving(name, client, keys):
        with moved:  # the first node thread moves the slot, the others wait for it
            if not done:
                _migrate_slot(cluster, slot, src_port, dst_port)
                done.append(True)
        return original(name, client, keys)

    flusher.apply_node = apply_after_moving
    result = flusher.run(check_mode=False)
    assert done
    assert result["matched"] == 3200
    assert result["deleted"] + result["skipped"] == 3200
    assert result["skipped"] == 0, result.get("errors")
    assert any("MOVED" in e for e in result.get("errors", [])), repr(result)  # the move really happened mid-run
    assert list(rc.scan_iter(match=f"{prefix}:*")) == []
    rc.close()


def test_rate_limited_flush_deletes_everything(standalone, tmp_path, venv_bin, ansible_env):
    client = redis.Redis(host=HOST, port=standalone.port, password=PASSWORD)
    client.flushall()
    load_keys(standalone.port, "slow:", 3000, password=PASSWORD)
    args = conn(standalone, patterns=["slow:*"], rate_limit=20000)
    proc, (real,) = run_steps(tmp_path, [{"args": args}], venv_bin, ansible_env)
    assert real["deleted"] == 3000 and client.dbsize() == 0, real
