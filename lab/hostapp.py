"""Lab part "hostapp": the lab app under PM2 on this host, behind nginx on a loopback port.

The droplet of runbook 003 without the droplet: PM2 runs `lab/app` in cluster mode with
its own PM2_HOME (LAB_DIR/pm2, never ~/.pm2), and nginx runs from a config whose pid
file, logs and temp paths all live in LAB_DIR/nginx, listening on 127.0.0.1:<free port>
(never port 80, never /etc/nginx's sites). The app talks to the lab's PostgreSQL
primary and standalone Redis.

Every pm2 command here runs with PM2_HOME set, and only after checking that this
home's daemon is alive where that matters: a bare `pm2 ...` starts a daemon in ~/.pm2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

from . import core

APP_DIR = core.APP_DIR
APP_NAME = "opslab-app"
INSTANCES = 2
START_TIMEOUT = 120


def _app_version() -> str:
    return json.loads((APP_DIR / "package.json").read_text(encoding="utf-8"))["version"]


def _which(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not path:
        raise core.LabError(f"{name} not found: {hint}")
    return path


def _pm2_bin() -> str:
    return _which("pm2", "install node 20 + npm, then `npm i -g pm2`")


def _nginx_bin() -> str:
    return _which("nginx", "`apt-get install nginx-light` (no nginx needs to be running)")


# ------------------------------------------------------------------ connection URLs

def _database_url(pg: dict) -> str:
    return (
        f"postgresql://{quote(str(pg['user']), safe='')}:{quote(str(pg['password']), safe='')}"
        f"@{pg['host']}:{pg['port']}/{quote(str(pg.get('dbname') or 'opslab'), safe='')}"
    )


def _redis_url(rd: dict | None) -> str:
    if not rd:
        return ""
    auth = f":{quote(str(rd['password']), safe='')}@" if rd.get("password") else ""
    return f"redis://{auth}{rd['host']}:{rd['port']}/0"


def _backends(state: dict) -> tuple[dict, dict | None]:
    pg = (state.get("postgres") or {}).get("primary")
    if not pg:
        raise core.LabError("hostapp needs the lab's PostgreSQL: run `python -m lab up postgres` first")
    rd = (state.get("redis") or {}).get("standalone")
    return pg, rd


# ------------------------------------------------------------------ node modules + schema

def _load_schema(pg: dict) -> None:
    """Create the app's tables and seed them (schema.sql is idempotent)."""
    dbname = pg.get("dbname") or "opslab"
    try:
        core.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg["host"], "-p", pg["port"],
             "-U", pg["user"], "-d", dbname,
             "-c", "SET client_min_messages = warning", "-f", APP_DIR / "schema.sql"],
            env={"PGPASSWORD": pg["password"], "PGCONNECT_TIMEOUT": "10"}, timeout=120,
        )
    except core.LabError as exc:
        raise core.LabError(
            f"could not load {APP_DIR / 'schema.sql'} into {pg['host']}:{pg['port']}/{dbname}; is the lab's "
            f"PostgreSQL up (`python -m lab status`, `python -m lab up postgres`)?\n{exc}"
        ) from exc


# ------------------------------------------------------------------ pm2

def _pm2_home(entry: dict | None = None) -> Path:
    if entry and entry.get("pm2_home"):
        return Path(entry["pm2_home"])
    return core.LAB_DIR / "pm2"


def _read_pid(path: Path):
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _pm2_daemon_pid(home: Path):
    """The pid of this home's PM2 daemon if it is running, else None."""
    pid = _read_pid(home / "pm2.pid")
    return pid if core.pid_alive(pid) else None


def _pm2(home: Path, *args, env: dict | None = None, check: bool = True, timeout: float = 60):
    return core.run([_pm2_bin(), *args], env={"PM2_HOME": str(home), **(env or {})},
                    check=check, timeout=timeout)


def _pm2_processes(home: Path) -> list[dict]:
    """`pm2 jlist` of this home, reduced to what we need; [] if its daemon is not running."""
    if not _pm2_daemon_pid(home):
        return []
    out = _pm2(home, "jlist").stdout
    start = out.find("[")  # pm2 may print warnings before the JSON
    try:
        procs = json.loads(out[start:]) if start >= 0 else []
    except json.JSONDecodeError as exc:
        raise core.LabError(f"unreadable `pm2 jlist` output (PM2_HOME={home}): {exc}") from exc
    return [
        {
            "name": p.get("name"),
            "pm_id": p.get("pm_id"),
            "pid": p.get("pid"),
            "status": (p.get("pm2_env") or {}).get("status"),
            "restarts": (p.get("pm2_env") or {}).get("restart_time"),
        }
        for p in procs
    ]


def _kill_if(pid, needle: str) -> None:
    """Kill a pid recorded earlier, only if it still is what we started (pids get reused)."""
    if core.pid_alive(pid) and needle in core.cmdline(pid):
        core.kill_pid(pid)


