"""Unit tests of the pure pm2_app core: jlist parsing, desired state, plan, logrotate, health."""

from __future__ import annotations

import json

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _pm2
from ansible_collections.ops.runbooks.plugins.module_utils._pm2 import (
    ENV_KEYS_MARKER,
    Pm2App,
    Pm2Error,
    desired_app,
    health_check,
    logrotate_desired,
    logrotate_plan,
    parse_jlist,
    plan,
    resolve_instances,
    running_app,
)

SCRIPT = "/srv/app/current/server.js"


def proc(pm_id, name="web", status="online", mode="cluster_mode", env=None, args=None, script=SCRIPT,
         cwd="/srv/app/current", pid=None, restarts=0):
    env = dict(env or {})
    pm2_env = {"status": status, "exec_mode": mode, "pm_exec_path": script, "pm_cwd": cwd,
               "args": args or [], "exec_interpreter": "node", "restart_time": restarts,
               "env": dict(env), "PATH": "/usr/bin", "axm_actions": [], **env}
    return {"name": name, "pm_id": pm_id, "pid": pid or 1000 + pm_id, "pm2_env": pm2_env}


def managed(env):
    return dict(env, **{ENV_KEYS_MARKER: ",".join(sorted(env))})


def desired(**overrides):
    params = {"name": "web", "state": "started", "script": SCRIPT, "cwd": "/srv/app/current",
              "instances": 2, "exec_mode": "cluster", "env": {"PORT": "3000", "KEY": "a"}}
    params.update(overrides)
    return desired_app(params, cpus=4)


def running(env=None, n=2, **kw):
    env = {"PORT": "3000", "KEY": "a"} if env is None else env
    return running_app([proc(i, env=managed(env), **kw) for i in range(n)], "web")


# ------------------------------------------------------------------ parsing

def test_parse_jlist_skips_banners_and_warnings():
    text = "[PM2][WARN] something\nIn-memory PM2 is out-of-date\n" + json.dumps([proc(0)])
    assert parse_jlist(text)[0]["name"] == "web"


def test_parse_jlist_plain_and_empty():
    assert parse_jlist("[]") == []
    assert len(parse_jlist(json.dumps([proc(0), proc(1)]))) == 2


def test_parse_jlist_garbage_raises():
    with pytest.raises(Pm2Error, match="printed no JSON process list"):
        parse_jlist("pm2: command failed")


def test_running_app_summary_and_marker():
    app = running()
    assert app["instances"] == 2 and app["exec_mode"] == "cluster" and app["script"] == SCRIPT
    assert app["managed_env_keys"] == ["KEY", "PORT"]
    assert app["env"]["KEY"] == "a" and app["env"]["PATH"] == "/usr/bin"
    assert [p["pm_id"] for p in app["processes"]] == [0, 1]


def test_running_app_not_started_by_us_has_no_marker():
    app = running_app([proc(0, env={"A": "1"})], "web")
    assert app["managed_env_keys"] is None


def test_running_app_other_names_ignored():
    assert running_app([proc(0, name="other")], "web") is None


# ------------------------------------------------------------------ desired

@pytest.mark.parametrize("value,expected", [(1, 1), ("3", 3), ("max", 4), (0, 4), (-1, 3), (-10, 1)])
def test_resolve_instances(value, expected):
    assert resolve_instances(value, cpus=4) == expected


@pytest.mark.parametrize("value,message", [("lots", "must be a number"), (1000, "more than 256")])
def test_resolve_instances_bad(value, message):
    with pytest.raises(Pm2Error, match=message):
        resolve_instances(value, cpus=4)


@pytest.mark.parametrize("name", ["all", "ALL", "0", "12"])
def test_dangerous_names_refused(name):
    with pytest.raises(Pm2Error, match="pm2 reads it as every process"):
        desired(name=name)


@pytest.mark.parametrize("name", ["", "has space", "a/b", None])
def test_bad_names_refused(name):
    with pytest.raises(Pm2Error, match="name must be"):
        desired(name=name)


