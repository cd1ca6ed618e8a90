"""The disaster_recovery role (ops.runbooks.dr) on dr_platform=eks: playbooks/dr_restore.yml run
from inventories/lab against host lab-eks, whose cluster is SIMULATED (tests/k8s_sim: a fake API
server + deterministic controller, no pods, no real EKS), while the database side is real: the lab
PostgreSQL, a throwaway database dreks_<hex> seeded by the lab app's schema, real backups taken by
playbooks/backup.yml into a temp dir, real restores.

The app is the Deployment opslab-api in namespace opslab whose container has DATABASE_URL as a
literal env value. Where the role checks the app over HTTP (restore: verify_app.yml at
dr_app_url), a tiny stand-in answers /api/health with the database that the simulated Deployment's
DATABASE_URL names: "the app's pods are connected to what their Deployment says".
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dr_helpers as h
import pytest

from tests.k8s_sim import FakeApiServer, deployment, write_kubeconfig
from tests.k8s_sim.ansible_run import run_module
from tests.k8s_sim.scenarios import settle_all

NS, APP, IMAGE = "opslab", "opslab-api", "registry.lab.invalid/opslab-api:v1"
DRILL = f"{APP}-dr-drill"
TOKEN = "lab-eks-dr-token-51e0"


def _env(srv, name=APP, ns=NS) -> dict:
    container = srv.get("deployments", name, ns)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _db_of(srv) -> str:
    url = _env(srv)["DATABASE_URL"]
    return url.rsplit("/", 1)[1].split("?")[0]


@pytest.fixture
def site(pg_lab, venv_bin, ansible_env, tmp_path):
    """A seeded database with one backup, and the simulated cluster running the app on it."""
    pg = pg_lab["primary"]
    db = f"dreks_{h.token()}"
    srv = FakeApiServer(seed="dr-eks", auto_tick=0.05, token=TOKEN).start()
    deployment(srv, APP, image=IMAGE, replicas=2, ns=NS, progressDeadlineSeconds=30)
    container = {
        "name": APP,
        "env": [{"name": "DATABASE_URL", "value": h.pg_url(pg, db)}, {"name": "NODE_ENV", "value": "production"}],
    }
    srv.patch("deployments", APP, {"spec": {"template": {"spec": {"containers": [container]}}}}, "strategic", NS)
    settle_all(srv)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", srv.url, token=TOKEN)
    extra = {
        "deploy_eks_kubeconfig": str(kubeconfig),
        "dr_database": db,
        "dr_backup_dir": str(tmp_path / "backups"),
        "dr_backup_pattern": f"{db}_*.dump",
        "dr_report_dir": str(tmp_path / "reports"),
        "dr_state_dir": str(tmp_path / "state"),
    }
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    site = {
        "pg": pg,
        "db": db,
        "srv": srv,
        "tmp": tmp_path,
        "extra": str(extra_file),
        "venv_bin": venv_bin,
        "env": ansible_env,
        "reports": tmp_path / "reports",
        "state": tmp_path / "state",
    }
    h.create_seeded_db(pg, db)
    try:
        proc = h.run_playbook(venv_bin, ansible_env, "playbooks/backup.yml", "-e", f"@{extra_file}")
        assert proc.returncode == 0, proc.stdout[-4000:]
        yield site
    finally:
        srv.stop()
        h.drop_prefixed(pg, db)


def _dr(site, *args: str, **kw):
    return h.run_playbook(
        site["venv_bin"],
        site["env"],
        "playbooks/dr_restore.yml",
        "--limit",
        "lab-eks",
        "-e",
        f"@{site['extra']}",
        *args,
        **kw,
    )


def _added(srv, name: str) -> list[dict]:
    """Every Deployment `name` the API server created (the store's event log)."""
    return [
        obj
        for _rv, plural, etype, obj in srv.store.events
        if plural == "deployments" and etype == "ADDED" and obj["metadata"]["name"] == name
    ]


@pytest.fixture
def app_health(site):
    """The app's /api/health as seen from the play's host: healthy, connected to the database the
    simulated Deployment's DATABASE_URL names; with `only_db` set, unhealthy on any other one."""
    state = {"only_db": None, "hits": 0}
    srv = site["srv"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            state["hits"] += 1
            db = _db_of(srv)
            ok = state["only_db"] in (None, db)
            body = {
                "status": "healthy" if ok else "unhealthy",
                "services": {
                    "database": {"status": "healthy" if ok else "unhealthy", "database": db},
                    "redis": {"status": "healthy"},
                },
            }
            data = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_drill_runs_a_copy_out_of_production_on_the_restored_database_and_removes_both(site):
    srv = site["srv"]
    before_counts = h.counts(site["pg"], site["db"])
    prod_before = srv.get("deployments", APP, NS)
    proc = _dr(site)
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and report["mode"] == "drill" and report["platform"] == "eks"
    restored = report["restored_db"]
    assert restored.startswith(site["db"] + "_dr_")
    assert report["rows_verified"] == sum(before_counts.values()) and report["tables_verified"] == 3
    assert [s["step"] for s in report["steps"]] == ["preflight", "restore", "verify_db", "start_app", "cleanup"]
    check = report["app"][0]
    assert check["ok"] and check["phase"] == "drill" and check["check"] == "rollout", check
    assert check["status"] == f'deployment "{DRILL}" successfully rolled out' and check["database"] == restored

    # the drill copy existed: 1 replica, the restored database, none of production's labels
    (copy,) = _added(srv, DRILL)
    assert copy["metadata"]["namespace"] == NS and copy["spec"]["replicas"] == 1
    labels = {"app": DRILL, "ops.runbooks/dr-drill": "true"}
    assert copy["spec"]["selector"] == {"matchLabels": labels} and copy["metadata"]["labels"] == labels
    assert copy["spec"]["template"]["metadata"]["labels"] == labels
    assert copy["metadata"]["annotations"] == {"ops.runbooks/copy-of": f"{NS}/{APP}"}
    env = {e["name"]: e["value"] for e in copy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"DATABASE_URL": h.pg_url(site["pg"], restored), "NODE_ENV": "production"}
    assert copy["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    # ...and rolled out, then was deleted; production's Deployment never changed
    deletes = [r for r in srv.requests if r[0] == "DELETE"]
    assert [r[1] for r in deletes] == [
        f"/apis/apps/v1/namespaces/{NS}/deployments/{DRILL}?propagationPolicy=Background"
    ]
    assert srv.get("deployments", DRILL, NS) is None
    assert srv.get("deployments", APP, NS)["spec"] == prod_before["spec"]
    assert not [p for p in srv.patches if p[0].endswith(f"/deployments/{APP}")]
    # no drill database, no lock; the production database untouched
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert not list(site["state"].glob("*.json"))
    assert h.counts(site["pg"], site["db"]) == before_counts


def test_drill_secrets_never_shown_at_vvv(site):
    proc = _dr(site, "-vvv")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert len(_added(site["srv"], DRILL)) == 1
    assert site["pg"]["password"] not in proc.stdout + proc.stderr


def test_check_mode_only_plans(site):
    srv = site["srv"]
    proc = _dr(site, "--check", "-e", "dr_mode=restore")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "check mode: a real restore run would restore" in " ".join(proc.stdout.split())
    assert srv.patches == [] and not [r for r in srv.requests if r[0] in ("POST", "PUT", "DELETE")]
    assert h.databases(site["pg"], site["db"] + "_") == []


def test_drill_killed_while_its_copy_rolls_out_is_cleaned_up_by_the_next_run(site):
    srv = site["srv"]
    srv.controller.enabled = False  # the copy is created but does not roll out: the run waits there
    proc = _dr(site, background=True)
    try:
        h.wait_for(lambda: srv.get("deployments", DRILL, NS), "the drill copy", timeout=300, interval=0.05)
    finally:
        h.kill_group(proc)
        srv.controller.enabled = True
    left = h.databases(site["pg"], site["db"] + "_dr_")
    assert len(left) == 1 and list(site["state"].glob("*.json")), "the killed run should have left its DB and lock"
    proc = _dr(site)
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and report["resumed"], report
    # the leftover copy was deleted before the new drill made (and removed) its own
    deletes = [r[1] for r in srv.requests if r[0] == "DELETE"]
    assert len(deletes) == 2 and len(_added(srv, DRILL)) == 2 and srv.get("deployments", DRILL, NS) is None
    assert h.databases(site["pg"], site["db"] + "_dr_") == [] and not list(site["state"].glob("*.json"))


def test_restore_switches_the_deployment_env_and_keeps_the_old_database(site, app_health):
    srv = site["srv"]
    before_counts = h.counts(site["pg"], site["db"])
    proc = _dr(site, "-e", "dr_mode=restore", "-e", f"dr_app_url={app_health['url']}", "-vvv")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert site["pg"]["password"] not in proc.stdout + proc.stderr  # the URLs set on the Deployment hold it
    report = h.latest_report(site["reports"])
    restored = report["restored_db"]
    assert report["result"] == "passed" and report["old_db"] == site["db"], report
    # the production Deployment now points at the restored database, rolled out
    assert _env(srv) == {"DATABASE_URL": h.pg_url(site["pg"], restored), "NODE_ENV": "production"}
    d = srv.get("deployments", APP, NS)
    assert d["status"]["availableReplicas"] == 2 and d["status"]["updatedReplicas"] == 2
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    phases = [(c["phase"], c["ok"]) for c in report["app"]]
    assert phases == [("rollout", True), ("switched", True)], report["app"]
    assert report["app"][1]["database"] == restored  # what the (stand-in) app reported
    # the old database kept under a new name with its data, the restored one has the same rows
    kept = h.databases(site["pg"], site["db"] + "_pre_dr_")
    assert len(kept) == 1 and h.counts(site["pg"], kept[0]) == before_counts
    assert h.counts(site["pg"], restored) == before_counts
    assert srv.get("deployments", DRILL, NS) is None and not _added(srv, DRILL)


def test_restore_without_http_relies_on_the_verified_rollout(site):
    srv = site["srv"]
    proc = _dr(site, "-e", "dr_mode=restore", "-e", "dr_verify_http=false", "-e", "dr_health_timeout=2")
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and [(c["phase"], c["ok"]) for c in report["app"]] == [("rollout", True)]
    assert _db_of(srv) == report["restored_db"]


def test_restore_whose_app_fails_verification_is_switched_back(site, app_health):
    srv = site["srv"]
    original = _env(srv)
    app_health["only_db"] = site["db"]  # the app is not healthy on the restored database
    proc = _dr(site, "-e", "dr_mode=restore", "-e", f"dr_app_url={app_health['url']}", "-e", "dr_health_timeout=2")
    assert proc.returncode != 0
    assert "every host was switched back to " + site["db"] in " ".join(proc.stdout.split()), proc.stdout[-4000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "failed" and "switched back" in report["failure"]
    assert [(c["phase"], c["ok"]) for c in report["app"]] == [
        ("rollout", True),
        ("switched", False),
        ("rollout", True),
        ("switched back", True),
    ], report["app"]
    # the Deployment is back on the original URL (a rollout back to the first ReplicaSet's template)
    assert _env(srv) == original and _db_of(srv) == site["db"]
    d = srv.get("deployments", APP, NS)
    assert d["status"]["availableReplicas"] == 2 and d["status"]["updatedReplicas"] == 2
    assert h.databases(site["pg"], site["db"] + "_pre_dr_") == []
    assert report["restored_db"] in h.databases(site["pg"], site["db"] + "_dr_")  # kept for inspection


def test_restore_whose_rollout_fails_sets_the_old_value_back(site, app_health):
    """The app crash-loops on the restored database (its pods never become ready there): the
    switch's rollout exceeds its progress deadline, eks_switch.yml sets the old value back, and
    the role switches every host back and verifies them."""
    srv = site["srv"]
    original = _env(srv)
    available = srv.controller._available

    def crash_unless_original(template):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0].get("env") or []}
        return available(template) and env.get("DATABASE_URL") == original["DATABASE_URL"]

    srv.controller._available = crash_unless_original
    proc = _dr(site, "-e", "dr_mode=restore", "-e", f"dr_app_url={app_health['url']}")
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert (
        f'did not take the new DATABASE_URL: switching {APP} failed: deployment "{APP}" exceeded its progress '
        "deadline" in text
    ), text[-4000:]
    assert "The old value was set back" in text and "every host was switched back to " + site["db"] in text
    report = h.latest_report(site["reports"])
    assert report["result"] == "failed"
    assert [(c["phase"], c["ok"]) for c in report["app"]] == [
        ("rollout", False),
        ("rollout", True),
        ("switched back", True),
    ], report["app"]
    assert _env(srv) == original
    d = srv.get("deployments", APP, NS)
    assert d["status"]["availableReplicas"] == 2 and d["status"].get("replicas") == 2
    assert h.databases(site["pg"], site["db"] + "_pre_dr_") == []


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            {"deploy_app_name": "no-such-app"},
            'Cannot read the Deployment opslab/no-such-app: deployments.apps "no-such-app" not found in '
            "namespace opslab",
        ),
        ({"dr_app_env_var": "REDIS_URL"}, f"Container {APP} of the Deployment {APP} has no env variable REDIS_URL"),
        ({"deploy_eks_container": "sidecar"}, f"The Deployment {APP} has no container sidecar (its containers: {APP})"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(site, extra, needle):
    srv = site["srv"]
    prod_before = srv.get("deployments", APP, NS)
    proc = _dr(site, "-e", json.dumps(extra))
    assert proc.returncode != 0
    assert needle in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert srv.get("deployments", APP, NS) == prod_before and not _added(srv, DRILL)
    assert srv.patches == [] and not [r for r in srv.requests if r[0] in ("POST", "PUT")]
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert not list(site["state"].glob("*.json")), "the lock was left behind"


def test_database_url_from_a_secret_is_refused(site):
    srv = site["srv"]
    ref = {"secretKeyRef": {"name": "opslab-db", "key": "url"}}
    d = srv.get("deployments", APP, NS)
    d["spec"]["template"]["spec"]["containers"][0]["env"][0] = {"name": "DATABASE_URL", "valueFrom": ref}
    srv.patch(
        "deployments", APP, [{"op": "replace", "path": "/spec/template", "value": d["spec"]["template"]}], "json", NS
    )
    settle_all(srv)
    before = srv.get("deployments", APP, NS)
    proc = _dr(site, "-e", "dr_mode=restore", "-e", "dr_app_url=http://127.0.0.1:9")
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert (
        "DATABASE_URL of container opslab-api comes from secretKeyRef (opslab-db): the DR role can only switch "
        "literal env values in this version" in text
    ), text[-3000:]
    assert srv.get("deployments", APP, NS)["spec"] == before["spec"]
    assert h.databases(site["pg"], site["db"] + "_pre_dr_") == []


# ---- the k8s_rollback actions the eks platform uses, through Ansible (no database needed) ------


@pytest.fixture
def sim(tmp_path):
    srv = FakeApiServer(seed="dr-eks-module", auto_tick=0.05, token=TOKEN).start()
    deployment(srv, APP, image=IMAGE, replicas=2, ns=NS)
    deployment(srv, "other", image="other:v1", replicas=1, ns=NS)
    container = {"name": APP, "env": [{"name": "DATABASE_URL", "value": "postgresql://app:s3cret-9f2@db/app"}]}
    srv.patch("deployments", APP, {"spec": {"template": {"spec": {"containers": [container]}}}}, "strategic", NS)
    settle_all(srv)
    srv.kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", srv.url, token=TOKEN))
    yield srv
    srv.stop()


def _copy_args(srv, **kw) -> dict:
    args = {
        "kubeconfig": srv.kubeconfig,
        "namespace": NS,
        "name": APP,
        "action": "copy",
        "copy_name": DRILL,
        "copy_labels": {"app": DRILL},
        "env": {"DATABASE_URL": "postgresql://app:s3cret-9f2@db/app_dr_1"},
        "wait_timeout": 60,
    }
    args.update(kw)
    return {k: v for k, v in args.items() if v is not None}


def test_copy_and_delete_copy_check_mode_real_and_again(sim, venv_bin, ansible_env):
    prod = sim.get("deployments", APP, NS)
    check, _unused = run_module(venv_bin, ansible_env, _copy_args(sim), check=True)
    assert check["changed"] and not check.get("failed") and sim.get("deployments", DRILL, NS) is None, check
    real, _unused = run_module(venv_bin, ansible_env, _copy_args(sim))
    assert real["changed"] and real["definition"] == check["definition"], real
    assert real["rollout"]["done"] and real["msg"] == f"deployment.apps/{DRILL} created"
    copy = sim.get("deployments", DRILL, NS)
    assert copy["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "DATABASE_URL", "value": "postgresql://app:s3cret-9f2@db/app_dr_1"}
    ]
    assert copy["status"]["availableReplicas"] == 1 and copy["spec"]["selector"] == {"matchLabels": {"app": DRILL}}
    again, _unused = run_module(venv_bin, ansible_env, _copy_args(sim))
    assert not again["changed"] and again["msg"] == f"deployment.apps/{DRILL} already up to date", again
    assert sim.get("deployments", APP, NS)["spec"] == prod["spec"]

    status, _unused = run_module(
        venv_bin,
        ansible_env,
        {
            "kubeconfig": sim.kubeconfig,
            "namespace": NS,
            "name": APP,
            "action": "status",
            "wait": False,
            "return_env": True,
        },
    )
    assert status["env"] == {APP: [{"name": "DATABASE_URL", "value": "postgresql://app:s3cret-9f2@db/app"}]}
    assert not status["changed"]

    delete = {"kubeconfig": sim.kubeconfig, "namespace": NS, "name": APP, "action": "delete_copy", "copy_name": DRILL}
    dcheck, _unused = run_module(venv_bin, ansible_env, delete, check=True)
    assert dcheck["changed"] and sim.get("deployments", DRILL, NS) is not None
    dreal, _unused = run_module(venv_bin, ansible_env, delete)
    assert dreal["changed"] and sim.get("deployments", DRILL, NS) is None, dreal
    dagain, _unused = run_module(venv_bin, ansible_env, delete)
    assert not dagain["changed"] and dagain["msg"] == f'deployment.apps "{DRILL}" already absent'


@pytest.mark.parametrize(
    "args, needle",
    [
        ({"copy_labels": {"app": APP}}, f"share no label with the pods of Deployment {NS}/{APP} (shared: app={APP})"),
        ({"copy_labels": {"app": 5}}, "copy_labels must be valid Kubernetes labels"),
        ({"copy_labels": {"app": "x" * 64}}, "copy_labels must be valid Kubernetes labels"),
        ({"copy_name": "Drill_Copy"}, "copy_name must be a Kubernetes name"),
        ({"copy_name": APP}, f"copy_name {APP} is the Deployment itself"),
        ({"copy_name": "other"}, f"Deployment {NS}/other exists and is not a copy of Deployment {NS}/{APP}"),
        ({"copy_labels": None}, "action is copy but all of the following are missing: copy_labels"),
        ({"kind": "StatefulSet"}, "action=copy works on a Deployment only, not a StatefulSet"),
        ({"action": "set"}, "copy_name, copy_namespace and copy_labels only apply to action=copy and delete_copy"),
        (
            {"action": "delete_copy", "copy_labels": None, "env": None, "copy_name": "other"},
            f"Deployment {NS}/other is not a copy of Deployment {NS}/{APP}",
        ),
        (
            {"action": "set", "copy_name": None, "copy_labels": None, "return_env": True},
            "return_env only applies to action=status",
        ),
        ({"name": "missing"}, f'deployments.apps "missing" not found in namespace {NS}'),
        ({"kubeconfig": None, "host": "http://127.0.0.1:9"}, "cannot reach the API server"),
    ],
)
def test_copy_bad_input_fails_clearly_and_changes_nothing(sim, venv_bin, ansible_env, args, needle):
    before = {n: sim.get("deployments", n, NS) for n in (APP, "other")}
    res, proc = run_module(venv_bin, ansible_env, _copy_args(sim, **args))
    assert res.get("failed") and needle in res["msg"], res.get("msg")
    assert "Traceback" not in proc.stdout + proc.stderr and not res.get("changed")
    assert {n: sim.get("deployments", n, NS) for n in (APP, "other")} == before
    assert sim.get("deployments", DRILL, NS) is None and sim.patches == []
    assert not [r for r in sim.requests if r[0] in ("POST", "PUT", "DELETE")]
