"""Pure core of compose_rollout: planning, gate, rollback decisions, state file, with a fake backend."""

from __future__ import annotations

import json

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _compose_rollout as cr
from ansible_collections.ops.runbooks.plugins.module_utils._compose_rollout import (
    ComposeRollout,
    ComposeRolloutError,
    check_params,
    check_rolling,
    normalize_health,
    plan,
)

TARGET = {"config_hash": "h2", "image_id": "sha256:v2"}


def c(name, hash_="h1", image="sha256:v1", status="running", health="healthy", cid=None):
    return {"id": cid or f"id-{name}", "name": name, "image": "app:x", "image_id": image, "config_hash": hash_,
            "status": status, "exit_code": 0, "health": health, "networks": {"net": f"10.0.0.{len(name)}"}}


# ---------------------------------------------------------------- plan


def test_plan_noop_when_every_running_container_is_at_target():
    assert plan("app", "rolling", [c("a1", "h2", "sha256:v2")], TARGET)["action"] == "none"


def test_plan_rolling_creates_as_many_as_run_and_removes_old_and_stopped():
    existing = [c("a1"), c("a2"), c("a3", status="exited")]
    result = plan("app", "rolling", existing, TARGET)
    assert result == {"service": "app", "action": "rolling", "create": 2, "adopt": [], "remove": ["a1", "a2", "a3"],
                      "keep": []}


def test_plan_same_hash_but_new_image_id_is_a_change():
    assert plan("app", "rolling", [c("a1", "h2", "sha256:old")], TARGET)["action"] == "rolling"


def test_plan_adopts_new_containers_left_by_an_interrupted_rollout():
    result = plan("app", "rolling", [c("a1"), c("a2", "h2", "sha256:v2")], TARGET)
    assert result["action"] == "rolling" and result["create"] == 0
    assert result["adopt"] == ["a2"] and result["remove"] == ["a1"]


def test_plan_create_when_nothing_runs_and_recreate_strategy():
    assert plan("app", "rolling", [], TARGET)["action"] == "create"
    assert plan("app", "recreate", [c("a1")], TARGET)["action"] == "recreate"


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(("health", "fragment"), [
    ({"type": "http"}, "needs health.url"),
    ({"type": "http", "url": "ftp://x"}, "needs health.url"),
    ({"type": "tcp", "port": 0}, "needs health.port"),
    ({"type": "command", "command": " "}, "needs health.command"),
    ({"type": "docker", "successes": 0}, "health.successes"),
    ({"type": "docker", "interval": "soon"}, "health.interval"),
    ({"type": "docker", "expect_status": 42}, "expect_status"),
    ({"type": "ping"}, "health.type must be one of"),
])
def test_bad_health_specs(health, fragment):
    with pytest.raises(ComposeRolloutError, match=fragment.replace(".", r"\.")):
        normalize_health(health)


def test_health_defaults():
    spec = normalize_health(None)
    assert spec["type"] == "docker" and spec["successes"] == 3 and spec["soak"] == 0


def test_rolling_refuses_a_fixed_host_port_and_names_recreate():
    svc = {"ports": [{"host_ip": "127.0.0.1", "published": "8080", "target": 8080}]}
    with pytest.raises(ComposeRolloutError, match="strategy=recreate") as exc:
        check_rolling("web", svc)
    assert "127.0.0.1:8080->8080" in str(exc.value)
    check_rolling("web", {"ports": [{"host_ip": "127.0.0.1", "target": 8080}]})  # ephemeral: fine
    with pytest.raises(ComposeRolloutError, match="container_name"):
        check_rolling("web", {"container_name": "web"})


def test_check_params(tmp_path):
    good = {"strategy": "rolling", "state": "rolled_out", "services": ["app"], "project_src": str(tmp_path)}
    check_params(good)
    for bad, fragment in [({"services": []}, "at least one"), ({"project_src": "/nope"}, "not a directory"),
                          ({"env": {"1X": "y"}}, "invalid variable name"),
                          ({"project_name": "Bad Name"}, "project_name"),
                          ({"proxy": {"service": "app"}}, "also in services")]:
        with pytest.raises(ComposeRolloutError, match=fragment):
            check_params({**good, **bad})


# ---------------------------------------------------------------- state


def test_record_success_keeps_previous_and_rollback_is_idempotent():
    data = {"services": {}}
    v1 = {"image_id": "i1", "config_hash": "h1"}
    v2 = {"image_id": "i2", "config_hash": "h2"}
    data = cr.record_success(data, "app", v1, False)
    data = cr.record_success(data, "app", v2, False)
    assert data["services"]["app"] == {"current": v2, "previous": v1}
    data = cr.record_success(data, "app", v1, True)  # rolled back
    assert data["services"]["app"] == {"current": v1, "previous": v1}