def test_desired_defaults_and_marker():
    want = desired_app({"name": "w", "state": "started", "script": "/a/s.js"}, cpus=2)
    assert want["cwd"] == "/a" and want["instances"] == 1 and want["exec_mode"] == "fork"
    assert want["config"]["env"] == {ENV_KEYS_MARKER: ""}
    many = desired_app({"name": "w", "state": "started", "script": "/a/s.js", "instances": 2}, cpus=2)
    assert many["exec_mode"] == "cluster"


def test_desired_relative_script_needs_cwd():
    with pytest.raises(Pm2Error, match="is relative"):
        desired_app({"name": "w", "state": "started", "script": "s.js"})
    want = desired_app({"name": "w", "state": "started", "script": "s.js", "cwd": "/x"})
    assert want["script"] == "/x/s.js"


def test_desired_from_ecosystem_options_win_env_merged():
    eco = {"name": "web", "script": "server.js", "instances": 4, "exec_mode": "cluster",
           "wait_ready": True, "env": {"A": "1", "B": "2"}}
    want = desired_app({"name": "web", "state": "started", "instances": 2, "env": {"B": "x"}},
                       eco, "/srv/eco", cpus=8)
    assert want["script"] == "/srv/eco/server.js" and want["cwd"] == "/srv/eco"
    assert want["instances"] == 2 and want["env"] == {"A": "1", "B": "x"}
    assert want["config"]["wait_ready"] is True
    assert want["config"]["env"][ENV_KEYS_MARKER] == "A,B"


@pytest.mark.parametrize("env,message", [
    ({"BAD-KEY": "1"}, "not a valid variable name"),
    ({ENV_KEYS_MARKER: "x"}, "is reserved"),
    ({"A": {"nested": 1}}, "must be a string or number"),
    ("A=1", "must be a dict"),
])
def test_bad_env(env, message):
    with pytest.raises(Pm2Error, match=message):
        desired(env=env)


def test_env_values_stringified():
    assert desired(env={"N": 3, "B": True, "E": None})["env"] == {"N": "3", "B": "true", "E": ""}


def test_cluster_with_foreign_interpreter_refused():
    with pytest.raises(Pm2Error, match="needs exec_mode=fork"):
        desired(interpreter="python3")


# ------------------------------------------------------------------ plan

def test_plan_start_when_absent():
    assert plan(desired(), None)["actions"] == ["start"]


def test_plan_nothing_when_matching():
    out = plan(desired(), running())
    assert out == {"actions": [], "reasons": [], "changes": {}}


def test_plan_env_value_changed_cluster_reload():
    out = plan(desired(env={"PORT": "3000", "KEY": "b"}), running())
    assert out["actions"] == ["reload"] and out["changes"] == {"env_changed": ["KEY"]}
    assert "zero-downtime" in out["reasons"][0]
    assert "b" not in json.dumps(out["changes"])


def test_plan_env_value_changed_fork_restart():
    out = plan(desired(env={"PORT": "3000", "KEY": "b"}, exec_mode="fork", instances=1),
               running(n=1, mode="fork_mode"))
    assert out["actions"] == ["restart"] and "fork mode" in out["reasons"][0]


def test_plan_env_key_added_is_a_reload():
    out = plan(desired(env={"PORT": "3000", "KEY": "a", "NEW": "1"}), running())
    assert out["actions"] == ["reload"] and out["changes"]["env_changed"] == ["NEW"]


def test_plan_env_key_removed_is_delete_start():
    out = plan(desired(env={"PORT": "3000"}), running())
    assert out["actions"] == ["delete", "start"] and out["changes"]["env_removed"] == ["KEY"]
    assert "3192" in out["reasons"][0]


def test_plan_removed_key_unknown_without_marker():
    app = running_app([proc(i, env={"PORT": "3000", "KEY": "a"}) for i in range(2)], "web")
    assert plan(desired(env={"PORT": "3000"}), app)["actions"] == []


@pytest.mark.parametrize("field,value", [("script", "/srv/other/server.js"), ("cwd", "/srv/other"),
                                         ("exec_mode", "fork")])
def test_plan_fixed_fields_need_delete_start(field, value):
    out = plan(desired(**{field: value}), running())
    assert out["actions"] == ["delete", "start"] and field in out["changes"]


