"""ops.runbooks.redis_cache_flush on the shared lab Redis (standalone with a password and the
3-master cluster), through ansible-playbook. Every test only touches keys under its own unique
prefix and removes them at the end, whatever happens."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.cluster import RedisCluster
from redis_private import run_steps


@pytest.fixture(params=["standalone", "cluster"])
def target(request, redis_lab):
    """(connection args for the module, a redis-py client, a unique key prefix)."""
    prefix = f"ops-rcf-{uuid.uuid4().hex[:10]}"
    if request.param == "standalone":
        sa = redis_lab["standalone"]
        args = {"login_host": sa["host"], "login_port": sa["port"], "login_password": sa["password"]}
        client = redis.Redis(host=sa["host"], port=sa["port"], password=sa["password"])
    else:
        node = redis_lab["cluster"]["nodes"][0]
        args = {"login_host": node["host"], "login_port": node["port"]}
        client = RedisCluster(host=node["host"], port=node["port"])
    yield request.param, args, client, prefix
    for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
        client.delete(key)
    client.close()


def load(client, prefix, groups: dict[str, int], ttl: int | None = None):
    pipe = client.pipeline(transaction=False) if isinstance(client, redis.Redis) else client.pipeline()
    for group, count in groups.items():
        for i in range(count):
            pipe.set(f"{prefix}:{group}:{i}", "v", ex=ttl)
    pipe.execute()


def keys(client, prefix):
    return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000))


def test_only_matching_keys_go_check_mode_equals_real_second_run_unchanged(target, tmp_path, venv_bin, ansible_env):
    kind, conn, client, prefix = target
    load(client, prefix, {"rate": 1500, "sess": 40, "rates_other": 7})
    survivors = sorted(keys(client, f"{prefix}:sess") + keys(client, f"{prefix}:rates_other"))
    args = {**conn, "patterns": [f"{prefix}:rate:*"], "batch_size": 200}
    proc, (check, real, again) = run_steps(
        tmp_path, [{"args": args, "check": True}, {"args": args}, {"args": args}], venv_bin, ansible_env, "--diff")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for result in (check, real, again):
        assert not result.get("failed"), result
    # check mode: counted, nothing deleted, same answer as the real run
    assert check["changed"] is True and check["matched"] == 1500 and check["deleted"] == 1500
    fields = ("changed", "matched", "deleted", "sample")
    assert [check[f] for f in fields] == [real[f] for f in fields]
    assert check["diff"] == real["diff"] == {"before": {"keys": 1500}, "after": {"keys": 0}}
    assert len(real["sample"]) == 10 and all(k.startswith(f"{prefix}:rate:") for k in real["sample"])
    # only the matching keys are gone
    assert keys(client, prefix) == survivors
    assert again["changed"] is False and again["matched"] == 0 and again["deleted"] == 0
    if kind == "cluster":
        assert len(real["nodes"]) == 3
        assert all(n["matched"] > 0 for n in real["nodes"]), real["nodes"]
        assert sum(n["deleted"] for n in real["nodes"]) == 1500
    else:
        assert len(real["nodes"]) == 1
    assert "keys" in proc.stdout and "1500" in proc.stdout  # --diff prints the counts


def test_exclude_patterns_survive_and_hash_tags_stay_one_slot(target, tmp_path, venv_bin, ansible_env):
    _kind, conn, client, prefix = target
    load(client, prefix, {"cache": 300, "sess": 25, "bull": 5})
    tagged = {f"{prefix}:{{user42}}:cache:{i}": "v" for i in range(50)}  # one slot in a cluster
    for key, value in tagged.items():
        client.set(key, value)
    args = {**conn, "patterns": [f"{prefix}:*"], "exclude_patterns": [f"{prefix}:sess:*", f"{prefix}:bull:?"]}
    proc, (real,) = run_steps(tmp_path, [{"args": args}], venv_bin, ansible_env)
    assert proc.returncode == 0 and not real.get("failed"), real
    assert real["deleted"] == 350
    assert keys(client, prefix) == sorted(keys(client, f"{prefix}:sess") + keys(client, f"{prefix}:bull"))
    assert len(keys(client, prefix)) == 30


def test_expire_sets_a_ttl_only_where_missing(target, tmp_path, venv_bin, ansible_env):
    _kind, conn, client, prefix = target
    load(client, prefix, {"nottl": 120})
    load(client, prefix, {"hasttl": 30}, ttl=500)
    args = {**conn, "patterns": [f"{prefix}:*"], "action": "expire", "ttl": 3600}
    proc, (check, real, again) = run_steps(
        tmp_path, [{"args": args, "check": True}, {"args": args}, {"args": args}], venv_bin, ansible_env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert check["changed"] is real["changed"] is True
    assert check["matched"] == real["matched"] == 150
    assert check["expired"] == real["expired"] == 120
    assert again["changed"] is False and again["expired"] == 0
    assert all(3000 < client.ttl(f"{prefix}:nottl:{i}") <= 3600 for i in range(120))
    assert all(0 < client.ttl(f"{prefix}:hasttl:{i}") <= 500 for i in range(30))
    assert len(keys(client, prefix)) == 150


def test_max_keys_exceeded_deletes_nothing(target, tmp_path, venv_bin, ansible_env):
    _kind, conn, client, prefix = target
    load(client, prefix, {"c": 400})
    args = {**conn, "patterns": [f"{prefix}:c:*"], "max_keys": 399, "batch_size": 50}
    proc, (real,) = run_steps(tmp_path, [{"args": args}], venv_bin, ansible_env)
    assert real["failed"] is True and real["changed"] is False
    assert "more than max_keys=399 keys match" in real["msg"] and "nothing was deleted" in real["msg"]
    assert "Traceback" not in proc.stdout
    assert len(keys(client, prefix)) == 400


def test_secrets_never_reach_the_output_even_at_vvv(redis_lab, tmp_path, venv_bin, ansible_env):
    sa = redis_lab["standalone"]
    prefix = f"ops-rcf-{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host=sa["host"], port=sa["port"], password=sa["password"])
    try:
        client.set(f"{prefix}:k", "v")
        url = f"redis://:{sa['password']}@{sa['host']}:{sa['port']}/0"
        wrong = "wrong-pass-" + uuid.uuid4().hex[:8]
        steps = [
            {"args": {"login_host": sa["host"], "login_port": sa["port"], "login_password": sa["password"],
                      "patterns": [f"{prefix}:*"]}},
            {"args": {"url": url, "patterns": [f"{prefix}:*"]}},
            {"args": {"login_host": sa["host"], "login_port": sa["port"], "login_password": wrong,
                      "patterns": [f"{prefix}:*"]}},
        ]
        proc, (by_password, by_url, bad) = run_steps(tmp_path, steps, venv_bin, ansible_env, "-vvv")
        assert by_password["deleted"] == 1 and by_url["changed"] is False, (by_password, by_url)
        assert bad["failed"] is True
        assert "login_password" in bad["msg"] and f"{sa['host']}:{sa['port']}" in bad["msg"], bad["msg"]
        output = proc.stdout + proc.stderr
        assert "ESTABLISH LOCAL CONNECTION" in output  # really -vvv
        assert sa["password"] not in output
        assert wrong not in output
        assert "Traceback" not in output
    finally:
        client.delete(f"{prefix}:k")
        client.close()
