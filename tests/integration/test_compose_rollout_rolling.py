"""ops.runbooks.compose_rollout against the real Docker Engine + Compose v2 with local images.

Every test runs its own compose project (unique name, temp dir): `app` (local/httpapp) behind
`proxy` (local/nginx:bookworm, published on an ephemeral 127.0.0.1 port, upstream `app`
resolved at each reload, which the module triggers). A background client counts failed
requests through the proxy while the module works. test_compose_rollout_faults.py and
test_deploy_compose.py import the helpers from here.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from lab import images

REPO = Path(__file__).resolve().parents[2]
LABEL = "ops.runbooks.test=compose_rollout"

NGINX_CONF = """\
worker_processes 1;
events { worker_connections 512; }
http {
  access_log off;
  # `app` is resolved when nginx (re)loads: compose_rollout reloads it (proxy option) once new
  # containers passed the gate and again once old ones left the network.
  upstream app_pool {
    server app:8080;
  }
  server {
    listen 80;
    location / {
      proxy_pass http://app_pool;
      proxy_connect_timeout 300ms;
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }
  }
}
"""

COMPOSE = """\
name: {name}
services:
  app:
    image: local/httpapp:${{APP_TAG:-v1}}
    init: true
    labels:
      ops.runbooks.test: compose_rollout
{app_extra}
  proxy:
    image: local/nginx:bookworm
    init: true
    ports: ["127.0.0.1::80"]
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    labels:
      ops.runbooks.test: compose_rollout
"""

HTTP_GATE = {"type": "http", "url": "http://{host}:8080/health", "probe_from": "proxy",
             "interval": 0.5, "successes": 3}


def compose(project: dict, *args: str, env: dict | None = None, check: bool = True, timeout: int = 180):
    return subprocess.run(["docker", "compose", "--project-directory", str(project["dir"]), *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          check=check, timeout=timeout)


def make_project(tmp_path: Path, app_extra: str = "", start: bool = True) -> dict:
    name = f"cr7-{uuid.uuid4().hex[:8]}"
    project_dir = tmp_path / name
    project_dir.mkdir()
    (project_dir / "nginx.conf").write_text(NGINX_CONF)
    (project_dir / "compose.yaml").write_text(COMPOSE.format(name=name, app_extra=app_extra))
    project = {"name": name, "dir": project_dir}
    if start:
        compose(project, "up", "-d", "--wait")
        out = compose(project, "port", "proxy", "80").stdout.strip()
        project["url"] = f"http://{out}"
    return project


def destroy(project: dict) -> None:
    compose(project, "down", "-v", "--remove-orphans", "--timeout", "1", check=False)
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project['name']}"],
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, check=False)
    # `down` fails on a compose file a test made invalid: remove the project's network by label
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter",
                           f"label=com.docker.compose.project={project['name']}"],
                          capture_output=True, text=True, check=False).stdout.split()
    if nets:
        subprocess.run(["docker", "network", "rm", *nets], capture_output=True, check=False)


@pytest.fixture(scope="session")
def rollout_images(docker_lab):
    """The lab's httpapp tags plus the two this issue adds (built once, reused by hash)."""
    images.build_httpapp_crashy()
    images.build_nginx()
    return docker_lab


@pytest.fixture
def project(rollout_images, tmp_path):
    proj = make_project(tmp_path)
    yield proj
    destroy(proj)


def app_containers(project: dict) -> list[dict]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project['name']}",
                          "--filter", "label=com.docker.compose.service=app", "--format", "{{json .}}"],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def image_id(ref: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def running_image_ids(project: dict) -> list[str]:
    ids = [c["ID"] for c in app_containers(project) if c["State"] == "running"]
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", "-f", "{{.Image}}", *ids], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


class Load:
    """GET <url>/version in a loop on a thread; counts answers other than 200."""

    def __init__(self, url: str):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.requests = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.host, int(self.port), timeout=5)
            try:
                conn.request("GET", "/version")
                resp = conn.getresponse()
                body = resp.read().decode().strip()
                if resp.status == 200 and body:
                    self.versions[body] = self.versions.get(body, 0) + 1
                else:
                    self.failures.append(f"{time.strftime('%T')} HTTP {resp.status}")
            except OSError as exc:
                self.failures.append(f"{time.strftime('%T')} {exc!r}")
            finally:
                conn.close()
                self.requests += 1
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


