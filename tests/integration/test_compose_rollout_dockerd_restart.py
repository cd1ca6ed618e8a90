"""compose_rollout when dockerd restarts in the middle of a rollout, on a real (private) Docker Engine.

The lab's dockerd is shared, so each case starts its own daemon (tests/integration/private_dockerd.py:
own data-root, exec-root, socket, bridge, no iptables) and loads local/httpapp:v1 and :v2 into it
from the shared one. A compose project `app` (one container, ephemeral 127.0.0.1 port) runs v1; the
module rolls it to v2 behind a command gate slow enough (16 consecutive probes, 0.5 s apart) that
the test can take the daemon away while the module waits on the gate. Then:

1. the first run ends with a clear error (no traceback) naming the lost daemon and the way out;
2. dockerd is started again; what runs now depends on live-restore and the restart policy;
3. the same task run again converges: exactly one container, on v2, serving v2 through its
   published port, no old or new container left over, state file current=v2 / previous=v1;
4. a third run reports changed=false.

Cases: SIGTERM with live-restore off and no restart policy (dockerd stops every container: the
re-run starts the release afresh; no state file before the rollout, so `previous` is adopted
from the stopped v1 container); SIGKILL with live-restore off and `restart: always` (dockerd kills
the orphaned containers at start, then restarts them: the re-run adopts the v2 container and
retires v1); SIGKILL with live-restore on (nothing stopped: the re-run adopts v2); SIGKILL and
an immediate restart, as systemd would do it (the module may not notice the gap: then the gate
fails on the stopped new container and the message says the old one is stopped too).

test_restart_policies_across_a_dockerd_restart pins down what the module's documentation says
about compose `restart:` with live-restore off: `always` and `on-failure` come back after SIGTERM
and SIGKILL, `unless-stopped` only after SIGTERM (dockerd stops the orphans at start-up, which
counts as a manual stop), no policy never.

Each case holds the private-dockerd lock (never two at once, across pytest sessions too) and
pytest-xdist's `--dist loadfile` keeps the cases of this file on one worker.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from private_dockerd import private_dockerd
from test_compose_rollout_rolling import PLAYBOOK, REPO, run_module

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("private_dockerd")]

COMPOSE = """\
name: {name}
services:
  app:
    image: local/httpapp:${{APP_TAG:-v1}}
    init: true
    ports: ["127.0.0.1::8080"]
    labels:
      ops.runbooks.test: compose_rollout_dockerd_restart
{restart}networks:
  default:
    ipam:
      config:
        - subnet: {subnet}
