"""The collection as Ansible sees it: it builds, its roles document and check their inputs."""

from __future__ import annotations

import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cmd, env, **kw):
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False, timeout=300, **kw)


def test_collection_builds_without_lab_or_dev_files(tmp_path, venv_bin, ansible_env):
    proc = _run([str(venv_bin / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)],
                ansible_env)
    assert proc.returncode == 0, proc.stderr
    (tarball,) = tmp_path.glob("ops-runbooks-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "galaxy.yml" not in names and "MANIFEST.json" in names
    assert "plugins/module_utils/_postgres_client.py" in names
    assert "roles/deploy/meta/argument_specs.yml" in names
    for unwanted in ("lab/app/node_modules", ".venv", "inventories/lab/hosts.yml",
                     "inventories/lab/group_vars/all/lab.yml", "tests/output"):
        assert not any(n == unwanted or n.startswith(unwanted + "/") for n in names), unwanted


@pytest.mark.parametrize("role", ["deploy", "health_check"])
def test_role_docs_render(role, venv_bin, ansible_env):
    proc = _run([str(venv_bin / "ansible-doc"), "-t", "role", f"ops.runbooks.{role}"], ansible_env)
    assert proc.returncode == 0, proc.stderr
    assert f"{role}_" in proc.stdout


def _play(tmp_path, role_vars: str) -> Path:
    play = tmp_path / "play.yml"
    header = ("- name: Deploy role on localhost\n  hosts: localhost\n  gather_facts: false\n"
              "  roles:\n    - role: ops.runbooks.deploy\n      vars:\n")
    play.write_text(header + textwrap.indent(role_vars.strip() + "\n", " " * 8))
    return play


@pytest.mark.parametrize("role_vars,message", [
    ("deploy_platform: lambda\ndeploy_app_name: opslab-app", "value of deploy_platform must be one of"),
    ("deploy_platform: droplet\ndeploy_app_name: Bad_Name!\ndeploy_version: v1", "deploy_app_name must be"),
    ("deploy_platform: droplet\ndeploy_app_name: opslab-app", "needs deploy_version"),
    ("deploy_platform: compose\ndeploy_app_name: opslab-app", "needs deploy_image"),
    ("deploy_platform: droplet\ndeploy_app_name: a\ndeploy_version: v1\ndeploy_health_url: ftp://x",
     "deploy_health_url must be"),
    ("deploy_platform: droplet\ndeploy_app_name: opslab-app\ndeploy_version: v1",
     "needs deploy_droplet_release_archive"),
])
def test_deploy_preflight_rejects_bad_input_before_anything_runs(role_vars, message, tmp_path, venv_bin, ansible_env):
    play = _play(tmp_path, role_vars)
    proc = _run([str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)], ansible_env)
    assert proc.returncode == 2, proc.stdout
    assert message in " ".join(proc.stdout.split()), proc.stdout
    assert "not implemented yet" not in proc.stdout
