"""Helpers of the disaster_recovery (ops.runbooks.dr) role tests: a throwaway database seeded
by the lab app's schema, the lab app deployed on a droplet against it, backups with
playbooks/backup.yml, and runs of playbooks/dr_restore.yml whose report is read back.

Not a test module (no `test_` prefix)."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from backup_data import admin, create_db, drop_db
from backup_data import leftovers as databases

from lab import core as labcore
from lab import droplets

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "lab" / "app" / "schema.sql"

wait_for = labcore.wait_for  # the dr tests poll with h.wait_for


def counts(pg: dict, dbname: str) -> dict:
    with admin(pg, dbname) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 (fixed names)
                for t in ("customers", "orders", "audit_events")}


def create_seeded_db(pg: dict, name: str) -> None:
    create_db(pg, name, SCHEMA.read_text())


def drop_prefixed(pg: dict, prefix: str) -> None:
    for name in databases(pg, prefix):
        drop_db(pg, name)


def token(n: int = 3) -> str:
    return secrets.token_hex(n)


def pg_url(pg: dict, dbname: str) -> str:
    return f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{dbname}"


def redis_url(rd: dict) -> str:
    return f"redis://:{rd['password']}@{rd['host']}:{rd['port']}/0"


def dr_vars(db: str, tmp: Path, drill_port: int) -> dict:
    """The dr_* extra vars of a test site: its database, and backups, reports and lock under tmp."""
    return {"dr_database": db, "dr_backup_dir": str(tmp / "backups"), "dr_backup_pattern": f"{db}_*.dump",
            "dr_report_dir": str(tmp / "reports"), "dr_state_dir": str(tmp / "state"), "dr_drill_port": drill_port}


def run_playbook(venv_bin: Path, env: dict, playbook: str, *args: str, timeout: float = 900,
                 background: bool = False):
    cmd = [str(venv_bin / "ansible-playbook"), "-i", str(REPO / "inventories" / "lab"), playbook, *args]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the ansible-playbook and everything it started (its own session)."""
    import os

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def recap(proc, host: str) -> dict:
    match = re.search(rf"^{re.escape(host)}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      proc.stdout, re.M)
    assert match, proc.stdout[-4000:] + proc.stderr[-2000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True))


def reports(report_dir: Path) -> list[dict]:
    """Every JSON report in report_dir, oldest first."""
    files = sorted((p for p in report_dir.glob("dr-*.json") if not p.name.endswith(".journal.json")),
                   key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in files]


def latest_report(report_dir: Path) -> dict:
    found = reports(report_dir)
    assert found, f"no report in {report_dir}"
    return found[-1]


def http_json(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (loopback http)
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except OSError:
        return 0, None


def ssh(droplet: dict, key: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(droplets.ssh_command(key, droplet["ssh_port"], command),
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
