"""The disaster_recovery role (ops.runbooks.dr) on a lab droplet: playbooks/dr_restore.yml in
drill and restore mode, with their failure paths, against the real lab PostgreSQL, the lab app
under pm2 behind nginx on ops-lab-droplet2 (reached over SSH) and real backups.

Isolation: the app is deployed as `opslab-dr` in /var/www/opslab-dr on droplet2 (the deploy
tests use droplet1) against a throwaway database drt_<hex> seeded by the app's schema; backups,
reports and the lock live in a temp dir. Everything is removed afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import dr_helpers as h
import pytest

from lab import droplets

HOST = "ops-lab-droplet2"
APP = "opslab-dr"
BASE = "/var/www/opslab-dr"


@pytest.fixture(scope="module")
def site(lab_state, pg_lab, redis_lab, droplets_lab, venv_bin, ansible_env, tmp_path_factory):
    """droplet2 running the app v1 against a fresh seeded database, one backup of it taken."""
    droplets.release_archives()
    pg = pg_lab["primary"]
    rd = redis_lab["standalone"]
    db = f"drt_{h.token()}"
    tmp = tmp_path_factory.mktemp("dr-droplet")
    host = [x for x in droplets_lab["hosts"] if x["name"] == HOST][0]
    key = droplets_lab["key"]
    drill_port = __import__("lab.core", fromlist=["free_port"]).free_port()
    extra = {
        "deploy_app_name": APP,
        "deploy_droplet_base_dir": BASE,
        "deploy_droplet_env": {
            "NODE_ENV": "production",
            "PORT": str(host["app_port"]),
            "DATABASE_URL": h.pg_url(pg, db),
            "REDIS_URL": h.redis_url(rd),
        },
        **h.dr_vars(db, tmp, drill_port),
    }
    extra_file = tmp / "extra.json"
    extra_file.write_text(json.dumps(extra))
    site = {"pg": pg, "db": db, "tmp": tmp, "host": host, "key": key, "extra": str(extra_file),
            "url": f"http://127.0.0.1:{host['nginx_port']}", "venv_bin": venv_bin, "env": ansible_env,
            "reports": tmp / "reports", "state": tmp / "state"}
    _clean(site)
    h.create_seeded_db(pg, db)
    try:
        proc = _play(site, "playbooks/deploy.yml", "-e", "deploy_version=v1")
        assert proc.returncode == 0, proc.stdout[-4000:]
        _backup(site)
        yield site
    finally:
        _clean(site)
        h.drop_prefixed(pg, db)


def _clean(site) -> None:
    h.ssh(site["host"], site["key"], f"pm2 delete {APP} >/dev/null 2>&1; pm2 delete {APP}-dr-drill >/dev/null 2>&1; "
          f"pm2 save --force >/dev/null 2>&1; sudo rm -rf {BASE}", check=False)


def _play(site, playbook: str, *args: str, env: dict | None = None, **kw):
    return h.run_playbook(site["venv_bin"], env or site["env"], playbook, "--limit", HOST, "-e", f"@{site['extra']}",
                          *args, **kw)


def _backup(site) -> None:
    proc = h.run_playbook(site["venv_bin"], site["env"], "playbooks/backup.yml", "-e", f"@{site['extra']}")
    assert proc.returncode == 0, proc.stdout[-4000:]


def _dr(site, *args: str, **kw):
    return _play(site, "playbooks/dr_restore.yml", *args, **kw)


def _health(site) -> dict:
    status, body = h.http_json(site["url"] + "/api/health")
    assert body is not None, f"no health answer from {site['url']} (HTTP {status})"
    return body


def _pm2_names(site) -> list[str]:
    out = h.ssh(site["host"], site["key"], "pm2 jlist").stdout
    return [p["name"] for p in json.loads(out[out.index("["):])]


def test_drill_restores_into_a_new_database_verifies_and_removes_it(site):
    before = h.counts(site["pg"], site["db"])
    smoke = {"dr_smoke_queries": [{"name": "customers", "sql": "SELECT count(*) FROM customers", "min_value": 1}]}
    proc = _dr(site, "-e", json.dumps(smoke), env=dict(site["env"], ANSIBLE_SHOW_CUSTOM_STATS="1"))
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and report["mode"] == "drill"
    assert report["restored_db"].startswith(site["db"] + "_dr_")
    assert report["rows_verified"] == sum(before.values()) and report["tables_verified"] == 3
    app = report["app"][0]
    assert app["ok"] and app["database"] == report["restored_db"], app
    assert report["rto_seconds"] > 0 and report["rpo_seconds"] >= 0
    assert [s["step"] for s in report["steps"]] == ["preflight", "restore", "verify_db", "start_app", "cleanup"]
    md = Path(str(site["reports"])).glob("*.md")
    assert any("PASSED" in p.read_text() for p in md)
    # cleaned up: no drill database, no drill instance, no lock; production untouched
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert f"{APP}-dr-drill" not in _pm2_names(site)
    assert not list(site["state"].glob("*.json"))
    assert h.counts(site["pg"], site["db"]) == before
    assert _health(site)["services"]["database"]["database"] == site["db"]
    stats = proc.stdout[proc.stdout.index("CUSTOM STATS"):]  # published with set_stats for AWX
    assert "dr_report" in stats and report["run_id"] in stats


def test_failed_smoke_queries_fail_the_drill_read_only_and_clean_up(site):
    before = h.counts(site["pg"], site["db"])
    smoke = {"dr_smoke_queries": [
        {"name": "customers", "sql": "SELECT count(*) FROM customers", "min_value": 1e9},
        {"name": "sneaky", "sql": "DELETE FROM orders RETURNING 1"},
    ]}
    proc = _dr(site, "-e", json.dumps(smoke))
    assert proc.returncode != 0
    assert "smoke queries failed: customers: 500 < min_value 1000000000.0" in proc.stdout, proc.stdout[-4000:]
    assert "cannot execute DELETE in a read-only transaction" in proc.stdout
    assert h.latest_report(site["reports"])["result"] == "failed"
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert f"{APP}-dr-drill" not in _pm2_names(site)
    assert h.counts(site["pg"], site["db"]) == before


@pytest.fixture
def tiny_tablespace(site):
    """A tablespace on a 2 MiB tmpfs on the lab's PostgreSQL: a restore target that is out of disk."""
    import subprocess

    name = f"drt_ts_{h.token()}"
    path = Path(f"/tmp/{name}")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(path)], check=True)
    try:
        subprocess.run(["chown", "postgres:postgres", str(path)], check=True)
        with h.admin(site["pg"]) as conn:
            conn.execute(f"CREATE TABLESPACE {name} LOCATION '{path}'")
        yield name
    finally:
        with h.admin(site["pg"]) as conn:
            conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", str(path)], check=False)
        path.rmdir()