def _children(pid) -> list[int]:
    """Direct children of pid, from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid):
            kids.append(int(stat.parent.name))
    return kids


def _pm2_kill(home: Path) -> None:
    """Stop this home's daemon and apps; kill whatever survives, even if the daemon is gone."""
    daemon = _pm2_daemon_pid(home)
    if daemon:
        pids = [p["pid"] for p in _pm2_processes(home) if p.get("pid")] + _children(daemon)
        _pm2(home, "kill", check=False, timeout=60)
        core.kill_pid(daemon, *pids)
    # Apps orphaned by a daemon that died (or was SIGKILLed) still carry its PM2_HOME; so may
    # a developer's shell that exported it to run `pm2 logs`: only pm2's and the app's processes.
    core.kill_pid(*(
        pid for pid in core.pids_with(b"PM2_HOME=" + str(home).encode() + b"\0", "environ")
        if "PM2" in core.cmdline(pid) or str(APP_DIR / "server.js") in core.cmdline(pid)
    ))


def _start_app(home: Path, app_port: int, pg: dict, rd: dict | None) -> None:
    env = {
        "PM2_APP_NAME": APP_NAME,
        "PM2_INSTANCES": INSTANCES,
        "PORT": app_port,
        "HOST": core.HOST,
        "DATABASE_URL": _database_url(pg),
        "REDIS_URL": _redis_url(rd),  # "" -> the app reports redis as "disabled"
        "APP_NAME": APP_NAME,
        "APP_VERSION": _app_version(),
        "FAIL_HEALTH": "0",
        "STARTUP_DELAY_MS": "0",
        "NODE_ENV": "production",
    }
    _pm2(home, "start", APP_DIR / "ecosystem.config.js", env=env, timeout=START_TIMEOUT)
    procs = [p for p in _pm2_processes(home) if p["name"] == APP_NAME]
    online = [p for p in procs if p["status"] == "online"]
    if len(online) != INSTANCES:
        raise core.LabError(
            f"pm2 started {len(online)}/{INSTANCES} {APP_NAME} instances online ({procs}); "
            f"see the logs in {home / 'logs'} (PM2_HOME={home} pm2 logs {APP_NAME})"
        )


# ------------------------------------------------------------------ nginx

NGINX_CONF = """\
# Written by lab/hostapp.py: nginx in front of the lab app, entirely inside {base}.
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;

events {{
    worker_connections 256;
}}

http {{
    client_body_temp_path {base}/tmp/body;
    proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fastcgi;
    uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    access_log {base}/access.log;
    default_type application/json;
    server_tokens off;

    # No upstream keepalive: one connection per request lets node's cluster master spread
    # requests over the pm2 instances (visible as "instance" in /api/health).
    upstream opslab_app {{
        server {host}:{app_port} max_fails=0;
    }}

    server {{
        listen {host}:{nginx_port};
        server_name _;

        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_connect_timeout 2s;
        proxy_read_timeout 15s;
        proxy_next_upstream error timeout http_502;

        location /api/ {{
            proxy_pass http://opslab_app;
        }}

        location = /health {{
            proxy_pass http://opslab_app;
        }}

        location = /nginx-health {{
            access_log off;
            return 200 '{{"status": "ok"}}';
        }}

        location / {{
            return 404 '{{"error": "not found"}}';
        }}
    }}
}}
"""


def _nginx_cmd(conf: Path, *args: str) -> list[str]:
    base = conf.parent
    return [_nginx_bin(), "-p", str(base), "-e", str(base / "error.log"), "-c", str(conf), *args]


def _nginx_pid(conf: Path):
    pid = _read_pid(conf.parent / "nginx.pid")
    return pid if core.pid_alive(pid) else None


def _nginx_stop(conf: Path) -> None:
    master = _nginx_pid(conf)
    if not master:  # pid file gone? find the master by its title "nginx: master process ... -c <conf>"
        masters = [p for p in core.pids_with(b" -c " + str(conf).encode()) if core.pid_alive(p)]
        core.kill_pid(*masters, *[w for m in masters for w in _children(m)])
        return
    workers = _children(master)
    core.run(_nginx_cmd(conf, "-s", "quit"), check=False, timeout=30)
    try:
        core.wait_for(lambda: not core.pid_alive(master), f"nginx (pid {master}) to quit", 10, 0.05)
    except core.LabError:
        pass
    core.kill_pid(master, *workers)


def _start_nginx(base: Path, app_port: int, nginx_port: int) -> Path:
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(base=base, host=core.HOST, app_port=app_port,
                                      nginx_port=nginx_port), encoding="utf-8")
    core.run(_nginx_cmd(conf, "-t", "-q"), timeout=30)
    core.run(_nginx_cmd(conf), timeout=30)
    core.wait_for(lambda: _nginx_pid(conf), f"nginx to write {base / 'nginx.pid'}", 20)
    return conf


