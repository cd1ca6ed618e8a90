"""The deploy role's droplet platform on the lab droplets, over SSH, with real pm2 and nginx.

playbooks/deploy.yml and playbooks/rollback.yml run with `-i inventories/lab --limit
ops-lab-droplet1` (the lab app's release archives from lab/droplets.py: v1, v2, v3 without
node_modules, and "bad", whose health always answers 503). Every answer is read through the
droplet's nginx. The app directory and the pm2 app are removed before and after the module.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import droplets

REPO = Path(__file__).resolve().parents[2]
HOST = "ops-lab-droplet1"
BASE = "/var/www/opslab-app"
APP = "opslab-app"
JWT = "jwt-secret-for-the-droplet-test-5b1e0c"


@pytest.fixture(scope="module")
def droplet(lab_state, droplets_lab):
    """droplet1's ports and key; a clean app directory and no pm2 app before and after."""
    droplets.release_archives()
    host = [h for h in droplets_lab["hosts"] if h["name"] == HOST][0]
    info = dict(host, key=droplets_lab["key"], url=f"http://127.0.0.1:{host['nginx_port']}")
    _clean(info)
    yield info
    _clean(info)


def _ssh(droplet, command: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(droplets.ssh_command(droplet["key"], droplet["ssh_port"], command),
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _clean(droplet) -> None:
    # Only pm2's own daemon of the deploy user, only this app; a bare `pm2 delete` would start
    # a daemon if none runs, which is harmless here (the droplet is the lab's).
    _ssh(droplet, f"pm2 delete {APP} >/dev/null 2>&1; pm2 save --force >/dev/null 2>&1; sudo rm -rf {BASE}",
         check=False)


def _run(venv_bin, env, playbook: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv_bin / "ansible-playbook"), "-i", str(REPO / "inventories" / "lab"), playbook,
         "--limit", HOST, *args],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600,
    )


def _recap(proc) -> dict:
    match = re.search(rf"^{HOST}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      proc.stdout, re.M)
    assert match, proc.stdout[-3000:] + proc.stderr[-2000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True))


def _version(droplet) -> tuple[int, str | None]:
    try:
        with urllib.request.urlopen(f"{droplet['url']}/api/version", timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())["version"]
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _links(droplet) -> dict:
    script = "for l in current previous broken; do printf '%s=%s\\n' $l \"$(readlink $l)\"; done"
    out = _ssh(droplet, f"cd {BASE} && {script}")
    return dict(line.split("=", 1) for line in out.stdout.split())


def _pm2_env(droplet) -> dict:
    out = _ssh(droplet, "pm2 jlist").stdout
    procs = [p for p in json.loads(out[out.index("["):]) if p["name"] == APP]
    return procs[0]["pm2_env"]


def _deploy(venv_bin, env, version, *args):
    return _run(venv_bin, env, "playbooks/deploy.yml", "-e", f"deploy_version={version}",
                "-e", json.dumps({"deploy_droplet_env": _env_with_jwt()}), *args)


def _env_with_jwt() -> dict:
    """The lab inventory's deploy_droplet_env plus a JWT secret (as a vault variable would)."""
    return {
        "NODE_ENV": "production", "PORT": "{{ droplet_app_port }}",
        "DATABASE_URL": "postgresql://{{ lab_pg_user | urlencode }}:{{ lab_pg_password | urlencode }}"
                        "@{{ lab_pg_host }}:{{ lab_pg_port }}/{{ lab_pg_db }}",
        "REDIS_URL": "redis://:{{ lab_redis_password | urlencode }}@{{ lab_redis_host }}:{{ lab_redis_port }}/0",
        "JWT_SECRET": JWT,
    }


# The tests below run in order and build on each other (one droplet, one app directory).

def test_check_mode_on_a_fresh_droplet_changes_nothing(droplet, venv_bin, ansible_env):
    proc = _deploy(venv_bin, ansible_env, "v1", "--check", "--diff")
    recap = _recap(proc)
    assert recap["failed"] == 0 and recap["changed"] > 0, proc.stdout[-3000:]
    assert _ssh(droplet, f"test -e {BASE}", check=False).returncode != 0, "check mode created the app dir"
    assert _version(droplet)[0] == 502