PLAYBOOK = """\
- name: Run compose_rollout once
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Roll out
      ops.runbooks.compose_rollout: "{{ rollout_args }}"
      register: rollout
      ignore_errors: true
    - name: Save the result
      ansible.builtin.copy:
        content: "{{ rollout | to_json }}"
        dest: "{{ result_path }}"
        mode: "0600"
      check_mode: false
"""


def run_module(venv_bin: Path, ansible_env: dict, args: dict, check: bool = False, verbosity: int = 0,
               timeout: int = 300) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ops.runbooks.compose_rollout through ansible-playbook; (module result, process)."""
    with tempfile.TemporaryDirectory(prefix="cr7-play-") as tmp:
        playbook, result_path, extra = Path(tmp) / "play.yml", Path(tmp) / "result.json", Path(tmp) / "vars.json"
        playbook.write_text(PLAYBOOK)
        extra.write_text(json.dumps({"rollout_args": args, "result_path": str(result_path),
                                     "ansible_python_interpreter": sys.executable}))
        cmd = [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{extra}",
               str(playbook)]
        if check:
            cmd.append("--check")
        if verbosity:
            cmd.append("-" + "v" * verbosity)
        proc = subprocess.run(cmd, cwd=REPO, env=ansible_env, capture_output=True, text=True, check=False,
                              timeout=timeout)
        if result_path.exists():
            return json.loads(result_path.read_text()), proc
    return {"failed": True, "msg": proc.stdout[-2000:] + proc.stderr[-2000:]}, proc


def args_for(project: dict, **extra) -> dict:
    base = {"project_src": str(project["dir"]), "services": ["app"], "health": dict(HTTP_GATE), "drain": 1.5,
            "proxy": {"service": "proxy"}}
    base.update(extra)
    return base


def proxy_log(project: dict) -> str:
    """The proxy's error log (upstream timeouts etc.), for failure messages."""
    proc = compose(project, "logs", "--no-color", "--timestamps", "--tail", "30", "proxy", check=False)
    print(proc.stdout[-5000:])  # shown by pytest for a failed test
    return proc.stdout[-300:]


def state_file(project: dict) -> dict:
    return json.loads((project["dir"] / ".ops-rollout-state.json").read_text())


# ---------------------------------------------------------------- tests


def test_rolling_update_check_real_noop_with_zero_failed_requests(project, venv_bin, ansible_env):
    v1, v2 = image_id("local/httpapp:v1"), image_id("local/httpapp:v2")
    before = {c["ID"] for c in app_containers(project)}
    args = args_for(project, env={"APP_TAG": "v2"})

    checked, _proc = run_module(venv_bin, ansible_env, args, check=True)
    assert checked["changed"] is True, checked
    assert [p["action"] for p in checked["plan"]] == ["rolling"]
    assert checked["plan"][0]["create"] == 1
    assert {c["ID"] for c in app_containers(project)} == before  # check mode changed nothing
    assert checked["diff"]["before"]["app"]["image_id"] == v1
    assert checked["diff"]["after"]["app"]["image_id"] == v2

    with Load(project["url"]) as load:
        time.sleep(0.5)
        real, proc = run_module(venv_bin, ansible_env, args)
        time.sleep(1)
    assert real.get("changed") is True, proc.stdout[-3000:]
    assert real["plan"] == checked["plan"]  # check mode predicted the real run
    assert real["rolled_back"] is False
    assert load.failures == [], (f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}",
                                 proxy_log(project))
    assert load.requests > 50 and set(load.versions) == {"v1", "v2"}, load.versions
    assert running_image_ids(project) == [v2]
    assert not before & {c["ID"] for c in app_containers(project)}  # old container removed
    steps = [s["step"] for s in real["steps"]]
    assert steps[:3] == ["plan", "start_new", "gate"] and "drain_old" in steps
    assert real["from"]["app"]["image_id"] == v1 and real["to"]["app"]["image_id"] == v2
    recorded = state_file(project)["services"]["app"]
    assert recorded["current"]["image_id"] == v2 and recorded["current"]["env"] == {"APP_TAG": "v2"}
    assert recorded["previous"]["image_id"] == v1  # adopted: the release that ran before
    assert oct((project["dir"] / ".ops-rollout-state.json").stat().st_mode & 0o777) == "0o600"

    again, _proc = run_module(venv_bin, ansible_env, args)
    assert again["changed"] is False and [p["action"] for p in again["plan"]] == ["none"]
    again_check, _proc = run_module(venv_bin, ansible_env, args, check=True)
    assert again_check["changed"] is False


