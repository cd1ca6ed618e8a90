"""ops.runbooks.pm2_app against real PM2 on this host.

Every test module run gets its own PM2_HOME (a temp dir; `pm2 kill` with that home in the
finalizer) and its own free ports: the lab's hostapp daemon is never touched. The module
is driven with `ansible localhost -m ops.runbooks.pm2_app` and the json callback, so the
results are the real module results (check mode, diff, -vvv output included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import core

REPO = Path(__file__).resolve().parents[2]
APP_SRC = REPO / "lab" / "app"
PM2 = shutil.which("pm2")

pytestmark = pytest.mark.skipif(PM2 is None, reason="pm2 is not installed (make deps)")


def _pm2_env(home: Path) -> dict:
    return dict(os.environ, PM2_HOME=str(home))


@pytest.fixture(scope="module")
def pm2_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("pm2home")
    yield home
    subprocess.run([PM2, "kill"], env=_pm2_env(home), capture_output=True, timeout=60, check=False)
    # Whatever survived (an app whose daemon died) still carries this PM2_HOME: kill it.
    needle = b"PM2_HOME=" + str(home).encode() + b"\0"
    for pid in core.pids_with(needle, "environ"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    """Two releases of the lab app (v1, v2) and a `current` symlink, as on a droplet."""
    core.ensure_app_node_modules()
    base = tmp_path_factory.mktemp("pm2app")
    for version in ("v1", "v2"):
        dest = base / "releases" / version
        dest.mkdir(parents=True)
        for name in ("server.js", "package.json", "schema.sql", "ecosystem.config.js"):
            shutil.copy2(APP_SRC / name, dest / name)
        (dest / "node_modules").symlink_to(APP_SRC / "node_modules")
    (base / "current").symlink_to(base / "releases" / "v1")
    return base


def _adhoc(venv_bin, env, args: dict, *extra: str, check_rc: bool = False):
    """Run the module once; returns (result dict, raw stdout, stderr)."""
    proc = subprocess.run(
        [str(venv_bin / "ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-e", "ansible_python_interpreter=" + str(venv_bin / "python"),
         "-m", "ops.runbooks.pm2_app", "-a", json.dumps(args), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=240,
    )
    # The ad-hoc callback prints `localhost | CHANGED => {json}` (FAILED!, SUCCESS alike).
    match = re.search(r"^localhost \| ([A-Z!]+) => ", proc.stdout, re.M)
    try:
        result = json.JSONDecoder().raw_decode(proc.stdout[match.end():])[0] if match else {}
    except ValueError:
        result = {}
    if match and match.group(1) == "FAILED!":
        result["failed"] = True
    if check_rc:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return result, proc.stdout, proc.stderr


def _get(url: str, timeout: float = 3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - test URLs on 127.0.0.1
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def _environ(pid: int) -> dict:
    """The environment a pm2 process was started with. Cluster workers get it as one
    `pm2_env={json}` variable that pm2's container copies into process.env at startup."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
    if "pm2_env" in env:
        env.update({k: str(v) for k, v in json.loads(env["pm2_env"]).items() if isinstance(v, (str, int))})
    return env


def _same_except_pids(check: dict, real: dict) -> None:
    for key in ("changed", "actions", "reasons", "changes"):
        assert check.get(key) == real.get(key), key


# ------------------------------------------------------------------ lifecycle (cluster)