def test_first_deploy_serves_v1_and_second_run_is_unchanged(droplet, venv_bin, ansible_env):
    proc = _deploy(venv_bin, ansible_env, "v1")
    assert _recap(proc)["failed"] == 0, proc.stdout[-4000:]
    assert _version(droplet) == (200, "1.0.0")
    assert _links(droplet)["current"] == f"{BASE}/releases/v1"
    env = _pm2_env(droplet)
    assert env["exec_mode"] == "cluster_mode" and env["JWT_SECRET"] == JWT
    mode = _ssh(droplet, f"stat -c %a {BASE}/releases/v1/.env {BASE}/releases/v1/.env.json").stdout.split()
    assert mode == ["600", "600"]

    again = _deploy(venv_bin, ansible_env, "v1")
    assert (_recap(again)["changed"], _recap(again)["failed"]) == (0, 0), again.stdout[-3000:]
    check = _deploy(venv_bin, ansible_env, "v1", "--check")
    assert _recap(check)["changed"] == 0, check.stdout[-3000:]


def test_release_v2_check_then_real_secrets_hidden_at_vvv(droplet, lab_state, venv_bin, ansible_env):
    check = _deploy(venv_bin, ansible_env, "v2", "--check")
    assert _recap(check)["changed"] > 0 and _recap(check)["failed"] == 0
    assert _version(droplet) == (200, "1.0.0"), "check mode switched the release"
    assert _ssh(droplet, f"test -e {BASE}/releases/v2", check=False).returncode != 0

    proc = _deploy(venv_bin, ansible_env, "v2", "-vvv")
    assert _recap(proc)["failed"] == 0, proc.stdout[-4000:]
    assert _version(droplet) == (200, "2.0.0")
    links = _links(droplet)
    assert links["current"] == f"{BASE}/releases/v2" and links["previous"] == f"{BASE}/releases/v1"
    output = proc.stdout + proc.stderr
    assert JWT not in output
    assert lab_state["postgres"]["primary"]["password"] not in output
    assert lab_state["redis"]["standalone"]["password"] not in output
    # The migration hook ran before the switch.
    assert "Run the pre-switch command (migrations) in the new release" in proc.stdout


def test_bad_release_is_rolled_back_automatically(droplet, venv_bin, ansible_env):
    proc = _deploy(venv_bin, ansible_env, "bad", "-e", "deploy_health_timeout=8")
    recap = _recap(proc)
    assert recap["failed"] == 1, proc.stdout[-4000:]
    text = " ".join(proc.stdout.split())
    assert "Release bad failed its health gate" in text and "Rolled back automatically to v2" in text
    assert "HTTP 503" in text
    assert _version(droplet) == (200, "2.0.0")
    links = _links(droplet)
    assert links == {"current": f"{BASE}/releases/v2", "previous": f"{BASE}/releases/v1",
                     "broken": f"{BASE}/releases/bad"}
    # Nothing lost: the failed release stays for inspection, v1 stays for a rollback.
    assert _ssh(droplet, f"test -f {BASE}/releases/bad/server.js && test -f {BASE}/releases/v1/server.js",
                check=False).returncode == 0


def test_rollback_playbook_goes_back_once_then_has_nothing_to_do(droplet, venv_bin, ansible_env):
    check = _run(venv_bin, ansible_env, "playbooks/rollback.yml", "--check")
    assert _recap(check)["changed"] > 0 and _recap(check)["failed"] == 0, check.stdout[-3000:]
    assert _version(droplet) == (200, "2.0.0")

    proc = _run(venv_bin, ansible_env, "playbooks/rollback.yml")
    assert _recap(proc)["failed"] == 0, proc.stdout[-4000:]
    assert "Rolled back opslab-app on ops-lab-droplet1 from v2 to v1" in " ".join(proc.stdout.split())
    assert _version(droplet) == (200, "1.0.0")
    links = _links(droplet)
    assert links["current"] == f"{BASE}/releases/v1" and links["broken"] == f"{BASE}/releases/v2"
    assert links["previous"] == ""
    # v1's own environment came back with it (JWT from v1's .env.json).
    assert _pm2_env(droplet)["JWT_SECRET"] == JWT

    again = _run(venv_bin, ansible_env, "playbooks/rollback.yml")
    assert _recap(again)["changed"] == 0 and _recap(again)["failed"] == 0
    assert "Already rolled back" in again.stdout


@pytest.fixture
def rotate_play(tmp_path):
    play = tmp_path / "rotate.yml"
    play.write_text(
        "- name: Rotate a secret on the droplets\n  hosts: droplet\n  gather_facts: false\n  tasks:\n"
        "    - name: Rotate\n      ansible.builtin.include_role:\n        name: ops.runbooks.deploy\n"
        "        tasks_from: droplet_rotate_secret.yml\n"
    )
    return str(play)


