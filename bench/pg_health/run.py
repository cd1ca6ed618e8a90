"""Bench: one full pg_health run (in process, connect included) vs the same SQL run the way the
runbooks do it, one `psql -c` per query.

    .venv/bin/python bench/pg_health/run.py [-n 10] [--dsn postgresql://...]

Without --dsn it targets the lab primary (/tmp/ops-runbooks-lab/state.json, `python -m lab up`).
Prints the median of N repetitions of each side and the ratio. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab.core import collection_path  # noqa: E402

sys.path.insert(0, str(collection_path()))

from ansible_collections.ops.runbooks.plugins.module_utils import _pg_health as core  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (  # noqa: E402
    connect,
    parse_dsn,
)


def lab_params() -> dict:
    lab_file = Path("/tmp/ops-runbooks-lab/state.json")  # noqa: S108 (the lab's own place)
    state = json.loads(lab_file.read_text())["postgres"]["primary"]
    return {"login_host": state["host"], "login_port": state["port"], "login_user": state["user"],
            "login_password": state["password"], "login_db": state["dbname"], "login_unix_socket": None,
            "ssl_mode": "disable", "ssl_rootcert": None, "connect_timeout": 10, "dsn": None}


def pg_health_once(params: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    conn = connect(params)
    try:
        result = core.run(core.DbapiRunner(conn))
    finally:
        conn.close()
    return time.perf_counter() - started, result


def psql_statements(params: dict) -> list[str]:
    """Exactly the SQL pg_health sends, one string per psql invocation."""
    conn = connect(params)
    try:
        ident = core.DbapiRunner(conn).batch(core.identity_statements())[-1][0]
    finally:
        conn.close()
    sqls = [core.identity_statements()[1]]
    for check in core.CHECKS:
        sql = core.check_statements(check, ident, {})
        if sql:
            sqls.append(sql)
    return sqls


def psql_once(params: dict, sqls: list[str]) -> float:
    env = dict(os.environ)
    if params.get("dsn"):
        target = ["-d", params["dsn"]]
    else:
        env["PGPASSWORD"] = params["login_password"] or ""
        target = ["-h", params["login_host"], "-p", str(params["login_port"]), "-U", params["login_user"],
                  "-d", params["login_db"]]
    started = time.perf_counter()
    for sql in sqls:
        subprocess.run(["psql", "-X", "-q", "-A", "-t", *target, "-c", sql], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="repetitions (median reported)")
    parser.add_argument("--dsn", help="libpq DSN to check instead of the lab primary")
    args = parser.parse_args()
    params = lab_params() if not args.dsn else {"dsn": args.dsn, "connect_timeout": 10}
    if args.dsn:
        params.update({"login_password": parse_dsn(args.dsn).get("password")})

    sqls = psql_statements(params)
    pg_health_once(params)  # warm up both sides once
    psql_once(params, sqls)
    ours, theirs, trips = [], [], 0
    for _rep in range(args.n):
        elapsed, result = pg_health_once(params)
        ours.append(elapsed)
        trips = result["round_trips"]
        theirs.append(psql_once(params, sqls))
    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"pg_health, {len(core.CHECKS)} checks, {args.n} repetitions (median), load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'way':<44} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    ours_name = f"pg_health core (1 connection, {trips} round trips)"
    theirs_name = f"psql -c per query ({len(sqls)} invocations)"
    print(f"{ours_name:<44} {med_ours * 1000:>10.1f} "
          f"{min(ours) * 1000:>8.1f} {max(ours) * 1000:>8.1f}")
    print(f"{theirs_name:<44} {med_theirs * 1000:>10.1f} "
          f"{min(theirs) * 1000:>8.1f} {max(theirs) * 1000:>8.1f}")
    print(f"ratio psql / pg_health: {med_theirs / med_ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
