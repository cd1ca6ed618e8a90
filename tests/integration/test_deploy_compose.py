"""The deploy role on the lab's compose host (inventories/lab, --limit lab-compose): playbooks/
deploy.yml and playbooks/rollback.yml against a compose project of its own (temp dir, unique
name, free port), through real Docker + Compose v2 and local images."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid

import pytest
from test_compose_rollout_rolling import REPO, Load

from lab import images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deploy(docker_lab, tmp_path, venv_bin, ansible_env):
    images.build_nginx()
    name = f"cr7d-{uuid.uuid4().hex[:8]}"
    project_dir = tmp_path / name
    port = _free_port()
    extra = {"deploy_compose_project_dir": str(project_dir), "deploy_compose_project_name": name,
             "deploy_compose_template_vars": {"proxy_port": port}}

    def run(playbook="playbooks/deploy.yml", *args, env=None):
        cmd = [str(venv_bin / "ansible-playbook"), "-i", "inventories/lab", playbook, "--limit", "lab-compose",
               "-e", json.dumps(extra), *args]
        return subprocess.run(cmd, cwd=REPO, env=dict(ansible_env, **(env or {})), capture_output=True, text=True,
                              check=False, timeout=600)

    ctx = {"name": name, "dir": project_dir, "url": f"http://127.0.0.1:{port}", "run": run}
    yield ctx
    if (project_dir / "compose.yaml").exists():
        subprocess.run(["docker", "compose", "--project-directory", str(project_dir), "-p", name, "down", "-v",
                        "--remove-orphans", "--timeout", "1"], capture_output=True, check=False,
                       env=dict(os.environ, APP_IMAGE="x", LIQUIDATION_API_KEY="x"))
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"],
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, check=False)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={name}"],
                          capture_output=True, text=True, check=False).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=False)


def _images(ctx) -> dict:
    out = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={ctx['name']}",
                          "--format", "{{.Label \"com.docker.compose.service\"}} {{.Image}}"],
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        service, image = line.split(" ", 1)
        found.setdefault(service, []).append(image)
    return found


def _image_id(ref):
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def _running_ids(ctx, service):
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={ctx['name']}",
                          "--filter", f"label=com.docker.compose.service={service}"],
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(subprocess.run(["docker", "inspect", "-f", "{{.Image}}", *ids], capture_output=True, text=True,
                                 check=True).stdout.split()) if ids else []


def _version(ctx):
    import urllib.request

    with urllib.request.urlopen(ctx["url"] + "/version", timeout=5) as resp:  # noqa: S310 (127.0.0.1 only)
        return resp.read().decode().strip()


def _recap_changed(stdout: str) -> int:
    match = re.search(r"lab-compose\s*:\s*ok=\d+\s+changed=(\d+)", stdout)
    return int(match.group(1)) if match else -1


def test_missing_required_variable_fails_before_anything_changes(deploy):
    proc = deploy["run"](env={"OPS_LAB_LIQUIDATION_API_KEY": ""})
    assert proc.returncode != 0
    assert "miss required variable(s) LIQUIDATION_API_KEY" in proc.stdout
    assert "Nothing was changed" in proc.stdout
    assert not deploy["dir"].exists()  # not even the folder
    assert _images(deploy) == {}


def test_deploy_roll_fail_rollback_rotate(deploy):
    v1, v2 = _image_id("local/httpapp:v1"), _image_id("local/httpapp:v2")
    secret = "lab-key-" + uuid.uuid4().hex
    env = {"OPS_LAB_LIQUIDATION_API_KEY": secret}

    # first deployment, at -vvv: the key is in .env but never in the output
    proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v1", "-vvv", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert secret not in proc.stdout + proc.stderr
    dotenv = (deploy["dir"] / ".env").read_text()
    assert f"LIQUIDATION_API_KEY={secret}" in dotenv and "APP_IMAGE=local/httpapp:v1" in dotenv
    assert oct((deploy["dir"] / ".env").stat().st_mode & 0o777) == "0o600"
    assert _running_ids(deploy, "api") == [v1] and _running_ids(deploy, "worker") == [v1]
    assert _version(deploy) == "v1"

    # v1 -> v2 under load: no failed request through the proxy
    with Load(deploy["url"]) as load:
        proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v2", env=env)
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert load.failures == [], load.failures[:5]
    assert load.requests > 20 and set(load.versions) == {"v1", "v2"}, load.versions
    assert _running_ids(deploy, "api") == [v2] and _running_ids(deploy, "worker") == [v2]

    # same version again: nothing changes
    proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v2", env=env)
    assert proc.returncode == 0 and _recap_changed(proc.stdout) == 0, proc.stdout[-3000:]
    # check mode predicts a change for another version and changes nothing
    proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v1", "--check", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _running_ids(deploy, "api") == [v2] and "APP_IMAGE=local/httpapp:v2" in (deploy["dir"] / ".env").read_text()

    # a broken release: automatic rollback, v2 keeps serving, .env restored
    with Load(deploy["url"]) as load:
        proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=broken",
                             "-e", '{"deploy_compose_wait_timeout": 5}', env=env)
    assert proc.returncode != 0
    assert "not healthy within wait_timeout=5s" in proc.stdout and ".env was restored" in proc.stdout
    assert load.failures == [] and set(load.versions) == {"v2"}, (load.failures[:5], load.versions)
    assert _running_ids(deploy, "api") == [v2]
    assert "APP_IMAGE=local/httpapp:v2" in (deploy["dir"] / ".env").read_text()

    # on-demand rollback (playbooks/rollback.yml): back to v1, then a no-op
    with Load(deploy["url"]) as load:
        proc = deploy["run"]("playbooks/rollback.yml", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert load.failures == [], load.failures[:5]
    assert _running_ids(deploy, "api") == [v1] and _running_ids(deploy, "worker") == [v1]
    proc = deploy["run"]("playbooks/rollback.yml", env=env)
    assert proc.returncode == 0 and _recap_changed(proc.stdout) == 0, proc.stdout[-3000:]

    # API key rotation: a new 64-character key in .env, services rolled and verified, never printed
    with Load(deploy["url"]) as load:
        proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v2", "-e",
                             '{"deploy_compose_rotate_api_key": true}', "-vvv", env={"OPS_LAB_LIQUIDATION_API_KEY": ""})
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert load.failures == [], load.failures[:5]
    new_key = re.search(r"^LIQUIDATION_API_KEY=(.*)$", (deploy["dir"] / ".env").read_text(), re.M).group(1)
    assert len(new_key) == 64 and new_key.isalnum() and new_key != secret
    assert new_key not in proc.stdout + proc.stderr
    assert "every service runs with the new key" in proc.stdout
    for service in ("api", "worker"):
        out = subprocess.run(["docker", "compose", "--project-directory", str(deploy["dir"]), "-p", deploy["name"],
                              "exec", "-T", service, "sh", "-c", 'printf %s "$LIQUIDATION_API_KEY"'],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == new_key
    # the kept key survives a normal deployment without it in the inventory
    proc = deploy["run"]("playbooks/deploy.yml", "-e", "deploy_version=v2", env={"OPS_LAB_LIQUIDATION_API_KEY": ""})
    assert proc.returncode == 0 and _recap_changed(proc.stdout) == 0, proc.stdout[-3000:]
    # prune left only running containers of the project
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={deploy['name']}",
                          "--filter", "status=exited", "-q"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