def test_secret_rotation_reloads_and_a_bad_value_is_undone(droplet, rotate_play, venv_bin, ansible_env):
    new = JWT + "-rotated"
    pids_before = _ssh(droplet, f"pm2 pid {APP}").stdout.split()
    rotate = json.dumps({"deploy_droplet_rotate_env": {"JWT_SECRET": new}})
    proc = _run(venv_bin, ansible_env, rotate_play, "-vvv", "-e", rotate)
    assert _recap(proc)["failed"] == 0 and _recap(proc)["changed"] > 0, proc.stdout[-4000:]
    assert new not in proc.stdout + proc.stderr and JWT not in proc.stdout + proc.stderr
    assert _pm2_env(droplet)["JWT_SECRET"] == new
    assert f'JWT_SECRET="{new}"' in _ssh(droplet, f"cat {BASE}/current/.env").stdout
    assert set(_ssh(droplet, f"pm2 pid {APP}").stdout.split()).isdisjoint(pids_before)  # reloaded
    assert _version(droplet) == (200, "1.0.0")

    again = _run(venv_bin, ansible_env, rotate_play, "-e", rotate)
    assert _recap(again)["changed"] == 0, again.stdout[-3000:]

    wrong = {"DATABASE_URL": "postgresql://nobody:wrong-password-3c9@127.0.0.1:1/none"}
    bad = _run(venv_bin, ansible_env, rotate_play, "-e", "deploy_health_timeout=6",
               "-e", json.dumps({"deploy_droplet_rotate_env": wrong}))
    assert _recap(bad)["failed"] == 1, bad.stdout[-3000:]
    assert "the old values were written back and reloaded" in " ".join(bad.stdout.split())
    assert "wrong-password-3c9" not in bad.stdout + bad.stderr
    assert _version(droplet) == (200, "1.0.0")
    assert "wrong-password-3c9" not in _ssh(droplet, f"cat {BASE}/current/.env").stdout
    assert "wrong-password-3c9" not in _pm2_env(droplet)["DATABASE_URL"]


def test_release_without_node_modules_runs_npm_ci_and_old_releases_are_pruned(droplet, venv_bin, ansible_env):
    # Make "bad" the oldest release: it is no longer current, previous or broken, so keeping
    # the 2 newest (v3 and v2) plus current/previous/broken must remove it.
    _ssh(droplet, f"touch -d 2020-01-01 {BASE}/releases/bad")
    proc = _deploy(venv_bin, ansible_env, "v3", "-e", "deploy_droplet_keep_releases=2")
    assert _recap(proc)["failed"] == 0, proc.stdout[-4000:]
    assert re.search(r"TASK \[ops.runbooks.deploy : Install the dependencies \(npm ci\)\] \*+\nchanged", proc.stdout)
    assert _version(droplet) == (200, "3.0.0")
    assert _ssh(droplet, f"test -f {BASE}/releases/v3/node_modules/.package-lock.json", check=False).returncode == 0
    assert sorted(_ssh(droplet, f"ls {BASE}/releases").stdout.split()) == ["v1", "v2", "v3"]


def test_missing_archive_stops_before_any_change(droplet, venv_bin, ansible_env):
    proc = _deploy(venv_bin, ansible_env, "v404")
    assert _recap(proc)["failed"] == 1 and _recap(proc)["changed"] == 0
    assert "opslab-app-v404.tar.gz not found on the control node" in " ".join(proc.stdout.split())
    assert _version(droplet) == (200, "3.0.0")


@pytest.mark.parametrize("extra,message", [
    ({"deploy_droplet_base_dir": "/var/www"}, "an absolute path of its own"),
    ({"deploy_version": "../v1"}, "usable as a directory name"),
    ({"deploy_droplet_keep_releases": 1}, "deploy_droplet_keep_releases >= 2"),
])
def test_dangerous_input_is_refused_before_any_change(extra, message, droplet, venv_bin, ansible_env):
    proc = _run(venv_bin, ansible_env, "playbooks/deploy.yml", "-e", "deploy_version=v1", "-e", json.dumps(extra))
    assert _recap(proc)["failed"] == 1 and _recap(proc)["changed"] == 0
    assert message in " ".join(proc.stdout.split())
    assert "Traceback" not in proc.stdout
