"""The disaster_recovery role (ops.runbooks.dr) on the compose platform: playbooks/dr_restore.yml
in drill and restore mode against a compose project of the lab app (local/labapp, host network)
deployed by the deploy role on host lab-compose (this machine), real Docker Engine + Compose v2,
the lab PostgreSQL and Redis, real backups.

Isolation: own project name drc<hex> in a temp dir, own database drc_<hex>, own app and drill
ports; everything is removed afterwards (the project with `docker compose down`).
"""

from __future__ import annotations

import json
import subprocess

import dr_helpers as h
import pytest

from lab import core as labcore

HOST = "lab-compose"
TEMPLATE = h.REPO / "tests" / "integration" / "files" / "dr_compose.yaml.j2"


@pytest.fixture(scope="module")
def site(lab_state, pg_lab, redis_lab, docker_lab, venv_bin, ansible_env, tmp_path_factory):
    pg = pg_lab["primary"]
    tag = h.token()
    db, project = f"drc_{tag}", f"drc{tag}"
    tmp = tmp_path_factory.mktemp("dr-compose")
    app_port, drill_port = labcore.free_port(), labcore.free_port()
    extra = {
        "deploy_app_name": "api",
        "deploy_image": "local/labapp",
        "deploy_version": "v1",
        "deploy_compose_project_dir": str(tmp / "project"),
        "deploy_compose_project_name": project,
        "deploy_compose_templates": [{"src": str(TEMPLATE), "dest": "compose.yaml"}],
        "deploy_compose_template_vars": {},
        "deploy_compose_services": ["api"],
        "deploy_compose_static_services": [],
        "deploy_compose_env_required": ["DATABASE_URL"],
        "deploy_compose_env_keep": [],
        "deploy_compose_env": {"APP_PORT": str(app_port), "DATABASE_URL": h.pg_url(pg, db),
                               "REDIS_URL": h.redis_url(redis_lab["standalone"])},
        "deploy_compose_strategy": "recreate",
        "deploy_compose_health": {"type": "docker"},
        "deploy_compose_proxy": {},
        "deploy_compose_health_urls": [],
        "deploy_compose_prune": False,
        "deploy_health_url": f"http://127.0.0.1:{app_port}/api/health",
        **h.dr_vars(db, tmp, drill_port),
        "dr_drill_env": {"APP_PORT": str(drill_port)},
    }
    extra_file = tmp / "extra.json"
    extra_file.write_text(json.dumps(extra))
    site = {"pg": pg, "db": db, "project": project, "tmp": tmp, "extra": str(extra_file),
            "url": f"http://127.0.0.1:{app_port}", "venv_bin": venv_bin, "env": ansible_env,
            "reports": tmp / "reports", "state": tmp / "state"}
    h.create_seeded_db(pg, db)
    try:
        proc = _play(site, "playbooks/deploy.yml")
        assert proc.returncode == 0, proc.stdout[-4000:]
        proc = h.run_playbook(venv_bin, ansible_env, "playbooks/backup.yml", "-e", f"@{extra_file}")
        assert proc.returncode == 0, proc.stdout[-4000:]
        yield site
    finally:
        for name in (project, f"{project}-dr-drill"):
            subprocess.run(["docker", "compose", "--project-name", name, "down", "--volumes", "--remove-orphans",
                            "--timeout", "3"], capture_output=True, check=False, timeout=120)
        h.drop_prefixed(pg, db)


def _play(site, playbook: str, *args: str):
    return h.run_playbook(site["venv_bin"], site["env"], playbook, "--limit", HOST, "-e", f"@{site['extra']}", *args)


def _containers(project: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", "{{.Names}}"], capture_output=True, text=True, check=True).stdout
    return out.split()


def _health(site) -> dict:
    status, body = h.http_json(site["url"] + "/api/health")
    assert body is not None, f"no health answer (HTTP {status})"
    return body


def test_drill_runs_a_second_project_on_the_restored_database_and_removes_it(site):
    before = h.counts(site["pg"], site["db"])
    proc = _play(site, "playbooks/dr_restore.yml", "-vvv")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert site["pg"]["password"] not in proc.stdout + proc.stderr  # .env values and URLs stay hidden
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and report["platform"] == "compose"
    assert report["rows_verified"] == sum(before.values())
    app = report["app"][0]
    assert app["ok"] and app["database"] == report["restored_db"] and app["phase"] == "drill", app
    assert _containers(f"{site['project']}-dr-drill") == []
    assert not (site["tmp"] / "project.dr-drill").exists()
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert _health(site)["services"]["database"]["database"] == site["db"]


def test_restore_with_failed_verification_switches_back(site):
    status, order = h.http_json(site["url"] + "/api/orders", "POST", {"amount": 4})
    assert status == 201
    before = h.counts(site["pg"], site["db"])
    verify = {"dr_verify_urls": [{"path": f"/api/orders/{order['id']}"}]}
    proc = _play(site, "playbooks/dr_restore.yml", "-e", "dr_mode=restore", "-e", json.dumps(verify))
    assert proc.returncode != 0
    assert "every host was switched back" in proc.stdout, proc.stdout[-5000:]
    switched, back = h.latest_report(site["reports"])["app"]
    assert not switched["ok"] and back["ok"] and back["database"] == site["db"]
    assert _health(site)["services"]["database"]["database"] == site["db"]
    assert h.counts(site["pg"], site["db"]) == before
    env = (site["tmp"] / "project" / ".env").read_text()
    assert f"/{site['db']}\n" in env or env.rstrip().endswith(f"/{site['db']}") or f"/{site['db']}?" in env
    h.drop_prefixed(site["pg"], site["db"] + "_dr_")


def test_restore_switches_the_project_to_the_restored_database(site):
    proc = h.run_playbook(site["venv_bin"], site["env"], "playbooks/backup.yml", "-e", f"@{site['extra']}")
    assert proc.returncode == 0
    before = h.counts(site["pg"], site["db"])
    proc = _play(site, "playbooks/dr_restore.yml", "-e", "dr_mode=restore")
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    new = report["restored_db"]
    assert report["result"] == "passed"
    assert _health(site)["services"]["database"]["database"] == new
    assert f"/{new}" in (site["tmp"] / "project" / ".env").read_text()
    kept = h.databases(site["pg"], site["db"] + "_pre_dr_")
    assert len(kept) == 1 and h.counts(site["pg"], kept[0]) == before