def test_record_success_adopts_what_ran_before():
    data = cr.record_success({"services": {}}, "app", {"image_id": "i2", "config_hash": "h2"}, False,
                             before={"image": "app:v1", "image_id": "i1", "config_hash": "h1", "containers": ["a"]})
    assert data["services"]["app"]["previous"]["image_id"] == "i1"
    assert data["services"]["app"]["previous"]["adopted"] is True


def test_state_file_roundtrip_mode_and_corruption(tmp_path):
    cr.save_state(str(tmp_path), {"version": 1, "services": {"app": {}}})
    path = tmp_path / cr.STATE_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert cr.load_state(str(tmp_path))["services"] == {"app": {}}
    path.write_text("{not json")
    with pytest.raises(ComposeRolloutError, match="fix or delete it"):
        cr.load_state(str(tmp_path))


# ---------------------------------------------------------------- engine with a fake backend


class FakeBackend:
    """A compose project in memory: `up --scale` adds containers at the env's target."""

    def __init__(self, containers, health_of=None):
        self.containers_ = list(containers)
        self.clock = 0.0
        self.calls = []
        self.health_of = health_of or (lambda container, now: "healthy")
        self.counter = len(containers)

    def compose(self, args, env, extra_files):
        self.calls.append(("compose", tuple(args), dict(env)))
        tag = env.get("TAG", "v1")
        if args[:2] == ["config", "--format"]:
            return 0, json.dumps({"name": "p", "services": {"app": {"image": f"app:{tag}"}, "proxy": {}}}), ""
        if args[:2] == ["config", "--hash"]:
            return 0, f"app h-{tag}\n", ""
        if args[0] == "up":
            scale = int([a for a in args if a.startswith("app=")][0].split("=")[1])
            if "--force-recreate" in args:
                self.containers_ = [x for x in self.containers_ if not x["name"].startswith("app")]
            while len([x for x in self.containers_ if x["name"].startswith("app")]) < scale:
                self.counter += 1
                new = c(f"app-{self.counter}", f"h-{tag}", f"sha256:{tag}", cid=f"new{self.counter}")
                new["born"] = self.clock
                self.containers_.append(new)
            return 0, "", ""
        return 1, "", f"unexpected {args}"

    def containers(self, project, service):
        found = [dict(x) for x in self.containers_ if x["name"].startswith(service)]
        for x in found:
            x["health"] = self.health_of(x, self.clock)
        return found

    def image(self, ref):
        return {"id": "sha256:" + ref.split(":")[-1].replace("sha256", "").strip(":"), "digests": []}

    def exec(self, cid, argv, timeout):
        self.calls.append(("exec", cid, argv[-1]))
        return 0, ""

    def disconnect(self, cid):
        self.calls.append(("disconnect", cid))

    def stop(self, cid, timeout):
        self.calls.append(("stop", cid))

    def remove(self, cid, timeout):
        self.calls.append(("remove", cid))
        self.containers_ = [x for x in self.containers_ if x["id"] != cid]

    def now(self):
        return self.clock

    def sleep(self, seconds):
        self.clock += max(seconds, 0.01)


def params(tmp_path, **extra):
    base = {"project_src": str(tmp_path), "services": ["app"], "strategy": "rolling", "state": "rolled_out",
            "env": {"TAG": "v2"}, "health": {"type": "docker", "interval": 1, "successes": 2, "soak": 0},
            "drain": 1, "wait_timeout": 10, "rollback_on_failure": True, "pull": False, "project_name": None}
    base.update(extra)
    return base


def old_v1():
    return [c("app-1", "h-v1", "sha256:v1", cid="old1")]


def test_check_mode_plans_and_changes_nothing(tmp_path):
    backend = FakeBackend(old_v1())
    result = ComposeRollout(backend, params(tmp_path), check_mode=True).run()
    assert result["changed"] is True and result["plan"][0]["action"] == "rolling"
    assert not [call for call in backend.calls if call[0] != "compose" or call[1][0] == "up"]
    assert not (tmp_path / cr.STATE_FILE).exists()


def test_rolling_success_starts_new_gates_then_retires_old(tmp_path):
    backend = FakeBackend(old_v1())
    result = ComposeRollout(backend, params(tmp_path)).run()
    assert result["changed"] is True and result["rolled_back"] is False
    names = [x["name"] for x in backend.containers_]
    assert names == ["app-2"]
    kinds = [call[0] for call in backend.calls]
    assert kinds.index("disconnect") < kinds.index("remove")  # out of rotation before removal
    state = json.loads((tmp_path / cr.STATE_FILE).read_text())["services"]["app"]
    assert state["current"]["image_id"] == "sha256:v2" and state["previous"]["image_id"] == "sha256:v1"
    # second run: nothing to do
    again = ComposeRollout(backend, params(tmp_path)).run()
    assert again["changed"] is False