def test_plan_args_reload_and_instances_scale():
    out = plan(desired(args="--port 1 --x", instances=3), running())
    assert out["actions"] == ["reload", "scale"]
    assert out["changes"]["args"] == [[], ["--port", "1", "--x"]] and out["changes"]["instances"] == [2, 3]


def test_plan_scale_down_only():
    assert plan(desired(instances=1), running())["actions"] == ["scale"]


def test_plan_delete_start_wins_over_scale():
    assert plan(desired(script="/x/y.js", instances=4), running())["actions"] == ["delete", "start"]


def test_plan_errored_instance_is_restarted():
    app = running_app([proc(0, env=managed({"PORT": "3000", "KEY": "a"})),
                       proc(1, status="errored", env=managed({"PORT": "3000", "KEY": "a"}))], "web")
    out = plan(desired(), app)
    assert out["actions"] == ["restart"] and "1 of 2 instances not online (errored)" in out["reasons"][0]


@pytest.mark.parametrize("state,verb", [("restarted", "restart"), ("reloaded", "reload")])
def test_plan_forced_verbs(state, verb):
    assert plan(desired(state=state), running())["actions"] == [verb]


def test_plan_forced_verb_with_drift_uses_drift_action():
    assert plan(desired(state="reloaded", script="/x/y.js"), running())["actions"] == ["delete", "start"]


def test_plan_name_only_operations():
    want = desired_app({"name": "web", "state": "reloaded"})
    assert plan(want, running())["actions"] == ["reload"]
    with pytest.raises(Pm2Error, match="neither script nor ecosystem"):
        plan(desired_app({"name": "web", "state": "started"}), None)


def test_plan_stopped_and_absent():
    assert plan(desired(state="stopped"), running())["actions"] == ["stop"]
    assert plan(desired(state="stopped"), running(status="stopped"))["actions"] == []
    assert plan(desired(state="stopped"), None)["actions"] == []
    assert plan(desired(state="absent"), running())["actions"] == ["delete"]
    assert plan(desired(state="absent"), None)["actions"] == []


# ------------------------------------------------------------------ logrotate

def test_logrotate_desired_normalises():
    assert logrotate_desired({"install": False, "max_size": "10m", "retain": 7, "compress": True,
                              "rotate_interval": "0 0 * * *"}) == {
        "max_size": "10M", "retain": "7", "compress": "true", "rotate_interval": "0 0 * * *"}


@pytest.mark.parametrize("options,message", [
    ({"max_size": "ten"}, "max_size must look like"),
    ({"retain": "x"}, "retain must be"),
    ({"compress": "yes"}, "compress must be true or false"),
    ({"rotate_interval": "daily"}, "cron expression"),
    ({"colour": "red"}, "logrotate.colour is unknown"),
])
def test_logrotate_bad(options, message):
    with pytest.raises(Pm2Error, match=message):
        logrotate_desired(options)


def test_logrotate_plan_only_differences():
    want = {"max_size": "10M", "retain": "7", "compress": "true"}
    assert logrotate_plan(want, {"max_size": "10M", "retain": 7, "compress": True}, True, True) == {
        "install": False, "set": {}}
    assert logrotate_plan(want, {"max_size": "1M"}, False, False) == {
        "install": False, "set": {"max_size": "10M", "retain": "7", "compress": "true"}}
    assert logrotate_plan({}, {}, False, True)["install"] is True


# ------------------------------------------------------------------ health

def fake_http(answers):
    answers = list(answers)

    def get(url, timeout):
        item = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(item, Exception):
            raise item
        return item
    return get


def test_health_ok_after_retries():
    get = fake_http([ConnectionRefusedError("refused"), (502, ""), (200, '{"status": "healthy"}')])
    out = health_check(get, "http://x/health", retries=5, delay=0, sleep=lambda s: None)
    assert out["ok"] and out["attempts"] == 3


def test_health_never_healthy():
    out = health_check(fake_http([(503, '{"status": "unhealthy"}')]), "http://x/h", retries=2, delay=0,
                       sleep=lambda s: None)
    assert not out["ok"] and out["attempts"] == 3 and out["detail"] == "HTTP 503"