def test_cluster_lifecycle_check_real_idempotent_and_drift(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    live = f"http://127.0.0.1:{port}/api/live"
    args = {"name": "cl-app", "script": str(app_dir / "current" / "server.js"),
            "cwd": str(app_dir / "current"), "instances": 2, "exec_mode": "cluster",
            "env": {"PORT": str(port), "FEATURE_X": "feature-on", "OLD_FLAG": "old-flag-set"},
            "pm2_home": str(pm2_home), "health": {"url": live, "retries": 20, "delay": 0.5}}

    check, _out, _err = _adhoc(venv_bin, ansible_env, args, "--check", "--diff", check_rc=True)
    assert check["changed"] is True and check["actions"] == ["start"]
    assert _get(live)[0] == 0, "check mode must not start anything"
    real, real_out, _err = _adhoc(venv_bin, ansible_env, args, "--diff", check_rc=True)
    _same_except_pids(check, real)
    assert real["status"] == "online" and real["instances"] == 2 and len(real["pids"]) == 2
    assert real["health"]["ok"] is True
    # --diff shows before/after with env key names (values never).
    assert '"env_keys"' in real_out and '"OLD_FLAG"' in real_out and "old-flag-set" not in real_out
    assert _get(live)[0] == 200

    again, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert again["changed"] is False and again["actions"] == [] and again["pids"] == real["pids"]
    again_check, _out, _err = _adhoc(venv_bin, ansible_env, args, "--check", check_rc=True)
    assert again_check["changed"] is False

    # A changed value: reload --update-env, new pids, the new value really in the processes.
    args["env"]["FEATURE_X"] = "feature-off"
    check, _out, _err = _adhoc(venv_bin, ansible_env, args, "--check", check_rc=True)
    reload_, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    _same_except_pids(check, reload_)
    assert reload_["actions"] == ["reload"] and reload_["changes"] == {"env_changed": ["FEATURE_X"]}
    assert "zero-downtime" in reload_["reasons"][0]
    assert set(reload_["pids"]).isdisjoint(real["pids"])
    assert all(_environ(pid)["FEATURE_X"] == "feature-off" for pid in reload_["pids"])

    # A removed key: pm2 would keep it on reload, so delete + start, and it is really gone.
    del args["env"]["OLD_FLAG"]
    check, _out, _err = _adhoc(venv_bin, ansible_env, args, "--check", check_rc=True)
    recreate, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    _same_except_pids(check, recreate)
    assert recreate["actions"] == ["delete", "start"]
    assert "OLD_FLAG" in recreate["reasons"][0] and "3192" in recreate["reasons"][0]
    assert all("OLD_FLAG" not in _environ(pid) for pid in recreate["pids"])

    # args: reload; instances: scale.
    args["args"] = ["--mode", "x"]
    args["instances"] = 3
    both, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert both["actions"] == ["reload", "scale"] and both["instances"] == 3
    assert _adhoc(venv_bin, ansible_env, args, check_rc=True)[0]["changed"] is False

    # A new release behind the same `current` path: state=reloaded serves the new code.
    (app_dir / "current").unlink()
    (app_dir / "current").symlink_to(app_dir / "releases" / "v2")
    rel, _out, _err = _adhoc(venv_bin, ansible_env, dict(args, state="reloaded"), check_rc=True)
    assert rel["actions"] == ["reload"] and rel["changed"] is True
    cwds = {os.readlink(f"/proc/{pid}/cwd") for pid in rel["pids"]}
    assert cwds == {str(app_dir / "releases" / "v2")}

    # A different script path: delete + start (a reload would keep running the old path).
    moved = dict(args, script=str(app_dir / "releases" / "v2" / "server.js"), cwd=str(app_dir / "releases" / "v2"))
    res, _out, _err = _adhoc(venv_bin, ansible_env, moved, check_rc=True)
    assert res["actions"] == ["delete", "start"] and "script" in res["changes"]

    # stopped, then absent; each twice (second time: no change).
    stop_args = {"name": "cl-app", "state": "stopped", "pm2_home": str(pm2_home)}
    assert _adhoc(venv_bin, ansible_env, stop_args, "--check", check_rc=True)[0]["actions"] == ["stop"]
    stopped, _out, _err = _adhoc(venv_bin, ansible_env, stop_args, check_rc=True)
    assert stopped["actions"] == ["stop"] and stopped["status"] == "stopped"
    assert _adhoc(venv_bin, ansible_env, stop_args, check_rc=True)[0]["changed"] is False
    # started again from stopped: a restart of the existing definition.
    started, _out, _err = _adhoc(venv_bin, ansible_env, moved, check_rc=True)
    assert started["actions"] == ["restart"] and started["status"] == "online"
    gone_args = {"name": "cl-app", "state": "absent", "pm2_home": str(pm2_home)}
    gone, _out, _err = _adhoc(venv_bin, ansible_env, gone_args, check_rc=True)
    assert gone["actions"] == ["delete"] and gone["status"] == "absent"
    assert _adhoc(venv_bin, ansible_env, gone_args, check_rc=True)[0]["changed"] is False


def test_fork_mode_change_is_a_restart_and_says_so(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    args = {"name": "fork-app", "script": str(app_dir / "releases" / "v1" / "server.js"),
            "env": {"PORT": str(port), "A": "value-one"}, "pm2_home": str(pm2_home),
            "health": {"url": f"http://127.0.0.1:{port}/api/live", "retries": 20, "delay": 0.5}}
    first, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert first["actions"] == ["start"] and first["instances"] == 1
    args["env"]["A"] = "value-two"
    res, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert res["actions"] == ["restart"] and "fork mode" in res["reasons"][0]
    assert _environ(res["pids"][0])["A"] == "value-two"
    _adhoc(venv_bin, ansible_env, {"name": "fork-app", "state": "absent", "pm2_home": str(pm2_home)}, check_rc=True)


def test_ecosystem_file_with_only(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    eco = app_dir / "releases" / "v1" / "ecosystem.config.js"
    args = {"name": "opslab-app", "ecosystem": str(eco), "only": "opslab-app", "instances": 1,
            "env": {"PORT": str(port)}, "pm2_home": str(pm2_home),
            "health": {"url": f"http://127.0.0.1:{port}/api/version", "retries": 20, "delay": 0.5}}
    first, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert first["actions"] == ["start"] and first["health"]["ok"]
    # exec_mode comes from the file (cluster), even with one instance.
    assert first["changes"] == {"status": ["absent", "online"]}
    jl = subprocess.run([PM2, "jlist"], env=_pm2_env(pm2_home), capture_output=True, text=True, timeout=60, check=False)
    procs = json.loads(jl.stdout[jl.stdout.index("["):])
    modes = {p["pm2_env"]["exec_mode"] for p in procs if p["name"] == "opslab-app"}
    assert modes == {"cluster_mode"}
    assert _adhoc(venv_bin, ansible_env, args, check_rc=True)[0]["changed"] is False
    _adhoc(venv_bin, ansible_env, {"name": "opslab-app", "state": "absent", "pm2_home": str(pm2_home)}, check_rc=True)


# ------------------------------------------------------------------ secrets

def test_env_secret_never_printed_even_at_vvv(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    secret = "s3cr3t-jwt-value-9d2f71c4"
    args = {"name": "secret-app", "script": str(app_dir / "releases" / "v1" / "server.js"),
            "env": {"PORT": str(port), "JWT_SECRET": secret}, "pm2_home": str(pm2_home)}
    for extra in (("--check", "--diff"), ("--diff",), ("--diff",)):
        proc = subprocess.run(
            [str(venv_bin / "ansible"), "localhost", "-c", "local", "-i", "localhost,", "-vvv",
             "-e", "ansible_python_interpreter=" + str(venv_bin / "python"),
             "-m", "ops.runbooks.pm2_app", "-a", json.dumps(args), *extra],
            cwd=REPO, env=ansible_env, capture_output=True, text=True, check=False, timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert secret not in proc.stdout + proc.stderr
        assert "JWT_SECRET" in proc.stdout  # the key name is reported, the value is not
    # Rotating the secret: a change, still never printed.
    args["env"]["JWT_SECRET"] = secret + "-rotated"
    res, out, err = _adhoc(venv_bin, ansible_env, args, "-vvv", "--diff", check_rc=True)
    assert res["actions"] == ["restart"] and res["changes"]["env_changed"] == ["JWT_SECRET"]
    assert secret not in out + err
    _adhoc(venv_bin, ansible_env, {"name": "secret-app", "state": "absent", "pm2_home": str(pm2_home)}, check_rc=True)


# ------------------------------------------------------------------ failures

def test_health_gate_never_healthy_fails_and_reports(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    args = {"name": "sick-app", "script": str(app_dir / "releases" / "v1" / "server.js"),
            "env": {"PORT": str(port), "FAIL_HEALTH": "1"}, "pm2_home": str(pm2_home),
            "health": {"url": f"http://127.0.0.1:{port}/api/health", "retries": 3, "delay": 0.3}}
    res, out, _err = _adhoc(venv_bin, ansible_env, args)
    assert res.get("failed") is True, out[-2000:]
    assert "not healthy after start" in res["msg"] and "HTTP 503" in res["msg"]
    assert "status='unhealthy'" not in res["msg"] or "503" in res["msg"]
    assert res["actions"] == ["start"] and res["health"]["attempts"] == 4
    assert "Traceback" not in out
    _adhoc(venv_bin, ansible_env, {"name": "sick-app", "state": "absent", "pm2_home": str(pm2_home)}, check_rc=True)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("eco")
    (base / "broken.json").write_text('{"apps": [ {"name": "x",, } ]}')
    (base / "broken.config.js").write_text("module.exports = { apps: [ { name: 'x' ")
    two = {"apps": [{"name": "a", "script": "a.js"}, {"name": "b", "script": "b.js"}]}
    (base / "two.json").write_text(json.dumps(two))
    return base


BAD_INPUT = [
    ({"name": "never-defined"}, "neither script nor ecosystem was given"),
    ({"name": "x", "ecosystem": "{base}/broken.json"}, "is not valid JSON"),
    ({"name": "x", "ecosystem": "{base}/broken.config.js"}, "could not be loaded by node"),
    ({"name": "x", "ecosystem": "{base}/two.json", "only": "c"}, "has no app named 'c' (it has: a, b)"),
    ({"name": "x", "ecosystem": "{base}/two.json"}, "say which one with `only`"),
    ({"name": "x", "ecosystem": "{base}/missing.json"}, "does not exist"),
    ({"name": "all", "state": "absent"}, "pm2 reads it as every process"),
    ({"name": "7", "state": "absent"}, "pm2 reads it as every process or a process id"),
    ({"name": "x", "script": "/srv/a.js", "instances": "lots"}, "instances must be a number"),
    ({"name": "x", "script": "/srv/a.js", "instances": 100000}, "more than 256"),
    ({"name": "x", "script": "/srv/a.js", "env": {"BAD-KEY": "1"}}, "not a valid variable name"),
    ({"name": "x", "script": "/srv/a.js", "health": {"url": "ftp://x"}}, "health.url must be an http"),
    ({"name": "x", "script": "/srv/a.js", "logrotate": {"max_size": "ten"}}, "logrotate.max_size must look like"),
    ({"name": "x", "script": "/srv/a.js", "instances": 2, "exec_mode": "cluster", "interpreter": "python3"},
     "needs exec_mode=fork"),
    ({"name": "x", "script": "/srv/a.js", "executable": "/nonexistent/pm2"}, "does not exist or is not executable"),
    ({"name": "x", "script": "/srv/a.js", "ecosystem": "/srv/e.json"}, "mutually exclusive"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[message for _args, message in BAD_INPUT])
def test_bad_input_says_what_is_wrong_and_changes_nothing(args, message, pm2_home, bad_files, venv_bin, ansible_env):
    args = {k: (v.format(base=bad_files) if isinstance(v, str) else v) for k, v in args.items()}
    args.setdefault("pm2_home", str(pm2_home))
    before = sorted(p.name for p in Path(pm2_home).iterdir()) if Path(pm2_home).exists() else []
    res, out, _err = _adhoc(venv_bin, ansible_env, args)
    assert res.get("failed") is True, out[-2000:]
    assert message in res["msg"], res["msg"]
    assert not res.get("changed")
    assert "Traceback" not in out
    after = sorted(p.name for p in Path(pm2_home).iterdir()) if Path(pm2_home).exists() else []
    assert [n for n in after if n.startswith("pm2_app-")] == []
    daemon_files = {"rpc.sock", "pub.sock", "pm2.pid", "pm2.log", "logs", "pids", "modules",
                    "module_conf.json", "touch", "conf.js"}
    assert set(after) <= set(before) | daemon_files


def test_pm2_not_installed(pm2_home, tmp_path, venv_bin, ansible_env):
    # A PATH with every command of /usr/bin except pm2.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for entry in Path("/usr/bin").iterdir():
        if entry.name != "pm2":
            (bindir / entry.name).symlink_to(entry)
    env = dict(ansible_env, PATH=f"{venv_bin}:{bindir}")
    res, out, _err = _adhoc(venv_bin, env, {"name": "x", "script": "/srv/a.js", "pm2_home": str(pm2_home)})
    assert res.get("failed") is True, out[-2000:]
    assert "pm2 is not installed on this host" in res["msg"] and "npm i -g pm2" in res["msg"]


def test_absent_without_daemon_starts_no_daemon(tmp_path, venv_bin, ansible_env):
    home = tmp_path / "no-daemon"
    args = {"name": "x", "state": "absent", "pm2_home": str(home)}
    res, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert res["changed"] is False and res["status"] == "absent"
    assert not (home / "pm2.pid").exists()


# ------------------------------------------------------------------ logrotate

def test_logrotate_settings_idempotent_without_install(pm2_home, app_dir, venv_bin, ansible_env):
    port = core.free_port()
    lr = {"install": False, "max_size": "10M", "retain": 7, "compress": True, "rotate_interval": "0 0 * * *"}
    args = {"name": "lr-app", "script": str(app_dir / "releases" / "v1" / "server.js"),
            "env": {"PORT": str(port)}, "pm2_home": str(pm2_home), "logrotate": lr}
    check, _out, _err = _adhoc(venv_bin, ansible_env, args, "--check", check_rc=True)
    real, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert check["logrotate"]["set"] == real["logrotate"]["set"]
    assert real["logrotate"]["set"] == {"max_size": "10M", "retain": "7", "compress": "true",
                                        "rotate_interval": "0 0 * * *"}
    conf = json.loads((pm2_home / "module_conf.json").read_text())["pm2-logrotate"]
    assert conf["max_size"] == "10M" and str(conf["retain"]) == "7" and str(conf["compress"]) == "true"
    again, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert again["changed"] is False and again["logrotate"]["set"] == {}
    # One value changes: only that one is set.
    lr["retain"] = 14
    once, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
    assert once["changed"] is True and once["logrotate"]["set"] == {"retain": "14"} and once["actions"] == []
    _adhoc(venv_bin, ansible_env, {"name": "lr-app", "state": "absent", "pm2_home": str(pm2_home)}, check_rc=True)


def test_logrotate_install_from_npm(tmp_path, venv_bin, ansible_env):
    """Installs pm2-logrotate for real (needs the npm registry, reachable on this machine)."""
    home = tmp_path / "lrhome"
    home.mkdir()
    try:
        args = {"name": "lr-only", "state": "absent", "pm2_home": str(home),
                "logrotate": {"install": True, "max_size": "5M"}}
        # state=absent with no daemon: the module still configures logrotate (which starts pm2).
        res, out, _err = _adhoc(venv_bin, ansible_env, args)
        assert res.get("failed") is not True, res.get("msg", out[-2000:])
        assert res["logrotate"]["install"] is True and res["changed"] is True
        jl = subprocess.run([PM2, "jlist"], env=_pm2_env(home), capture_output=True, text=True, timeout=60, check=False)
        assert any(p["name"] == "pm2-logrotate" for p in json.loads(jl.stdout[jl.stdout.index("["):]))
        again, _out, _err = _adhoc(venv_bin, ansible_env, args, check_rc=True)
        assert again["changed"] is False and again["logrotate"]["installed"] is True
    finally:
        subprocess.run([PM2, "kill"], env=_pm2_env(home), capture_output=True, timeout=60, check=False)
        time.sleep(0.2)