def test_restore_target_out_of_disk_fails_before_or_cleanly(site, tiny_tablespace):
    before = h.databases(site["pg"], site["db"])
    # the preflight sees that the backed-up database does not fit: nothing is created
    proc = _dr(site, "-e", f"dr_restore_tablespace={tiny_tablespace}")
    assert proc.returncode != 0
    assert "free" in proc.stdout and tiny_tablespace in proc.stdout, proc.stdout[-4000:]
    assert "Traceback" not in proc.stdout
    assert h.databases(site["pg"], site["db"]) == before
    # told the estimate is tiny, the restore itself runs out of disk: a clean failure, nothing left
    proc = _dr(site, "-e", f"dr_restore_tablespace={tiny_tablespace}", "-e", "dr_space_factor=0.0001")
    assert proc.returncode != 0
    assert "None of the 1 newest backups passed verification" in proc.stdout, proc.stdout[-4000:]
    assert h.databases(site["pg"], site["db"]) == before
    assert not list(site["state"].glob("*.json"))
    assert h.latest_report(site["reports"])["result"] == "failed"


def test_check_mode_only_plans(site):
    proc = _dr(site, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "check mode: a real drill run would restore" in proc.stdout
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert f"{APP}-dr-drill" not in _pm2_names(site)


def test_secrets_never_shown_at_vvv(site):
    proc = _dr(site, "-vvv")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert site["pg"]["password"] not in proc.stdout + proc.stderr


@pytest.mark.parametrize("extra, needle", [
    ({"dr_platform": "mainframe"}, "value of dr_platform must be one of: droplet, compose, eks, got: mainframe"),
    ({"dr_mode": "yolo"}, "value of dr_mode must be one of: drill, restore, promote, got: yolo"),
    ({"dr_restore_jobs": "many"}, "dr_restore_jobs"),
    ({"dr_restore_jobs": 0}, "dr_backup_candidates and dr_restore_jobs >= 1"),
    ({"dr_database": "Robert'); DROP TABLE"}, "plain lower-case database name"),
    ({"dr_rpo_target": "soon"}, "durations like"),
    ({"dr_backup_pattern": "nothing-matches-*.dump"}, "No backup matching"),
])
def test_bad_input_fails_before_touching_anything(site, extra, needle):
    before = h.databases(site["pg"], site["db"])
    proc = _dr(site, "-e", json.dumps(extra))
    assert proc.returncode != 0
    assert needle in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert h.databases(site["pg"], site["db"]) == before
    assert not list(site["state"].glob("*.json")), "the lock was left behind"


def test_backup_older_than_rpo_is_refused_unless_allowed(site):
    time.sleep(2.2)
    proc = _dr(site, "-e", "dr_rpo_target=1s")
    assert proc.returncode != 0
    assert "more than the RPO target 1s" in proc.stdout and "Nothing was touched" in proc.stdout
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    report = h.latest_report(site["reports"])
    assert report["result"] == "failed" and report["restored_db"] == ""
    # allowed: the drill runs, and the report (and the play) show the missed RPO
    proc = _dr(site, "-e", "dr_rpo_target=1s", "-e", "dr_allow_stale_backup=true")
    assert proc.returncode != 0, "a missed target must fail the play by default"
    assert "missed its targets: RPO" in proc.stdout
    report = h.latest_report(site["reports"])
    assert report["result"] == "passed" and any(m.startswith("RPO") for m in report["targets_missed"])
    proc = _dr(site, "-e", "dr_rpo_target=1s", "-e", "dr_allow_stale_backup=true", "-e", "dr_fail_on_targets=false")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert h.databases(site["pg"], site["db"] + "_dr_") == []


def test_a_second_run_cannot_overlap(site):
    first = _dr(site, "-e", "dr_health_timeout=60", "-e", json.dumps({"dr_verify_urls": [{"path": "/api/health"}]}),
                background=True)
    try:
        h.wait_for(lambda: list(site["state"].glob("*.json")), "the first run's lock", timeout=60)
        second = _dr(site)
        assert second.returncode != 0
        assert "another DR run is in progress" in second.stdout, second.stdout[-3000:]
    finally:
        out, _unused = first.communicate(timeout=300)
    assert first.returncode == 0, out[-4000:]


def test_drill_killed_mid_run_is_cleaned_up_by_the_next_run(site):
    proc = _dr(site, background=True)
    try:
        # the restore has created its database: kill the whole run (ansible-playbook and its modules)
        left = h.wait_for(lambda: h.databases(site["pg"], site["db"] + "_dr_"), "the drill database",
                          timeout=120, interval=0.05)
    finally:
        h.kill_group(proc)
    journal = json.loads(next(site["state"].glob("*.json")).read_text())
    assert journal["data"]["restored_db"] == left[0], "the journal names the database before it exists"
    assert left == h.databases(site["pg"], site["db"] + "_dr_"), "the killed run should have left its database"
    proc = _dr(site)
    assert proc.returncode == 0, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["resumed"] and any("resumed the interrupted run" in n for n in report["notes"])
    assert h.databases(site["pg"], site["db"] + "_dr_") == []
    assert f"{APP}-dr-drill" not in _pm2_names(site)


def test_restore_with_failed_verification_switches_back_and_keeps_the_old_db(site):
    # an order written after the backup: the restored data does not have it, so the
    # verification URL that asks for it fails on the restored database
    status, order = h.http_json(site["url"] + "/api/orders", "POST", {"amount": 12.5})
    assert status == 201
    before = h.counts(site["pg"], site["db"])
    verify = {"dr_verify_urls": [{"path": f"/api/orders/{order['id']}", "status": 200}]}
    proc = _dr(site, "-e", "dr_mode=restore", "-e", json.dumps(verify))
    assert proc.returncode != 0
    assert "every host was switched back" in proc.stdout, proc.stdout[-5000:]
    report = h.latest_report(site["reports"])
    assert report["result"] == "failed" and report["mode"] == "restore"
    switched, back = report["app"]
    assert switched["phase"] == "switched" and not switched["ok"], report["app"]
    assert switched["database"] == report["restored_db"]
    assert any(f"/api/orders/{order['id']} answered 404" in p for p in switched["problems"]), switched
    assert back["phase"] == "switched back" and back["ok"] and back["database"] == site["db"], back
    # the app is back on the old database, which is intact (with the newer order) and not renamed
    assert _health(site)["services"]["database"]["database"] == site["db"]
    assert h.counts(site["pg"], site["db"]) == before
    assert h.http_json(f"{site['url']}/api/orders/{order['id']}")[0] == 200
    assert h.databases(site["pg"], site["db"] + "_pre_dr_") == []
    # the restored database is kept for inspection; remove it for the next test
    assert report["restored_db"] in h.databases(site["pg"], site["db"] + "_dr_")
    h.drop_prefixed(site["pg"], site["db"] + "_dr_")


def test_restore_killed_during_the_switch_is_finished_by_the_next_run(site):
    """On its own database drk_<hex> (the app is redeployed onto it, and back afterwards), so the
    module's main database stays as the other tests expect."""
    pg, db = site["pg"], f"drk_{h.token()}"
    h.create_seeded_db(pg, db)
    env = json.loads(Path(site["extra"]).read_text())["deploy_droplet_env"]
    own = {"dr_database": db, "dr_backup_pattern": f"{db}_*.dump",
           "deploy_droplet_env": dict(env, DATABASE_URL=h.pg_url(pg, db))}
    try:
        proc = _play(site, "playbooks/deploy.yml", "-e", "deploy_version=v1", "-e", json.dumps(own))
        assert proc.returncode == 0, proc.stdout[-4000:]
        proc = h.run_playbook(site["venv_bin"], site["env"], "playbooks/backup.yml", "-e", f"@{site['extra']}",
                              "-e", json.dumps(own))
        assert proc.returncode == 0, proc.stdout[-4000:]
        before = h.counts(pg, db)
        proc = _dr(site, "-e", "dr_mode=restore", "-e", json.dumps(own), background=True)

        def switching():
            for p in site["state"].glob("*.json"):
                data = json.loads(p.read_text() or "{}")
                if data.get("data", {}).get("switched"):
                    return data
            return None

        try:
            journal = h.wait_for(switching, "the journal to say the switch started", timeout=180, interval=0.05)
        finally:
            h.kill_group(proc)
        restored = journal["data"]["restored_db"]
        # never a half-restored database: the switch starts only after the restore and its checks
        assert h.counts(pg, restored) == before
        proc = _dr(site, "-e", "dr_mode=restore", "-e", json.dumps(own))
        assert proc.returncode == 0, proc.stdout[-5000:]
        report = h.latest_report(site["reports"])
        assert report["resumed"] and report["restored_db"] == restored and report["old_db"] == db
        assert _health(site)["services"]["database"]["database"] == restored
        assert h.databases(pg, db + "_dr_") == [restored]
        kept = h.databases(pg, db + "_pre_dr_")
        assert len(kept) == 1 and h.counts(pg, kept[0]) == before
    finally:
        proc = _play(site, "playbooks/deploy.yml", "-e", "deploy_version=v1")
        h.drop_prefixed(pg, db)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert _health(site)["services"]["database"]["database"] == site["db"]


def test_restore_switches_the_app_and_keeps_the_old_db_renamed(site, redis_lab):
    import redis

    _backup(site)
    before = h.counts(site["pg"], site["db"])
    rd = redis_lab["standalone"]
    cache = redis.Redis(host=rd["host"], port=rd["port"], password=rd["password"])
    stale, other = f"drt:{site['db']}:cache", f"drt:{site['db']}-keep"
    for i in range(20):
        cache.set(f"{stale}:{i}", "stale")
    cache.set(other, "kept")
    extra = {"dr_verify_urls": [{"path": "/api/stats"}], "dr_flush_cache": True, "dr_cache_patterns": [f"{stale}:*"],
             "dr_redis": {"login_host": rd["host"], "login_port": rd["port"], "login_password": rd["password"]}}
    try:
        proc = _dr(site, "-e", "dr_mode=restore", "-e", json.dumps(extra))
        assert proc.returncode == 0, proc.stdout[-5000:]
        # the stale cache keys are gone, nothing else was flushed
        assert list(cache.scan_iter(f"{stale}:*")) == [] and cache.get(other) == b"kept"
    finally:
        cache.delete(other, *[f"{stale}:{i}" for i in range(20)])
        cache.close()
    assert rd["password"] not in proc.stdout
    report = h.latest_report(site["reports"])
    new = report["restored_db"]
    assert report["result"] == "passed" and report["old_db"] == site["db"]
    assert _health(site)["services"]["database"]["database"] == new
    kept = h.databases(site["pg"], site["db"] + "_pre_dr_")
    assert len(kept) == 1 and h.counts(site["pg"], kept[0]) == before
    assert h.counts(site["pg"], new) == before
    assert any("update DATABASE_URL in the inventory" in n for n in report["notes"])
    # writes go to the restored database now
    status, _unused = h.http_json(site["url"] + "/api/orders", "POST", {"amount": 3})
    assert status == 201 and h.counts(site["pg"], new)["orders"] == before["orders"] + 1


def test_promote_fences_the_old_primary_promotes_the_standby_and_repoints_the_app(site, redis_lab):
    from pg_pair import private_pair

    with private_pair(prefix="drpromote") as pair:
        pair.wait_streaming()
        primary = {"host": pair.primary.host, "port": pair.primary.port, "user": pair.primary.user,
                   "password": pair.primary.password}
        h.create_seeded_db(primary, "app")
        env = {"NODE_ENV": "production", "PORT": str(site["host"]["app_port"]),
               "DATABASE_URL": h.pg_url(primary, "app"), "REDIS_URL": h.redis_url(redis_lab["standalone"])}
        proc = _play(site, "playbooks/deploy.yml", "-e", "deploy_version=v1",
                     "-e", json.dumps({"deploy_droplet_env": env}))
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert _health(site)["services"]["database"]["database"] == "app"
        status, order = h.http_json(site["url"] + "/api/orders", "POST", {"amount": 7})
        assert status == 201
        pair.wait_replayed()
        extra = {
            "dr_mode": "promote",
            "deploy_droplet_env": env,
            "dr_promote_standby": pair.standby.params(login_db="app"),
            "dr_promote_old_primary": pair.primary.params(login_db="app", connect_timeout=2),
            "dr_promote_fence_host": "localhost",
            "dr_promote_fence_data_dir": str(pair.primary.data_dir),
            "dr_promote_fence_owner": "postgres",
        }
        # an incident two hours after the standby's last transaction is over a 1h limit: refused
        # before anything is fenced or promoted
        late = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017
        proc = _dr(site, "-e", json.dumps(dict(extra, dr_incident_time=late, dr_promote_max_data_loss="1h")))
        assert proc.returncode != 0
        assert "Nothing was fenced or promoted" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-3000:]
        assert pair.standby.in_recovery() and not (pair.primary.data_dir / "standby.signal").exists()
        assert pair.primary.query("SHOW default_transaction_read_only")[0] == "off"
        pair.primary.stop()  # the disaster: the primary is gone
        assert _health(site)["status"] == "unhealthy"

        proc = _dr(site, "-e", json.dumps(extra), "-vvv")
        assert proc.returncode == 0, proc.stdout[-6000:]
        assert pair.standby.password not in proc.stdout + proc.stderr
        report = h.latest_report(site["reports"])
        assert report["mode"] == "promote" and report["result"] == "passed"
        assert report["promote"]["promoted"] is True
        assert report["rpo_seconds"] is not None and report["rpo_seconds"] >= 0
        assert report["rto_seconds"] > 0
        assert [s["step"] for s in report["steps"]] == ["preflight", "fence", "promote", "switch_app", "finish"]
        assert not pair.standby.in_recovery()
        # the app writes to the promoted standby, with the order written before the loss
        assert _health(site)["status"] == "healthy"
        assert h.http_json(f"{site['url']}/api/orders/{order['id']}")[0] == 200
        standby = {"host": pair.standby.host, "port": pair.standby.port, "user": pair.standby.user,
                   "password": pair.standby.password}
        before = h.counts(standby, "app")["orders"]
        assert h.http_json(site["url"] + "/api/orders", "POST", {"amount": 8})[0] == 201
        assert h.counts(standby, "app")["orders"] == before + 1
        # fenced: the old primary, started again, comes back read-only, never as a second primary
        pair.primary.start()
        assert pair.primary.in_recovery()
        # a second promote has nothing to do and fails nothing
        proc = _dr(site, "-e", json.dumps(extra))
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert h.latest_report(site["reports"])["promote"]["promoted"] is False