def test_health_200_with_unhealthy_body_fails():
    out = health_check(fake_http([(200, '{"status": "degraded"}')]), "http://x/h", retries=0, sleep=lambda s: None)
    assert not out["ok"] and "degraded" in out["detail"]


def test_health_200_alive_and_non_json_pass():
    assert health_check(fake_http([(200, '{"status": "alive"}')]), "u", retries=0)["ok"]
    assert health_check(fake_http([(200, "OK")]), "u", retries=0)["ok"]


def test_health_connection_error_detail():
    out = health_check(fake_http([OSError("boom")]), "u", retries=0)
    assert not out["ok"] and "OSError: boom" in out["detail"]


# ------------------------------------------------------------------ run() with a fake pm2

class FakePm2:
    """Just enough of pm2 for run(): a process table and the verbs pm2_app uses."""

    def __init__(self, home, procs=None):
        self.home = home
        self.procs = procs or []
        self.calls = []
        (home / "rpc.sock").write_text("")

    def __call__(self, argv, env=None):
        verb = argv[1]
        self.calls.append(argv[1:])
        if verb == "jlist":
            return 0, "[PM2] banner\n" + json.dumps(self.procs), ""
        if verb in ("start", "reload", "restart"):
            app = json.loads(open(argv[2]).read())["apps"][0]
            mode = app["exec_mode"] + "_mode"
            self.procs = [proc(i, name=app["name"], env=app["env"], args=app["args"], script=app["script"],
                               cwd=app["cwd"], mode=mode, pid=5000 + len(self.calls) * 10 + i)
                          for i in range(app["instances"])]
            return 0, "", ""
        if verb == "delete":
            self.procs = []
        return 0, "", ""


def test_run_check_mode_equals_real_and_second_run_is_unchanged(tmp_path):
    fake = FakePm2(tmp_path)
    app = Pm2App(fake, "pm2", str(tmp_path), http_get=fake_http([(200, "{}")]), sleep=lambda s: None)
    params = {"name": "web", "state": "started", "script": SCRIPT, "instances": 2, "env": {"K": "secret-v"},
              "health": {"url": "http://x/h", "retries": 1, "delay": 0}}
    check = _pm2.run(app, params, check_mode=True)
    assert fake.calls and all(c == ["jlist"] for c in fake.calls)  # check mode only looked
    real = _pm2.run(app, params)
    for key in ("changed", "actions", "reasons", "changes"):
        assert check[key] == real[key]
    assert real["health"]["ok"] and real["instances"] == 2
    assert "secret-v" not in json.dumps(real)
    again = _pm2.run(app, params)
    assert again["changed"] is False and again["actions"] == []


def test_run_health_failure_raises_with_partial_result(tmp_path):
    fake = FakePm2(tmp_path)
    app = Pm2App(fake, "pm2", str(tmp_path), http_get=fake_http([(503, "")]), sleep=lambda s: None)
    params = {"name": "web", "state": "started", "script": SCRIPT,
              "health": {"url": "http://x/h", "retries": 1, "delay": 0}}
    with pytest.raises(Pm2Error) as err:
        _pm2.run(app, params)
    assert "not healthy after start" in err.value.msg and err.value.result["actions"] == ["start"]


def test_run_without_daemon_never_calls_pm2(tmp_path):
    calls = []
    app = Pm2App(lambda argv, env=None: calls.append(argv) or (0, "[]", ""), "pm2", str(tmp_path / "none"))
    out = _pm2.run(app, {"name": "web", "state": "absent"})
    assert out["changed"] is False and calls == []


def test_run_pm2_failure_message(tmp_path):
    def runner(argv, env=None):
        if argv[1] == "jlist":
            return 0, "[]", ""
        return 1, "", "[PM2][ERROR] Script not found: /srv/app/current/server.js"
    (tmp_path / "rpc.sock").write_text("")
    app = Pm2App(runner, "pm2", str(tmp_path))
    with pytest.raises(Pm2Error, match="`pm2 start .*` failed \\(rc=1\\): .*Script not found"):
        _pm2.run(app, {"name": "web", "state": "started", "script": SCRIPT})