def test_rolled_back_on_demand_goes_to_last_known_good_and_is_idempotent(project, venv_bin, ansible_env):
    v1, v2 = image_id("local/httpapp:v1"), image_id("local/httpapp:v2")
    tcp_gate = {"type": "tcp", "port": 8080, "probe_from": "proxy", "interval": 0.5, "successes": 2}
    result, proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v1"}, health=tcp_gate))
    assert result["changed"] is False, proc.stdout[-2000:]  # already v1: adopted, recorded
    result, proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}, health=tcp_gate))
    assert result["changed"] is True and running_image_ids(project) == [v2], proc.stdout[-2000:]

    back_args = args_for(project, state="rolled_back", health=tcp_gate)
    checked, _proc = run_module(venv_bin, ansible_env, back_args, check=True)
    assert checked["changed"] is True and checked["to"]["app"]["image_id"] == v1
    assert running_image_ids(project) == [v2]
    with Load(project["url"]) as load:
        back, proc = run_module(venv_bin, ansible_env, back_args)
        time.sleep(1)
    assert back["changed"] is True, proc.stdout[-3000:]
    assert back["plan"] == checked["plan"]
    assert running_image_ids(project) == [v1]
    assert load.failures == [], (load.failures[:5], proxy_log(project))
    recorded = state_file(project)["services"]["app"]
    assert recorded["current"]["image_id"] == v1 and recorded["previous"]["image_id"] == v1

    again, _proc = run_module(venv_bin, ansible_env, back_args)
    assert again["changed"] is False
    # rolling out again (file default v1 + env v2) moves forward normally
    forward, _proc = run_module(venv_bin, ansible_env, args_for(project, env={"APP_TAG": "v2"}, health=tcp_gate))
    assert forward["changed"] is True and running_image_ids(project) == [v2]


def test_recreate_for_a_fixed_host_port_and_docker_gate(rollout_images, tmp_path, venv_bin, ansible_env):
    port = _free_port()
    proj = make_project(tmp_path, app_extra=f'    ports: ["127.0.0.1:{port}:8080"]', start=False)
    try:
        compose(proj, "up", "-d", "--wait", "app")
        rolling_args = args_for(proj, env={"APP_TAG": "v2"}, health={"type": "docker"})
        rolling, _proc = run_module(venv_bin, ansible_env, rolling_args)
        assert rolling["failed"] is True
        assert "fixed host port" in rolling["msg"] and "strategy=recreate" in rolling["msg"]
        assert running_image_ids(proj) == [image_id("local/httpapp:v1")]

        args = args_for(proj, env={"APP_TAG": "v2"}, strategy="recreate",
                        health={"type": "docker", "interval": 0.5, "successes": 2})
        checked, _proc = run_module(venv_bin, ansible_env, args, check=True)
        assert [p["action"] for p in checked["plan"]] == ["recreate"]
        real, proc = run_module(venv_bin, ansible_env, args)
        assert real["changed"] is True, proc.stdout[-3000:]
        assert real["plan"] == checked["plan"]
        assert running_image_ids(proj) == [image_id("local/httpapp:v2")]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/version")
        assert conn.getresponse().read().decode().strip() == "v2"
        again, _proc = run_module(venv_bin, ansible_env, args)
        assert again["changed"] is False
    finally:
        destroy(proj)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
