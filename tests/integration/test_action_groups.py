"""`module_defaults: {group/ops.runbooks.<group>: ...}` sets the connection options once for
every module of the group (meta/runtime.yml action_groups), the way a role would."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import yaml


def run_play(venv_bin, ansible_env, tmp_path, play: dict) -> dict:
    """Run `play` (its first task registers `result`); return that registered result."""
    out = tmp_path / "result.json"
    play["tasks"].append({"name": "Save the result", "ansible.builtin.copy": {
        "content": "{{ result | to_json }}", "dest": str(out), "mode": "0600"}})
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    proc = subprocess.run(
        [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        capture_output=True, text=True, env=ansible_env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_postgres_group_defaults_reach_pg_health(venv_bin, ansible_env, tmp_path, pg_lab):
    primary = pg_lab["primary"]
    play = {
        "name": "postgres group defaults",
        "hosts": "localhost",
        "gather_facts": False,
        "module_defaults": {
            "group/ops.runbooks.postgres": {
                "login_host": primary["host"], "login_port": primary["port"],
                "login_user": primary["user"], "login_password": primary["password"],
                "login_db": primary["dbname"],
            },
        },
        "tasks": [
            {"name": "No connection options of its own",
             "ops.runbooks.pg_health": {"checks": ["connectivity"]},
             "register": "result"},
        ],
    }
    result = run_play(venv_bin, ansible_env, tmp_path, play)
    assert result["status"] == "ok", result
    assert result["checks"]["connectivity"]["status"] == "ok"
    assert result["role"] == "primary"


def test_redis_group_defaults_reach_redis_cache_flush(venv_bin, ansible_env, tmp_path, redis_lab):
    import redis

    server = redis_lab["standalone"]
    prefix = f"ops-ag-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host=server["host"], port=server["port"], password=server["password"])
    client.mset({f"{prefix}:{i}": i for i in range(5)})
    try:
        play = {
            "name": "redis group defaults",
            "hosts": "localhost",
            "gather_facts": False,
            "module_defaults": {
                "group/ops.runbooks.redis": {
                    "login_host": server["host"], "login_port": server["port"],
                    "login_password": server["password"], "cluster": False,
                },
            },
            "tasks": [
                {"name": "No connection options of its own",
                 "ops.runbooks.redis_cache_flush": {"patterns": [f"{prefix}:*"]},
                 "register": "result"},
            ],
        }
        result = run_play(venv_bin, ansible_env, tmp_path, play)
        assert result["matched"] == 5 and result["deleted"] == 5, result
        assert client.exists(*[f"{prefix}:{i}" for i in range(5)]) == 0
    finally:
        client.delete(*[f"{prefix}:{i}" for i in range(5)])
        client.close()