"""

# 16 consecutive successes 0.5 s apart: the gate lasts ~8 s, the rollout is mid-way long enough
SLOW_GATE = {"type": "command", "command": "wget -q -O /dev/null http://127.0.0.1:8080/health",
             "interval": 0.5, "successes": 16}

CASES = [
    # signal, live_restore, restart policy, record v1 before the rollout, containers running after the
    # restart, restart at once (as systemd would) instead of after the first run has ended
    pytest.param("SIGTERM", False, None, False, 0, False, id="sigterm-live-restore-off-no-restart-policy"),
    pytest.param("SIGKILL", False, "always", True, 2, False, id="sigkill-live-restore-off-restart-always"),
    pytest.param("SIGKILL", True, None, True, 2, False, id="sigkill-live-restore-on"),
    pytest.param("SIGKILL", False, None, True, 0, True, id="sigkill-immediate-restart-live-restore-off"),
]


def _containers(daemon) -> list[dict]:
    ids = daemon.docker("ps", "-aq").stdout.split()
    return sorted(daemon.inspect(*ids), key=lambda c: c["Name"])


def _app(daemon, project: str) -> list[dict]:
    return [c for c in _containers(daemon)
            if (c["Config"]["Labels"] or {}).get("com.docker.compose.project") == project]


def _image_id(daemon, ref: str) -> str:
    return daemon.docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()


def _get_version(container: dict) -> str:
    binding = container["NetworkSettings"]["Ports"]["8080/tcp"][0]
    with urllib.request.urlopen(f"http://127.0.0.1:{binding['HostPort']}/version", timeout=5) as resp:  # noqa: S310
        return resp.read().decode().strip()


def _start_playbook(venv_bin: Path, ansible_env: dict, args: dict, tmp: Path):
    playbook, extra, result = tmp / "play.yml", tmp / "vars.json", tmp / "result.json"
    playbook.write_text(PLAYBOOK)
    extra.write_text(json.dumps({"rollout_args": args, "result_path": str(result),
                                 "ansible_python_interpreter": sys.executable}))
    proc = subprocess.Popen([str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local",  # noqa: S603
                             "-e", f"@{extra}", str(playbook)], cwd=REPO, env=ansible_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, result


@pytest.mark.parametrize(("sig_name", "live_restore", "restart", "record_v1", "running_after", "immediate"), CASES)
def test_dockerd_restart_mid_rollout_then_rerun_converges(docker_lab, venv_bin, ansible_env, tmp_path,
                                                          sig_name, live_restore, restart, record_v1,
                                                          running_after, immediate):
    timings: dict[str, float] = {}
    name = f"cr7d-{uuid.uuid4().hex[:8]}"
    project_dir = tmp_path / name
    project_dir.mkdir()
    policy = f"    restart: {restart}\n" if restart else ""

    with private_dockerd("cr7d", live_restore=live_restore) as daemon:
        (project_dir / "compose.yaml").write_text(COMPOSE.format(name=name, restart=policy, subnet=daemon.subnet()))
        daemon.load_images("local/httpapp:v1", "local/httpapp:v2")
        v1, v2 = _image_id(daemon, "local/httpapp:v1"), _image_id(daemon, "local/httpapp:v2")
        subprocess.run(["docker", "compose", "--project-directory", str(project_dir), "up", "-d", "--wait"],
                       env=daemon.env, check=True, capture_output=True, timeout=120)
        args = {"project_src": str(project_dir), "services": ["app"], "env": {"APP_TAG": "v2"},
                "health": SLOW_GATE, "drain": 0.5, "wait_timeout": 120, "docker_host": daemon.host}
        if record_v1:
            first, proc = run_module(venv_bin, ansible_env, dict(args, env={"APP_TAG": "v1"}))
            assert first["changed"] is False, proc.stdout[-2000:]  # adopted v1 as the current release
        old = _app(daemon, name)
        assert [c["Image"] for c in old] == [v1]

        # --- the rollout v1 -> v2, and dockerd goes away while the module waits on the gate
        with tempfile.TemporaryDirectory(prefix="cr7d-play-") as tmp:
            started = time.monotonic()
            proc, result_path = _start_playbook(venv_bin, ansible_env, args, Path(tmp))
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    running = [c for c in _app(daemon, name) if c["State"]["Status"] == "running"]
                    if len(running) == 2:
                        break
                    time.sleep(0.2)
                assert len(running) == 2, "the rollout never started a new container"
                time.sleep(1.5)  # a few probes into the ~8 s gate
                assert proc.poll() is None, "the rollout ended before dockerd could be restarted"
                timings["rollout_running_before_kill_s"] = time.monotonic() - started
                new_name = next(c["Name"].lstrip("/") for c in running if c["Image"] == v2)
                killed = time.monotonic()
                timings["dockerd_stop_s"] = daemon.kill(getattr(signal, sig_name))
                if immediate:
                    timings["dockerd_start_s"] = daemon.start()
                output = proc.communicate(timeout=120)[0]
                timings["first_run_failed_after_kill_s"] = time.monotonic() - killed
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
            failed = json.loads(result_path.read_text())
        assert failed.get("failed") is True, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        if "lost the Docker daemon" in failed["msg"]:
            assert "run the same task again" in failed["msg"], failed["msg"]
            assert failed["rolled_back"] is False
            assert [s["step"] for s in failed["steps"]] == ["plan", "start_new"]  # it was waiting on the gate
        else:  # the daemon was back before the module noticed it had gone: the gate saw the new container stopped
            assert immediate, failed["msg"]
            msg = failed["msg"]
            assert "is exited" in msg and "the old ones are not running either" in msg, msg
            assert "was dockerd restarted? Run the task again" in failed["msg"]
            assert failed["rolled_back"] is True  # the stopped new container was removed

        if not immediate:
            timings["dockerd_start_s"] = daemon.start()
        after_restart = _app(daemon, name)
        statuses = sorted(c["State"]["Status"] for c in after_restart)
        assert statuses.count("running") == running_after, statuses
        assert len(after_restart) == 2 or (immediate and failed["rolled_back"] and len(after_restart) == 1), statuses
        if live_restore:  # the containers never stopped: same processes as before the kill
            assert all(c["State"]["StartedAt"] == r["State"]["StartedAt"]
                       for c, r in zip(after_restart, sorted(running, key=lambda c: c["Name"]), strict=True))

        # --- the same task again: check mode, then for real
        checked, _proc = run_module(venv_bin, ansible_env, args, check=True)
        plan = checked["plan"][0]
        if running_after:
            assert plan["action"] == "rolling" and plan["create"] == 0 and plan["adopt"] == [new_name], plan
            assert plan["remove"] == [c["Name"].lstrip("/") for c in old], plan
        else:
            assert plan["action"] == "create" and plan["create"] == 1, plan
            assert plan["remove"] == sorted(c["Name"].lstrip("/") for c in after_restart), plan
        assert [c["Id"] for c in _app(daemon, name)] == [c["Id"] for c in after_restart]  # check mode: no change
        start = time.monotonic()
        rerun, proc = run_module(venv_bin, ansible_env, args)
        timings["rerun_s"] = time.monotonic() - start
        assert rerun.get("failed") is not True and rerun["changed"] is True, proc.stdout[-3000:]
        assert rerun["plan"] == checked["plan"]
        assert "Traceback" not in proc.stdout + proc.stderr

        final = _app(daemon, name)
        assert len(final) == 1, [(c["Name"], c["State"]["Status"]) for c in final]
        assert final[0]["State"]["Status"] == "running" and final[0]["Image"] == v2
        if running_after:
            assert final[0]["Name"].lstrip("/") == new_name  # adopted, not replaced
        assert _get_version(final[0]) == "v2"
        assert [c["Id"] for c in _containers(daemon)] == [final[0]["Id"]]  # nothing else on the daemon
        state = json.loads((project_dir / ".ops-rollout-state.json").read_text())["services"]["app"]
        assert state["current"]["image_id"] == v2 and state["current"]["env"] == {"APP_TAG": "v2"}
        assert state["current"]["containers"] == [final[0]["Name"].lstrip("/")]
        assert state["current"]["config_hash"] == final[0]["Config"]["Labels"]["com.docker.compose.config-hash"]
        assert state["previous"]["image_id"] == v1

        start = time.monotonic()
        third, _proc = run_module(venv_bin, ansible_env, args)
        timings["third_run_s"] = time.monotonic() - start
        assert third["changed"] is False and third["plan"][0]["action"] == "none", third
        assert [c["Id"] for c in _app(daemon, name)] == [final[0]["Id"]]

    assert daemon.leftovers() == {}
    # the shared daemon never saw this project
    shared = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert shared == []
    print(f"\n[{sig_name} live_restore={live_restore} restart={restart}] "
          + json.dumps({k: round(v, 2) for k, v in timings.items()}) + f"\nfirst run: {failed['msg']}")


def test_restart_policies_across_a_dockerd_restart(docker_lab):
    policies = ("no", "always", "unless-stopped", "on-failure")
    seen = {}
    with private_dockerd("cr7d") as daemon:
        daemon.load_images("local/httpapp:v1")
        for sig_name in ("SIGTERM", "SIGKILL"):
            ids = {p: daemon.docker("run", "-d", "--init", "--restart", p, "local/httpapp:v1").stdout.strip()
                   for p in policies}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                    c["State"]["Running"] for c in daemon.inspect(*ids.values())):
                time.sleep(0.2)
            daemon.kill(getattr(signal, sig_name))
            daemon.start()
            # dockerd restarts the policy containers in the background once it answers: wait for `always`
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                states = [c["State"]["Status"] for c in daemon.inspect(*ids.values())]
                if states[1] == "running" and not {"restarting", "created"} & set(states):
                    break
                time.sleep(0.2)
            seen[sig_name] = dict(zip(policies, states, strict=True))
            daemon.docker("rm", "-f", *ids.values())
    assert daemon.leftovers() == {}
    assert seen == {
        "SIGTERM": {"no": "exited", "always": "running", "unless-stopped": "running", "on-failure": "running"},
        "SIGKILL": {"no": "exited", "always": "running", "unless-stopped": "exited", "on-failure": "running"},
    }, seen


@pytest.mark.parametrize("kill_first", [False, True], ids=["daemon-running", "daemon-killed"])
def test_private_dockerd_cleans_up_after_a_failure(docker_lab, kill_first):
    """Everything the helper made is gone even when the test body raises with containers running,
    also when it raises after `kill -9` of dockerd (the orphaned shim and container, the network's
    bridge that nobody can ask the daemon about any more)."""
    with pytest.raises(RuntimeError), private_dockerd("cr7d") as daemon:
        daemon.load_images("local/httpapp:v1")
        daemon.docker("network", "create", "--subnet", daemon.subnet(), "cr7d-net")
        daemon.docker("run", "-d", "--init", "--network", "cr7d-net", "-p", "127.0.0.1::8080", "local/httpapp:v1")
        left = daemon.leftovers()
        assert len(left["pids"]) >= 3 and len(left["links"]) == 2, left  # dockerd, containerd, shim; 2 bridges
        if kill_first:
            daemon.kill(signal.SIGKILL)
        raise RuntimeError("test body failed")
    assert daemon.leftovers() == {}
    assert not Path(daemon.root).exists()
