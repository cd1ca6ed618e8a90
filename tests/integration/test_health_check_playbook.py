"""playbooks/health_check.yml on the lab: reports every service; a failure names its check
and a secret never reaches the output, even at -vvv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _playbook(venv_bin, env, *args):
    return subprocess.run(
        [str(venv_bin / "ansible-playbook"), "-i", "inventories/lab", "playbooks/health_check.yml", *args],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300,
    )


def test_every_lab_service_is_healthy(lab_state, venv_bin, ansible_env):
    proc = _playbook(venv_bin, ansible_env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "All 9 health checks passed" in proc.stdout
    for host in lab_state["droplets"]["hosts"]:
        assert f"ok: [{host['name']}]" in proc.stdout


def test_wrong_password_fails_the_play_names_the_check_and_stays_secret(lab_state, venv_bin, ansible_env):
    primary = lab_state["postgres"]["primary"]
    wrong = "not-the-password-7f3a9c"
    checks = [{"name": "pg-wrong-password", "host": primary["host"], "port": primary["port"],
               "user": primary["user"], "password": wrong, "dbname": primary["dbname"],
               "expect_role": "primary"}]
    proc = _playbook(venv_bin, ansible_env, "-vvv", "--limit", "localhost",
                     "-e", json.dumps({"health_check_postgres": checks}))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "pg-wrong-password" in proc.stdout
    assert "password authentication failed" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr
    assert primary["password"] not in proc.stdout + proc.stderr