def test_failed_gate_removes_new_and_keeps_old(tmp_path):
    backend = FakeBackend(old_v1(), health_of=lambda x, now: "healthy" if x["id"] == "old1" else "unhealthy")
    with pytest.raises(ComposeRolloutError, match="not healthy within wait_timeout=10s") as exc:
        ComposeRollout(backend, params(tmp_path)).run()
    assert exc.value.result["rolled_back"] is True
    assert [x["id"] for x in backend.containers_] == ["old1"]
    assert ("stop", "old1") not in backend.calls and ("remove", "old1") not in backend.calls


def test_soak_failure_rolls_back(tmp_path):
    def health(x, now):
        if x["id"] == "old1":
            return "healthy"
        return "healthy" if now - x["born"] < 4 else "unhealthy"

    backend = FakeBackend(old_v1(), health_of=health)
    with pytest.raises(ComposeRolloutError, match="during the soak"):
        ComposeRollout(backend, params(tmp_path, health={"type": "docker", "interval": 1, "successes": 2,
                                                         "soak": 10})).run()
    assert [x["id"] for x in backend.containers_] == ["old1"]


def test_no_healthcheck_is_a_fatal_gate_error(tmp_path):
    backend = FakeBackend(old_v1(), health_of=lambda x, now: None)
    with pytest.raises(ComposeRolloutError, match="has no Docker HEALTHCHECK"):
        ComposeRollout(backend, params(tmp_path)).run()


def test_proxy_reloads_on_join_and_leave_and_stops_old_before_removing(tmp_path):
    backend = FakeBackend(old_v1() + [c("proxy-1", cid="px")])
    ComposeRollout(backend, params(tmp_path, proxy={"service": "proxy", "reload_command": "nginx -s reload"})).run()
    events = [(call[0], call[1]) for call in backend.calls if call[0] in ("exec", "stop", "remove")]
    assert events == [("exec", "px"), ("stop", "old1"), ("exec", "px"), ("remove", "old1")]


def test_rolled_back_goes_to_previous_then_is_a_noop(tmp_path):
    backend = FakeBackend(old_v1())
    ComposeRollout(backend, params(tmp_path)).run()
    back = ComposeRollout(backend, params(tmp_path, state="rolled_back", env=None)).run()
    assert back["changed"] is True and back["to"]["app"]["image_id"] == "sha256:v1"
    assert [x["image_id"] for x in backend.containers_] == ["sha256:v1"]
    again = ComposeRollout(backend, params(tmp_path, state="rolled_back", env=None)).run()
    assert again["changed"] is False


def test_unknown_service_and_invalid_compose(tmp_path):
    backend = FakeBackend(old_v1())
    with pytest.raises(ComposeRolloutError, match="unknown service"):
        ComposeRollout(backend, params(tmp_path, services=["nope"])).run()

    class Broken(FakeBackend):
        def compose(self, args, env, extra_files):
            return 15, "", "services.app.init must be a boolean"

    with pytest.raises(ComposeRolloutError, match="is invalid: services.app.init"):
        ComposeRollout(Broken([]), params(tmp_path)).run()


def test_recreate_failure_starts_the_recorded_release_again(tmp_path):
    backend = FakeBackend(old_v1(), health_of=lambda x, now: "unhealthy" if x["image_id"] == "sha256:v2" else "healthy")
    first = ComposeRollout(backend, params(tmp_path, env={"TAG": "v1"}, strategy="recreate")).run()
    assert first["changed"] is False  # adopted and recorded as the current release
    with pytest.raises(ComposeRolloutError, match="the previous release was started again") as exc:
        ComposeRollout(backend, params(tmp_path, strategy="recreate")).run()
    assert exc.value.result["rolled_back"] is True
    assert [x["image_id"] for x in backend.containers_] == ["sha256:v1"]


def test_recreate_failure_without_a_recorded_release_says_so(tmp_path):
    backend = FakeBackend(old_v1(), health_of=lambda x, now: "unhealthy" if x["image_id"] == "sha256:v2" else "healthy")
    with pytest.raises(ComposeRolloutError, match="not rolled back") as exc:
        ComposeRollout(backend, params(tmp_path, strategy="recreate")).run()
    assert exc.value.result["rolled_back"] is False
    assert "is not recorded" in exc.value.result["rollback_reason"]
