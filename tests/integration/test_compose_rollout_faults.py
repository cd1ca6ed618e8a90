"""compose_rollout faults on real Docker: a broken release and a crashing one roll back with
the old container still serving; an interrupted rollout converges on a re-run; bad input
fails with a message and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_compose_rollout_rolling import (  # the helpers of the main test file (same folder)
    PLAYBOOK,
    REPO,
    Load,
    app_containers,
    args_for,
    compose,
    destroy,
    image_id,
    make_project,
    proxy_log,
    run_module,
    running_image_ids,
    state_file,
)

from lab import images


@pytest.fixture(scope="session")
def rollout_images(docker_lab):
    images.build_httpapp_crashy()
    images.build_nginx()
    return docker_lab


@pytest.fixture
def project(rollout_images, tmp_path):
    proj = make_project(tmp_path)
    yield proj
    destroy(proj)


def _running_ids(project):
    return sorted(c["ID"] for c in app_containers(project) if c["State"] == "running")


def test_broken_release_rolls_back_and_old_container_keeps_serving(project, venv_bin, ansible_env):
    v1 = image_id("local/httpapp:v1")
    run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v1"}))  # record v1
    before = _running_ids(project)
    args = args_for(project, env={"APP_TAG": "broken"}, wait_timeout=6)
    with Load(project["url"]) as load:
        result, proc = run_module(venv_bin, ansible_env, args)
        time.sleep(0.5)
    assert result.get("failed") is True, proc.stdout[-3000:]
    assert result["rolled_back"] is True
    assert "not healthy within wait_timeout=6s" in result["msg"] and "-> 404" in result["msg"]
    assert "old containers kept serving" in result["msg"]
    assert _running_ids(project) == before  # the same old container, never restarted
    assert len(app_containers(project)) == 1  # the broken one is gone
    assert running_image_ids(project) == [v1]
    assert load.failures == [], (load.failures[:5], proxy_log(project))
    assert set(load.versions) == {"v1"}  # the proxy never sent a request to the ungated release
    assert state_file(project)["services"]["app"]["current"]["image_id"] == v1
    assert [s["step"] for s in result["steps"]][-1] == "rollback"


def test_crash_after_start_is_caught_by_the_soak(project, venv_bin, ansible_env):
    before = _running_ids(project)
    gate = {"type": "command", "command": "wget -q -O /dev/null http://127.0.0.1:8080/health",
            "interval": 1, "successes": 2, "soak": 14}
    with Load(project["url"]) as load:
        result, proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "crashy"}, health=gate))
    assert result.get("failed") is True, proc.stdout[-3000:]
    assert result["rolled_back"] is True
    assert "during the soak" in result["msg"], result["msg"]
    assert [s["step"] for s in result["steps"]][:3] == ["plan", "start_new", "gate"]  # the gate had passed
    assert _running_ids(project) == before
    assert running_image_ids(project) == [image_id("local/httpapp:v1")]
    assert load.failures == [], (load.failures[:5], proxy_log(project))


def test_interrupted_rollout_is_converged_by_a_rerun(project, venv_bin, ansible_env):
    """SIGKILL ansible-playbook once the new container exists (mid-gate); run again."""
    v2 = image_id("local/httpapp:v2")
    slow_gate = dict(args_for(project)["health"], successes=1000, interval=0.5)
    args = args_for(project, env={"APP_TAG": "v2"}, health=slow_gate, wait_timeout=600)
    with tempfile.TemporaryDirectory(prefix="cr7-kill-") as tmp:
        playbook, extra = Path(tmp) / "play.yml", Path(tmp) / "vars.json"
        playbook.write_text(PLAYBOOK)
        extra.write_text(json.dumps({"rollout_args": args, "result_path": str(Path(tmp) / "r.json"),
                                     "ansible_python_interpreter": sys.executable}))
        proc = subprocess.Popen([str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                                 "-e", f"@{extra}", str(playbook)], cwd=REPO, env=ansible_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while len(app_containers(project)) < 2 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert len(app_containers(project)) == 2, "the rollout never started a new container"
            time.sleep(1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
            proc.wait(30)
    assert len([c for c in app_containers(project) if c["State"] == "running"]) == 2  # half way

    checked, _proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}), check=True)
    assert checked["plan"][0]["action"] == "rolling" and checked["plan"][0]["create"] == 0
    assert len(checked["plan"][0]["adopt"]) == 1  # the new container left behind is gated, not duplicated
    with Load(project["url"]) as load:
        result, proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}))
    assert result["changed"] is True, proc.stdout[-3000:]
    assert result["plan"] == checked["plan"]
    assert running_image_ids(project) == [v2] and len(app_containers(project)) == 1
    assert load.failures == [], (load.failures[:5], proxy_log(project))
    again, _proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}))
    assert again["changed"] is False


BAD_INPUTS = [
    ("unknown service", {"services": ["nope"]}, "unknown service(s) nope"),
    ("missing project dir", {"project_src": "/nonexistent/cr7"}, "is not a directory"),
    ("http gate without url", {"health": {"type": "http"}}, "health.type=http needs health.url"),
    ("tcp gate without port", {"health": {"type": "tcp"}}, "health.type=tcp needs health.port"),
    ("bad gate type", {"health": {"type": "ping"}}, "value of type must be one of"),
    ("successes not a number", {"health": {"type": "docker", "successes": "many"}}, "successes"),
    ("service listed twice", {"services": ["app", "app"]}, "lists a service twice"),
    ("proxy that is not a service", {"proxy": {"service": "haproxy"}}, "proxy.service 'haproxy' is not a service"),
    ("no earlier release to roll back to", {"state": "rolled_back"}, "no last known good release"),
    ("unreachable docker host", {"docker_host": "tcp://127.0.0.1:1"}, "cannot reach the Docker daemon"),
    ("missing compose file", {"files": ["nope.yml"]}, "compose file(s) not found"),
]


@pytest.fixture(scope="module")
def idle_project(rollout_images, tmp_path_factory):
    """One project for the bad-input table: none of those runs may change it."""
    proj = make_project(tmp_path_factory.mktemp("cr7-bad"))
    yield proj
    destroy(proj)


@pytest.mark.parametrize(("case", "override", "expect"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_clearly_and_changes_nothing(idle_project, venv_bin, ansible_env, case, override, expect):
    project = idle_project
    before = _running_ids(project)
    args = args_for(project, env={"APP_TAG": "v2"})
    args.update(override)
    result, proc = run_module(venv_bin, ansible_env, args)
    assert result.get("failed") is True, (case, proc.stdout[-2000:])
    assert expect in result["msg"], (case, result["msg"])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not result.get("changed")
    assert _running_ids(project) == before


def test_invalid_compose_file_is_a_clear_error(project, venv_bin, ansible_env):
    before = _running_ids(project)
    compose_file = project["dir"] / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("    init: true\n", "    init: [not, a, bool]\n", 1))
    result, _proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}))
    assert result.get("failed") is True
    assert "is invalid" in result["msg"] and "init" in result["msg"], result["msg"]
    assert _running_ids(project) == before


def test_rolling_on_a_fixed_host_port_explains_recreate(rollout_images, tmp_path, venv_bin, ansible_env):
    proj = make_project(tmp_path, app_extra='    ports: ["127.0.0.1:18089:8080"]', start=False)
    try:
        result, _proc = run_module(venv_bin, ansible_env, args_for(proj, env={"APP_TAG": "v2"}))
        assert result.get("failed") is True
        assert "publishes fixed host port(s) 127.0.0.1:18089->8080" in result["msg"]
        assert "strategy=recreate" in result["msg"]
        assert app_containers(proj) == []  # checked before anything started
    finally:
        destroy(proj)


def test_verbose_output_shows_no_env_file_secret(project, venv_bin, ansible_env):
    """Secrets live in .env (env_file); the module hashes the config and never prints it."""
    secret = "cr7-secret-" + os.urandom(8).hex()
    compose_file = project["dir"] / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace(
        "    init: true\n", "    init: true\n    environment:\n      API_KEY: ${API_KEY:?set API_KEY}\n", 1))
    (project["dir"] / "app.env").write_text(f"API_KEY={secret}\n")
    args = args_for(project, env={"APP_TAG": "v2"}, env_file=str(project["dir"] / "app.env"))
    result, proc = run_module(venv_bin, ansible_env, args, verbosity=3)
    assert result.get("changed") is True, proc.stdout[-3000:]
    assert secret not in proc.stdout + proc.stderr
    assert secret not in (project["dir"] / ".ops-rollout-state.json").read_text()
    # the secret reached the container: compose read it from the env_file
    out = compose(project, "--env-file", str(project["dir"] / "app.env"), "exec", "-T", "app", "env").stdout
    assert f"API_KEY={secret}" in out