# ------------------------------------------------------------------ health

def _get_json(url: str, timeout: float = 5) -> tuple[int, dict | None]:
    """(HTTP status, parsed JSON body or None); (0, None) if nothing answered."""
    code, body = core.http_get(url, timeout)
    try:
        return code, json.loads(body) if code else None
    except ValueError:
        return code, None


def _wait_healthy(url: str, timeout: float = 60) -> dict:
    last: list = [0, None]

    def healthy():
        last[:] = _get_json(url)
        return last[1] if last[0] == 200 else None

    try:
        return core.wait_for(healthy, f"GET {url} to return 200", timeout, 0.2)
    except core.LabError as exc:
        raise core.LabError(
            f"{exc}; last answer: HTTP {last[0]} {json.dumps(last[1])}; check that the lab's PostgreSQL "
            f"and Redis are up (`python -m lab status`)"
        ) from exc


def _log_tail(*dirs: Path, lines: int = 15) -> str:
    """The last lines of every non-empty log file in dirs, for an error message."""
    out = []
    for folder in dirs:
        for log in sorted(folder.glob("*.log")) if folder.is_dir() else []:
            text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
            if text and log.name != "access.log":
                out.append(f"--- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out)


# ------------------------------------------------------------------ part contract

def _fingerprint(pg: dict, rd: dict | None) -> dict:
    """Where the app's backends are (no secrets), to notice when they have moved."""
    return {
        "database": f"{pg['host']}:{pg['port']}/{pg.get('dbname') or 'opslab'}",
        "redis": f"{rd['host']}:{rd['port']}" if rd else None,
    }


def up(state: dict) -> dict:
    pg, rd = _backends(state)
    installed = core.ensure_app_node_modules()
    _load_schema(pg)

    entry = state.get("hostapp") or {}
    backends = _fingerprint(pg, rd)
    if entry and not installed and entry.get("backends") == backends and status(entry)["ok"]:
        return entry
    down(entry)  # stale, half-started or pointing at old backends: start over cleanly

    home = core.part_dir("pm2")
    base = core.part_dir("nginx")
    app_port, nginx_port = core.free_port(), core.free_port()
    try:
        _start_app(home, app_port, pg, rd)
        conf = _start_nginx(base, app_port, nginx_port)
        nginx_url = f"http://{core.HOST}:{nginx_port}"
        health = _wait_healthy(f"{nginx_url}/api/health")
    except core.LabError as exc:
        logs = _log_tail(home / "logs", base)  # down() removes them
        down({"pm2_home": str(home), "nginx_conf": str(base / "nginx.conf")})
        raise core.LabError(f"{exc}\n{logs}" if logs else str(exc)) from exc
    return {
        "pm2_home": str(home),
        "pm2_pid": _pm2_daemon_pid(home),
        "app_name": APP_NAME,
        "app_dir": str(APP_DIR),
        "app_version": health.get("version"),
        "instances": INSTANCES,
        "app_port": app_port,
        "app_url": f"http://{core.HOST}:{app_port}",
        "nginx_port": nginx_port,
        "nginx_url": nginx_url,
        "nginx_conf": str(conf),
        "nginx_pid": _nginx_pid(conf),
        "backends": backends,
    }


def down(entry: dict) -> None:
    home = _pm2_home(entry)
    conf = Path(entry.get("nginx_conf") or core.LAB_DIR / "nginx" / "nginx.conf")
    _nginx_stop(conf)
    _kill_if(entry.get("nginx_pid"), "nginx")  # in case its pid file is gone
    _pm2_kill(home)
    _kill_if(entry.get("pm2_pid"), "PM2")
    for path in (home, conf.parent):
        if path.is_relative_to(core.LAB_DIR):  # never remove anything outside the lab
            shutil.rmtree(path, ignore_errors=True)


def status(entry: dict) -> dict:
    home = _pm2_home(entry)
    result: dict = {"ok": False}
    try:
        procs = [p for p in _pm2_processes(home) if p["name"] == entry.get("app_name", APP_NAME)]
    except core.LabError as exc:
        procs = []
        result["pm2_error"] = str(exc)
    online = sum(p["status"] == "online" for p in procs)
    result["pm2"] = {"daemon": bool(_pm2_daemon_pid(home)), "online": online, "processes": procs}
    conf = Path(entry.get("nginx_conf") or core.LAB_DIR / "nginx" / "nginx.conf")
    result["nginx"] = {"running": bool(_nginx_pid(conf))}
    code, body = (_get_json(f"{entry['nginx_url']}/api/health") if entry.get("nginx_url")
                  else (0, None))
    result["health"] = {"http_status": code, "status": (body or {}).get("status"),
                        "version": (body or {}).get("version")}
    result["ok"] = bool(
        procs and online == len(procs) and result["nginx"]["running"] and code == 200
    )
    return result
