"""Benchmark: a DR drill (playbooks/dr_restore.yml, dr_mode=drill, on a lab droplet) against a bare
`pg_restore -j N` of the same dump, both measured here, in this run.

Starts a private throwaway PostgreSQL 15 (free port, temp dir, stopped at the end; the
bench/backup_verify server and data generator are reused) holding ~--size-mb of data plus the
lab app's schema, takes the backup with playbooks/backup.yml (pg_backup: custom dump +
manifest), deploys the lab app on ops-lab-droplet2 as its own pm2 app against that database,
then alternates, --rounds times, a bare restore into a fresh database and a drill (restore into
a new database, pg_health, a second app instance healthy on it, report, cleanup), and prints
medians, ratios, the per-step timeline of the median drill and the slowest tasks outside the
restore (ansible.posix.profile_tasks). A drill of a schema-only database measures the fixed
cost of the role. Everything it made is removed at the end.

Do not run it while the droplet integration tests run (they use ops-lab-droplet2 too).
Not collected by pytest, not run by `make test`:

    .venv/bin/python bench/dr_drill/run.py [--size-mb 1100] [--jobs 2] [--rounds 3] [--tiny-rounds 3] [--durable]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab import core, droplets, inventory  # noqa: E402

HOST = "ops-lab-droplet2"
APP = "opslab-bench"
BASE = "/var/www/opslab-bench"
BIG, TINY = "benchdr", "benchdrtiny"
SCHEMA = REPO / "lab" / "app" / "schema.sql"
RESTORE_TASK = "Restore and check the backup"  # the role's task that runs the restore (backup_verify)


def _backup_verify_bench():
    """bench/backup_verify/run.py as a module: its private Server and its data generator."""
    path = REPO / "bench" / "backup_verify" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_backup_verify_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bv = _backup_verify_bench()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_profile(stdout: str) -> list[tuple[str, float]]:
    """The TASKS RECAP of ansible.posix.profile_tasks: [(task name, seconds)], slowest first."""
    if "TASKS RECAP" not in stdout:
        return []
    out = []
    for line in stdout[stdout.rindex("TASKS RECAP"):].splitlines()[3:]:
        match = re.match(r"^(.*\S)\s-*\s*(\d+\.\d+)s$", line)
        if match:
            out.append((match.group(1).rstrip("- "), float(match.group(2))))
    return sorted(out, key=lambda item: -item[1])


class Bench:
    def __init__(self, tmp: Path, server, jobs: int):
        self.tmp = tmp
        self.server = server
        self.jobs = jobs
        state = core.load_state()
        missing = [p for p in ("redis", "droplets") if not state.get(p)]
        if missing:
            raise SystemExit(f"the lab is not up ({', '.join(missing)} missing): run `python -m lab up` first")
        inventory.write(state)  # inventories/lab of this checkout (generated, gitignored), like the tests
        self.droplet = next(h for h in state["droplets"]["hosts"] if h["name"] == HOST)
        self.key = state["droplets"]["key"]
        droplets.release_archives()
        rd = state["redis"]["standalone"]
        self.app_port, self.drill_port = core.free_port(), core.free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env.update(
            ANSIBLE_COLLECTIONS_PATH=f"{core.collection_path()}:{REPO / '.ansible' / 'vendor_collections'}",
            ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0",
            ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", PROFILE_TASKS_TASK_OUTPUT_LIMIT="all",
            COLUMNS="160")
        self.extra = {
            "deploy_app_name": APP,
            "deploy_droplet_base_dir": BASE,
            "deploy_droplet_instances": 1,
            "deploy_health_url": f"http://127.0.0.1:{self.app_port}/api/health",
            "deploy_droplet_env": {
                "NODE_ENV": "production",
                "PORT": str(self.app_port),
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{server.port}/{BIG}",
                "REDIS_URL": f"redis://:{rd['password']}@{rd['host']}:{rd['port']}/0",
            },
            "dr_db_host": "localhost",
            "dr_pg": {"login_host": "127.0.0.1", "login_port": server.port, "login_user": "postgres"},
            "dr_backup_dir": str(tmp / "backups"),
            "dr_state_dir": str(tmp / "state"),
            "dr_drill_port": self.drill_port,
            "dr_restore_jobs": jobs,
            "dr_rpo_target": "1d",
            "dr_rto_target": "4h",
        }
        self.runs = 0

    def playbook(self, playbook: str, extra: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
        self.runs += 1
        extra_file = self.tmp / f"extra-{self.runs}.json"
        extra_file.write_text(json.dumps({**self.extra, **extra}))
        cmd = [REPO / ".venv" / "bin" / "ansible-playbook", "-i", REPO / "inventories" / "lab", playbook,
               "-e", f"@{extra_file}", *args]
        start = time.monotonic()
        proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=self.env, capture_output=True, text=True,
                              check=False, timeout=3600)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"{playbook} failed (rc {proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}")
        return elapsed, proc

    def backup(self, db: str) -> float:
        elapsed, _proc = self.playbook("playbooks/backup.yml", {"dr_database": db})
        return elapsed

    def deploy(self) -> float:
        elapsed, _proc = self.playbook("playbooks/deploy.yml", {}, "--limit", HOST, "-e", "deploy_version=v1")
        return elapsed

    def clean_droplet(self) -> None:
        subprocess.run(droplets.ssh_command(
            self.key, self.droplet["ssh_port"],
            f"pm2 delete {APP} >/dev/null 2>&1; pm2 delete {APP}-dr-drill >/dev/null 2>&1; "
            f"pm2 save --force >/dev/null 2>&1; sudo rm -rf {BASE}"), capture_output=True, timeout=120, check=False)

    def bare_restore(self, db: str) -> float:
        dump = self.dump(db)
        self.server.psql("DROP DATABASE IF EXISTS bench_baseline")
        self.server.psql("CREATE DATABASE bench_baseline TEMPLATE template0")
        secs = bv.timed(["pg_restore", f"-j{self.jobs}", "--no-owner", "--no-privileges", "--exit-on-error",
                         "-h", "127.0.0.1", "-p", self.server.port, "-U", "postgres", "-d", "bench_baseline", dump])
        self.server.psql("DROP DATABASE bench_baseline")
        return secs

    def dump(self, db: str) -> Path:
        found = sorted((self.tmp / "backups").glob(f"{db}_*.dump"))
        assert len(found) == 1, found
        return found[0]

    def drill(self, db: str) -> dict:
        report_dir = self.tmp / "reports" / f"run-{self.runs + 1}"
        wall, proc = self.playbook("playbooks/dr_restore.yml",
                                   {"dr_database": db, "dr_backup_pattern": f"{db}_*.dump",
                                    "dr_report_dir": str(report_dir)},
                                   "--limit", HOST, "-e", "dr_mode=drill")
        files = [p for p in report_dir.glob("dr-*.json") if not p.name.endswith(".journal.json")]
        assert len(files) == 1, files
        report = json.loads(files[0].read_text())
        if report["result"] != "passed":
            raise SystemExit(f"the drill did not pass: {report['result']} {report['failure']}")
        left = self.server.psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE '{db}\\_dr\\_%'")  # noqa: S608
        assert left == "0", f"the drill left {left} database(s) behind"
        return {"wall": wall, "report": report, "profile": parse_profile(proc.stdout)}


def median_index(values: list[float]) -> int:
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def steps_table(report: dict) -> list[str]:
    lines = ["| step | seconds |", "|---|---:|"]
    lines += [f"| {s['step']} | {s['seconds']:.2f} |" for s in report["steps"]]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--size-mb", type=int, default=1100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny-rounds", type=int, default=3, help="drills of the schema-only database (fixed cost)")
    ap.add_argument("--durable", action="store_true",
                    help="fsync, full_page_writes and synchronous_commit on (as in production) instead of off")
    a = ap.parse_args()

    print(f"# nproc {os.cpu_count()}, load average before: {loadavg()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ops-bench-dr-drill-"))
    os.chmod(tmp, 0o755)  # noqa: S103  (the postgres OS user must traverse it)
    pgbase = tmp / "pg"
    pgbase.mkdir()
    server = bv.Server(pgbase)
    bench = None
    try:
        server.start()
        if a.durable:  # later lines of postgresql.auto.conf win; all three take effect on reload
            with open(server.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
                conf.write("fsync = on\nfull_page_writes = on\nsynchronous_commit = on\n")
            core.run([bv.PG_BIN / "pg_ctl", "-D", server.data, "reload"], user="postgres")
            time.sleep(1)
        settings = server.psql("SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
                               "WHERE name IN ('fsync', 'full_page_writes', 'synchronous_commit')")
        t0 = time.monotonic()
        size = bv.fill(server, BIG, a.size_mb)
        bv.sh(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", server.port, "-U", "postgres",
               "-d", BIG, "-c", "SET client_min_messages = warning", "-f", SCHEMA])
        server.psql(f"CREATE DATABASE {TINY}")
        bv.sh(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", server.port, "-U", "postgres",
               "-d", TINY, "-c", "SET client_min_messages = warning", "-f", SCHEMA])
        size = int(server.psql(f"SELECT pg_database_size('{BIG}')"))
        print(f"# source database {BIG}: {size / 1e6:.0f} MB (+ the app's schema), filled in "
              f"{time.monotonic() - t0:.1f} s", flush=True)

        bench = Bench(tmp, server, a.jobs)
        bench.clean_droplet()
        backup_s = bench.backup(BIG)
        bench.backup(TINY)
        dump_mb = bench.dump(BIG).stat().st_size / 1e6
        print(f"# playbooks/backup.yml of {BIG}: {backup_s:.1f} s, custom dump {dump_mb:.0f} MB", flush=True)
        deploy_s = bench.deploy()
        print(f"# app deployed on {HOST} (pm2 {APP}, PORT {bench.app_port}) in {deploy_s:.1f} s", flush=True)
        print(f"# load average before the timed runs: {loadavg()}", flush=True)

        tiny_base, tiny = [], []
        for rnd in range(a.tiny_rounds):
            tiny_base.append(bench.bare_restore(TINY))
            tiny.append(bench.drill(TINY))
            print(f"# tiny round {rnd + 1}: bare pg_restore {tiny_base[-1]:.2f} s, "
                  f"drill wall {tiny[-1]['wall']:.2f} s, RTO {tiny[-1]['report']['rto_seconds']:.1f} s", flush=True)

        base, drills = [], []
        for rnd in range(a.rounds):
            if rnd % 2 == 0:  # alternate which goes first (page cache, autovacuum, neighbours)
                base.append(bench.bare_restore(BIG))
                drills.append(bench.drill(BIG))
            else:
                drills.append(bench.drill(BIG))
                base.append(bench.bare_restore(BIG))
            r = drills[-1]["report"]
            print(f"# round {rnd + 1}: bare pg_restore -j{a.jobs} {base[-1]:.2f} s, "
                  f"drill wall {drills[-1]['wall']:.2f} s, RTO {r['rto_seconds']:.1f} s, "
                  f"role's pg_restore {r['restore_seconds']:.2f} s", flush=True)
    finally:
        if bench is not None:
            bench.clean_droplet()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = loadavg()

    def row(label, b, d):
        r = d["report"]
        restore_step = next(s["seconds"] for s in r["steps"] if s["step"] == "restore")
        return (f"| {label} | {b:.2f} | {d['wall']:.2f} | {d['wall'] / b:.2f}x | {r['rto_seconds']:.1f} | "
                f"{r['rto_seconds'] / b:.2f}x | {restore_step:.2f} | {r['restore_seconds']:.2f} | "
                f"{d['wall'] - r['restore_seconds']:.2f} |")

    walls = [d["wall"] for d in drills]
    mid = drills[median_index(walls)]
    b_med = statistics.median(base)
    med = {"wall": statistics.median(walls), "report": {
        "rto_seconds": statistics.median(d["report"]["rto_seconds"] for d in drills),
        "restore_seconds": statistics.median(d["report"]["restore_seconds"] for d in drills),
        "steps": [{"step": "restore", "seconds": statistics.median(
            next(s["seconds"] for s in d["report"]["steps"] if s["step"] == "restore") for d in drills)}]}}

    print()
    print(f"Database {size / 1e6:.0f} MB, custom dump {dump_mb:.0f} MB, jobs={a.jobs}, {a.rounds} rounds; "
          f"nproc {os.cpu_count()}; private PostgreSQL 15 ({settings}); app on {HOST} (pm2, 1 instance)")
    print()
    print("| round | bare pg_restore s | drill wall s | wall / bare | drill RTO s | RTO / bare | role's restore step s "
          "| its pg_restore s | overhead (wall - pg_restore) s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (b, d) in enumerate(zip(base, drills, strict=True)):
        print(row(str(i + 1), b, d))
    print(row("**median**", b_med, med))
    wall_ratio, rto_ratio = med["wall"] / b_med, med["report"]["rto_seconds"] / b_med
    print()
    print(f"target <= 1.25x: wall {wall_ratio:.2f}x ({'met' if wall_ratio <= 1.25 else 'NOT met'}), "
          f"RTO {rto_ratio:.2f}x ({'met' if rto_ratio <= 1.25 else 'NOT met'}) "
          f"(medians; median of per-round wall ratios "
          f"{statistics.median(d['wall'] / b for b, d in zip(base, drills, strict=True)):.2f}x)")

    print()
    r = mid["report"]
    print(f"Timeline of the median drill (wall {mid['wall']:.2f} s; the role's clock {r['duration_seconds']:.1f} s, "
          f"RTO {r['rto_seconds']:.1f} s, its pg_restore {r['restore_seconds']:.2f} s):")
    print()
    print("\n".join(steps_table(r)))
    print(f"| (outside the role's clock: ansible start-up, inventory, SSH, report files, exit) | "
          f"{mid['wall'] - r['duration_seconds']:.2f} |")

    tb = statistics.median(tiny_base)
    tw = statistics.median(d["wall"] for d in tiny)
    trto = statistics.median(d["report"]["rto_seconds"] for d in tiny)
    tmid = tiny[median_index([d["wall"] for d in tiny])]
    print()
    print(f"Fixed cost (schema-only database {TINY}, median of {a.tiny_rounds}): bare pg_restore {tb:.2f} s, "
          f"drill wall {tw:.2f} s, RTO {trto:.1f} s -> the role adds ~{tw - tb:.1f} s (wall) / "
          f"~{trto - tb:.1f} s (RTO) regardless of size")
    print()
    print("\n".join(steps_table(tmid["report"])))

    print()
    print("Slowest tasks other than the restore (median drill, profile_tasks):")
    print()
    print("| task | seconds |")
    print("|---|---:|")
    for name, secs in [t for t in mid["profile"] if RESTORE_TASK not in t[0]][:10]:
        print(f"| {name} | {secs:.2f} |")
    restore = [t for t in mid["profile"] if RESTORE_TASK in t[0]]
    small = [t[1] for t in mid["profile"] if t[1] < 1.0]
    if restore:
        print(f"(the restore task itself: {restore[0][1]:.2f} s; all {len(mid['profile'])} tasks: "
              f"{sum(t[1] for t in mid['profile']):.2f} s, of which {len(small)} tasks under 1 s each: "
              f"{sum(small):.2f} s)")
    print()
    print("Slowest tasks, tiny drill:")
    print()
    print("| task | seconds |")
    print("|---|---:|")
    for name, secs in tmid["profile"][:10]:
        print(f"| {name} | {secs:.2f} |")
    print()
    print(f"load average after: {load_after}")


if __name__ == "__main__":
    main()
