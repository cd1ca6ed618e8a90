# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.pm2_app: read pm2's state, plan, apply, health-gate.

Nothing here imports Ansible. The module builds a `runner` -- a callable
`runner(argv, env=None) -> (rc, stdout, stderr)` -- and an `http_get(url, timeout) ->
(status, body)` and hands them to `Pm2App`. `plan(desired, running)` is pure: the same
function decides in check mode and in a real run.

How drift is resolved (measured on pm2 7.0.4, see tests/integration/test_pm2_app.py):
- `pm2 reload <file> --update-env` updates changed/added env values and args, in cluster
  mode without dropping a request; in fork mode pm2's reload is a restart.
- pm2 never forgets a variable: a key removed from `env` survives a reload or a restart
  (Unitech/pm2 #3192, #5591). Removed keys therefore need delete + start.
- The script path, cwd, interpreter and exec_mode are fixed at `pm2 start`: a reload keeps
  the old ones, so changing them needs delete + start.
- The instance count changes with `pm2 scale` (no restart of the other instances).
The keys the module manages are recorded in the app's own env as OPS_RUNBOOKS_ENV_KEYS
(names only, never values) so a later run can tell which keys were removed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import time

STATES = ("started", "stopped", "restarted", "reloaded", "absent")
EXEC_MODES = ("fork", "cluster")
ENV_KEYS_MARKER = "OPS_RUNBOOKS_ENV_KEYS"
LOGROTATE_MODULE = "pm2-logrotate"
LOGROTATE_KEYS = ("max_size", "retain", "compress", "rotate_interval")
MAX_INSTANCES = 256
# Names pm2 reads as "every process" or as a process id: `pm2 delete all` must never happen.
_RESERVED_NAMES = ("all",)
_NAME_RE = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_RE = re.compile(r"^[0-9]+[KMG]?$")
# A JSON body whose "status" is one of these fails the gate even with the expected HTTP code.
_UNHEALTHY = ("unhealthy", "fail", "failed", "failing", "error", "down", "critical", "degraded")
# "Starting" actions after which the health gate runs.
_STARTING = ("start", "restart", "reload", "scale")


class Pm2Error(Exception):
    """Something went wrong; `result` holds what is known so far (actions done, status)."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


# ------------------------------------------------------------------ parsing pm2 output

def parse_jlist(text: str) -> list:
    """The process list of `pm2 jlist` (pm2 may print warnings or banners before the JSON)."""
    text = text or ""
    candidates = [0] + [m.start() + 1 for m in re.finditer(r"\n\[", text)]
    for start in candidates:
        chunk = text[start:].strip()
        if not chunk.startswith("["):
            continue
        try:
            data = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(data, list):
            return data
    raise Pm2Error("`pm2 jlist` printed no JSON process list; run `pm2 jlist` by hand to see why")


def _mode(value) -> str:
    text = str(value or "fork")
    return "cluster" if text.startswith("cluster") else "fork"


def running_app(procs: list, name: str) -> dict | None:
    """What pm2 runs under `name`, in the shape `plan()` compares; None if it has no such app.

    `env` is the environment the processes were given (pm2 flattens the app env into
    pm2_env); it holds secrets and must never be returned to the user.
    """
    mine = [p for p in procs if p.get("name") == name]
    if not mine:
        return None
    mine.sort(key=lambda p: p.get("pm_id", 0))
    env0 = mine[0].get("pm2_env") or {}
    flat = {k: v for k, v in env0.items() if isinstance(v, (str, int, float)) and _ENV_KEY_RE.match(k)}
    flat.update({k: v for k, v in (env0.get("env") or {}).items() if k not in flat})
    marker = str(flat.get(ENV_KEYS_MARKER) or "")
    return {
        "name": name,
        "script": env0.get("pm_exec_path"),
        "cwd": env0.get("pm_cwd"),
        "args": [str(a) for a in (env0.get("args") or [])],
        "interpreter": env0.get("exec_interpreter"),
        "exec_mode": _mode(env0.get("exec_mode")),
        "instances": len(mine),
        "env": {k: str(v) for k, v in flat.items()},
        "managed_env_keys": [k for k in marker.split(",") if k] if ENV_KEYS_MARKER in flat else None,
        "processes": [
            {
                "pm_id": p.get("pm_id"),
                "pid": p.get("pid"),
                "status": (p.get("pm2_env") or {}).get("status"),
                "restarts": (p.get("pm2_env") or {}).get("restart_time", 0),
            }
            for p in mine
        ],
    }


def overall_status(running: dict | None) -> str:
    if not running:
        return "absent"
    states = {p["status"] for p in running["processes"]}
    return states.pop() if len(states) == 1 else "mixed"


# ------------------------------------------------------------------ desired state

def resolve_instances(value, cpus: int | None = None) -> int:
    """pm2's instance count: a number, 0 or "max" = one per CPU, -N = CPUs minus N."""
    cpus = cpus or os.cpu_count() or 1
    text = str(value).strip().lower()
    if text == "max":
        return cpus
    try:
        number = int(text)
    except ValueError:
        raise Pm2Error(f"instances must be a number, 0, -N or 'max', got {value!r}") from None
    if number == 0:
        return cpus
    if number < 0:
        return max(1, cpus + number)
    if number > MAX_INSTANCES:
        raise Pm2Error(f"instances={number} is more than {MAX_INSTANCES}; pass a smaller number or 'max'")
    return number


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise Pm2Error(
            f"name must be 1-128 letters, digits, '.', '_', '@', ':' or '-', got {name!r}"
        )
    if name.lower() in _RESERVED_NAMES or name.isdigit():
        raise Pm2Error(
            f"name {name!r} is refused: pm2 reads it as every process or a process id, so "
            f"`pm2 delete {name}` would hit other apps; choose another name"
        )
    return name


def check_env(env) -> dict:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise Pm2Error("env must be a dict of VARIABLE: value")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
            raise Pm2Error(f"env key {key!r} is not a valid variable name (letters, digits, '_')")
        if key == ENV_KEYS_MARKER:
            raise Pm2Error(f"env key {ENV_KEYS_MARKER} is reserved by pm2_app")
        if isinstance(value, (dict, list)):
            raise Pm2Error(f"env value of {key} must be a string or number, not a {type(value).__name__}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[key] = "" if value is None else str(value)
    return out


def _args_list(args) -> list:
    if args is None:
        return []
    if isinstance(args, str):
        return shlex.split(args)
    return [str(a) for a in args]


def desired_app(params: dict, ecosystem_app: dict | None = None, ecosystem_dir: str | None = None,
                cpus: int | None = None) -> dict:
    """The app as `plan()` compares it, plus `config`: the pm2 app definition to start.

    Module options override the ecosystem app's values; env is merged (options win).
    `script` is None when neither script nor ecosystem is given (name-only operations).
    """
    name = check_name(params.get("name"))
    app = dict(ecosystem_app or {})
    app.pop("name", None)
    script = params.get("script") or app.get("script")
    if params.get("state") not in STATES:
        raise Pm2Error(f"state must be one of {', '.join(STATES)}, got {params.get('state')!r}")
    if not script:
        return {"name": name, "script": None, "state": params["state"]}
    cwd = params.get("cwd") or app.get("cwd") or ecosystem_dir
    if not os.path.isabs(script):
        if not cwd:
            raise Pm2Error(f"script {script!r} is relative: give an absolute path or cwd")
        script = os.path.join(cwd, script)
    script = os.path.normpath(script)
    cwd = os.path.normpath(cwd or os.path.dirname(script))
    if not os.path.isabs(cwd):
        raise Pm2Error(f"cwd must be an absolute path, got {cwd!r}")
    args = _args_list(params.get("args") if params.get("args") is not None else app.get("args"))
    raw_instances = params.get("instances")
    if raw_instances is None:
        raw_instances = app.get("instances", 1)
    instances = resolve_instances(raw_instances, cpus)
    exec_mode = params.get("exec_mode") or app.get("exec_mode")
    exec_mode = _mode(exec_mode) if exec_mode else ("cluster" if instances > 1 else "fork")
    if exec_mode not in EXEC_MODES:
        raise Pm2Error(f"exec_mode must be fork or cluster, got {exec_mode!r}")
    interpreter = params.get("interpreter") or app.get("interpreter") or app.get("exec_interpreter")
    if exec_mode == "cluster" and interpreter not in (None, "node") and not str(interpreter).endswith("/node"):
        raise Pm2Error(f"exec_mode=cluster only runs node scripts; interpreter={interpreter!r} needs exec_mode=fork")
    env = check_env(app.get("env"))
    env.update(check_env(params.get("env")))

    config = dict(app)
    config.update({"name": name, "script": script, "cwd": cwd, "args": args,
                   "instances": instances, "exec_mode": exec_mode})
    if interpreter:
        config["interpreter"] = interpreter
    config["env"] = dict(env, **{ENV_KEYS_MARKER: ",".join(sorted(env))})
    return {
        "name": name, "state": params["state"], "script": script, "cwd": cwd, "args": args,
        "interpreter": interpreter, "exec_mode": exec_mode, "instances": instances, "env": env,
        "config": config,
    }


# ------------------------------------------------------------------ the plan

def plan(desired: dict, running: dict | None) -> dict:
    """The actions that take `running` to `desired`, and why. Pure.

    Returns {"actions": [...], "reasons": [...], "changes": {field: [before, after]}} where
    actions are pm2 verbs in order: start, stop, restart, reload, delete, scale. Env values
    never appear in the result, only key names.
    """
    state = desired["state"]
    actions: list = []
    reasons: list = []
    changes: dict = {}

    if state == "absent":
        if running:
            actions, reasons = ["delete"], [f"{desired['name']} is defined in pm2 and state=absent"]
        return {"actions": actions, "reasons": reasons, "changes": changes}

    if state == "stopped":
        if running and any(p["status"] != "stopped" for p in running["processes"]):
            actions, reasons = ["stop"], [f"{desired['name']} is {overall_status(running)}, state=stopped"]
        return {"actions": actions, "reasons": reasons, "changes": changes}

    if not running:
        if not desired.get("script"):
            raise Pm2Error(
                f"{desired['name']} is not defined in pm2 and neither script nor ecosystem was given: "
                f"pass script (or ecosystem) to start it"
            )
        return {"actions": ["start"], "reasons": [f"{desired['name']} is not running in pm2"],
                "changes": {"status": ["absent", "online"]}}

    if desired.get("script"):
        for field in ("script", "cwd", "exec_mode"):
            if desired[field] != running[field]:
                changes[field] = [running[field], desired[field]]
        if desired.get("interpreter") and desired["interpreter"] != running["interpreter"]:
            changes["interpreter"] = [running["interpreter"], desired["interpreter"]]
        restart_fields = sorted(changes)
        if desired["args"] != running["args"]:
            changes["args"] = [running["args"], desired["args"]]
        if desired["instances"] != running["instances"]:
            changes["instances"] = [running["instances"], desired["instances"]]
        env_changed = sorted(k for k, v in desired["env"].items() if running["env"].get(k) != v)
        previous = running.get("managed_env_keys") or []
        env_removed = sorted(k for k in previous if k not in desired["env"] and k in running["env"])
        if env_changed:
            changes["env_changed"] = env_changed
        if env_removed:
            changes["env_removed"] = env_removed

        if restart_fields:
            actions = ["delete", "start"]
            reasons.append(
                f"{', '.join(restart_fields)} changed: pm2 keeps them from the first start "
                f"(a reload would run the old ones), so delete + start"
            )
        elif env_removed:
            actions = ["delete", "start"]
            reasons.append(
                f"env keys removed ({', '.join(env_removed)}): pm2 keeps removed variables across "
                f"reload and restart (Unitech/pm2#3192, #5591), so delete + start"
            )
        else:
            soft = [f for f in ("args",) if f in changes] + (["env"] if env_changed else [])
            if soft:
                verb = "reload" if desired["exec_mode"] == "cluster" else "restart"
                actions.append(verb)
                what = ", ".join(soft) + (f" ({', '.join(env_changed)})" if env_changed else "")
                reasons.append(
                    f"{what} changed: {verb} --update-env"
                    + (" (cluster mode: zero-downtime, one instance at a time)" if verb == "reload"
                       else " (fork mode: pm2 cannot reload without a gap)")
                )
            if "instances" in changes:
                actions.append("scale")
                reasons.append(f"instances {running['instances']} -> {desired['instances']}: pm2 scale")

    if not actions:
        down = [p for p in running["processes"] if p["status"] != "online"]
        if down:
            actions = ["restart"]
            reasons.append(
                f"{len(down)} of {len(running['processes'])} instances not online "
                f"({', '.join(sorted({str(p['status']) for p in down}))}): restart"
            )
        elif state == "restarted":
            actions, reasons = ["restart"], ["state=restarted"]
        elif state == "reloaded":
            actions, reasons = ["reload"], ["state=reloaded"]
    return {"actions": actions, "reasons": reasons, "changes": changes}


def view(app: dict | None, status: str | None = None) -> dict:
    """The diff view of an app (running or desired): env key names only, never values."""
    if not app or not app.get("script"):
        return {"status": status or "absent"}
    if "processes" in app:
        keys = app.get("managed_env_keys")
        env_keys = sorted(keys) if keys is not None else "(not started by pm2_app)"
        status = status or overall_status(app)
    else:
        env_keys = sorted(app["env"])
    return {
        "status": status or "online", "script": app["script"], "cwd": app["cwd"], "args": app["args"],
        "exec_mode": app["exec_mode"], "instances": app["instances"], "env_keys": env_keys,
    }


# ------------------------------------------------------------------ logrotate

def logrotate_desired(options: dict | None) -> dict:
    """{key: string value} for `pm2 set pm2-logrotate:<key>`; validates the values."""
    out = {}
    for key, value in (options or {}).items():
        if key == "install" or value is None:
            continue
        if key not in LOGROTATE_KEYS:
            raise Pm2Error(f"logrotate.{key} is unknown; use {', '.join(LOGROTATE_KEYS)}")
        if key == "max_size":
            value = str(value).upper()
            if not _SIZE_RE.match(value):
                raise Pm2Error(f"logrotate.max_size must look like 10M, 500K or 1G, got {value!r}")
        elif key == "retain":
            if str(value) != "all" and not str(value).isdigit():
                raise Pm2Error(f"logrotate.retain must be a number of files or 'all', got {value!r}")
            value = str(value)
        elif key == "compress":
            if not isinstance(value, bool):
                raise Pm2Error(f"logrotate.compress must be true or false, got {value!r}")
            value = "true" if value else "false"
        elif key == "rotate_interval":
            value = str(value)
            if len(value.split()) not in (5, 6):
                raise Pm2Error(f"logrotate.rotate_interval must be a cron expression, got {value!r}")
        out[key] = value
    return out


def logrotate_plan(desired: dict, current: dict, installed: bool, install: bool) -> dict:
    """{"install": bool, "set": {key: value}} that brings pm2-logrotate to `desired`."""
    to_set = {k: v for k, v in desired.items() if str(current.get(k, "")).lower() != v.lower()}
    return {"install": bool(install and not installed), "set": to_set}


# ------------------------------------------------------------------ health

def health_check(http_get, url: str, expect_status: int = 200, timeout: float = 5,
                 retries: int = 30, delay: float = 1, sleep=time.sleep) -> dict:
    """GET url until it answers expect_status (and, for JSON with a status, "healthy")."""
    last = "no answer"
    for attempt in range(1, retries + 2):
        try:
            code, body = http_get(url, timeout)
        # Any failure to get an answer means "not healthy yet".
        except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except
            code, body, last = 0, "", f"{type(exc).__name__}: {exc}"
        if code:
            last = f"HTTP {code}"
            ok = code == expect_status
            if ok:
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                if isinstance(data, dict) and isinstance(data.get("status"), str) \
                        and data["status"].lower() in _UNHEALTHY:
                    ok, last = False, f"HTTP {code} with status={data['status']!r}"
        else:
            ok = False
        if ok:
            return {"ok": True, "url": url, "attempts": attempt, "status_code": code, "detail": last}
        if attempt <= retries:
            sleep(delay)
    return {"ok": False, "url": url, "attempts": retries + 1, "status_code": code, "detail": last}


# ------------------------------------------------------------------ applying

class Pm2App:
    """Runs pm2 for one app. `runner(argv, env=None) -> (rc, out, err)`."""

    def __init__(self, runner, executable: str, pm2_home: str | None = None, http_get=None,
                 node: str = "node", sleep=time.sleep):
        self.runner = runner
        self.executable = executable
        self.pm2_home = pm2_home or os.environ.get("PM2_HOME") or os.path.expanduser("~/.pm2")
        self.http_get = http_get
        self.node = node
        self.sleep = sleep

    # -- low level
    def pm2(self, *args, check: bool = True):
        rc, out, err = self.runner([self.executable, *args], env={"PM2_HOME": self.pm2_home})
        if check and rc != 0:
            tail = " ".join((err or out or "").strip().splitlines()[-3:])[:600]
            raise Pm2Error(f"`pm2 {' '.join(args[:2])}` failed (rc={rc}): {tail}")
        return out

    def daemon_running(self) -> bool:
        return os.path.exists(os.path.join(self.pm2_home, "rpc.sock"))

    def processes(self) -> list:
        """`pm2 jlist`, or [] when no daemon runs in pm2_home (jlist would start one)."""
        if not self.daemon_running():
            return []
        return parse_jlist(self.pm2("jlist"))

    # -- ecosystem
    def load_ecosystem(self, path: str, only: str | None, name: str) -> dict:
        if not os.path.isfile(path):
            raise Pm2Error(f"ecosystem file {path} does not exist")
        if path.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as handle:
                    data = json.load(handle)
            except ValueError as exc:
                raise Pm2Error(f"ecosystem file {path} is not valid JSON: {exc}") from None
        else:
            script = ("const p=process.argv[1];let m;try{m=require(p)}catch(e){"
                      "console.error(String(e&&e.message||e).split('\\n')[0]);process.exit(3)}"
                      "process.stdout.write(JSON.stringify(m))")
            rc, out, err = self.runner([self.node, "-e", script, os.path.abspath(path)], env=None)
            if rc != 0:
                raise Pm2Error(f"ecosystem file {path} could not be loaded by node: {(err or out).strip()[:400]}")
            try:
                data = json.loads(out)
            except ValueError:
                raise Pm2Error(
                    f"ecosystem file {path} does not export an object (module.exports = {{apps: [...]}})"
                ) from None
        apps = data.get("apps") if isinstance(data, dict) else data
        if not isinstance(apps, list) or not apps or not all(isinstance(a, dict) for a in apps):
            raise Pm2Error(f"ecosystem file {path} has no `apps` list")
        wanted = only or (name if any(a.get("name") == name for a in apps) else None)
        if wanted:
            found = [a for a in apps if a.get("name") == wanted]
            if not found:
                names = ", ".join(str(a.get("name")) for a in apps)
                raise Pm2Error(f"ecosystem file {path} has no app named {wanted!r} (it has: {names})")
            return found[0]
        if len(apps) > 1:
            raise Pm2Error(f"ecosystem file {path} has {len(apps)} apps: say which one with `only`")
        return apps[0]

    # -- actions
    def _with_file(self, config: dict, verb: str, *extra):
        fd, path = tempfile.mkstemp(prefix="pm2_app-", suffix=".json", dir=self.pm2_home)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"apps": [config]}, handle)
            return self.pm2(verb, path, *extra)
        finally:
            os.unlink(path)

    def apply(self, desired: dict, actions: list) -> None:
        name = desired["name"]
        config = desired.get("config")
        if config:
            os.makedirs(self.pm2_home, mode=0o700, exist_ok=True)
        for action in actions:
            if action == "start":
                self._with_file(config, "start")
            elif action in ("reload", "restart"):
                if config:
                    self._with_file(config, action, "--update-env")
                else:
                    self.pm2(action, name)
            elif action == "scale":
                self.pm2("scale", name, str(desired["instances"]))
            elif action in ("stop", "delete"):
                self.pm2(action, name)
            else:  # pragma: no cover - plan() only returns the verbs above
                raise Pm2Error(f"unknown action {action}")

    def wait_online(self, name: str, expected: int, timeout: float = 30) -> dict | None:
        """Wait until `expected` instances of name are online; returns the running app."""
        deadline = time.monotonic() + timeout
        while True:
            app = running_app(self.processes(), name)
            if app and app["instances"] >= expected and all(p["status"] == "online" for p in app["processes"]):
                return app
            if time.monotonic() >= deadline:
                return app
            self.sleep(0.3)

    # -- logrotate
    def logrotate_state(self, procs: list) -> tuple:
        path = os.path.join(self.pm2_home, "module_conf.json")
        current = {}
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    current = (json.load(handle) or {}).get(LOGROTATE_MODULE) or {}
            except ValueError:
                current = {}
        installed = any(p.get("name") == LOGROTATE_MODULE for p in procs) or os.path.isdir(
            os.path.join(self.pm2_home, "modules", LOGROTATE_MODULE))
        return current, installed

    def apply_logrotate(self, lr_plan: dict) -> None:
        if lr_plan["install"]:
            try:
                self.pm2("install", LOGROTATE_MODULE)
            except Pm2Error as exc:
                raise Pm2Error(
                    f"could not install {LOGROTATE_MODULE} ({exc}); the host needs the npm registry for "
                    f"that: install it another way or set logrotate.install=false (offline hosts)"
                ) from None
        for key, value in lr_plan["set"].items():
            self.pm2("set", f"{LOGROTATE_MODULE}:{key}", value)


def run(app: Pm2App, params: dict, check_mode: bool = False, cpus: int | None = None) -> dict:
    """Everything pm2_app does: returns the result dict, raises Pm2Error with a partial result."""
    ecosystem = params.get("ecosystem")
    eco_app = None
    if ecosystem:
        eco_app = app.load_ecosystem(ecosystem, params.get("only"), params["name"])
    desired = desired_app(params, eco_app, os.path.dirname(os.path.abspath(ecosystem)) if ecosystem else None, cpus)
    lr_desired = logrotate_desired(params.get("logrotate")) if params.get("logrotate") is not None else None
    health = params.get("health") or None

    procs = app.processes()
    running = running_app(procs, desired["name"])
    the_plan = plan(desired, running)
    actions = the_plan["actions"]
    result = {
        "changed": bool(actions), "actions": actions, "reasons": the_plan["reasons"],
        "changes": the_plan["changes"], "pm2_home": app.pm2_home,
    }

    lr_plan = None
    if lr_desired is not None:
        current, installed = app.logrotate_state(procs)
        install = (params.get("logrotate") or {}).get("install", True)
        lr_plan = logrotate_plan(lr_desired, current, installed, install)
        result["logrotate"] = {"installed": installed or lr_plan["install"], "install": lr_plan["install"],
                               "set": lr_plan["set"], "config": dict(current, **lr_desired)}
        if lr_plan["install"] or lr_plan["set"]:
            result["changed"] = True

    before = view(running)
    if desired["state"] == "absent":
        after = {"status": "absent"}
    elif desired["state"] == "stopped":
        after = dict(before, status="stopped") if running else before
    elif desired.get("script"):
        after = view(desired, "online")
        if the_plan["changes"].get("env_changed"):
            after["env_changed"] = the_plan["changes"]["env_changed"]
    else:
        after = dict(before, status="online")
    result["diff"] = {"before": before, "after": after}

    if check_mode:
        _summarise(result, running if not actions else None, desired, predicted=after)
        return result

    try:
        app.apply(desired, actions)
        if lr_plan:
            app.apply_logrotate(lr_plan)
    except Pm2Error as exc:
        exc.result = dict(result, changed=True, failed_action=True)
        raise

    final = running_app(app.processes(), desired["name"])
    starting = any(a in _STARTING for a in actions)
    if starting:
        expected = desired["instances"] if desired.get("script") else (running or {}).get("instances", 1)
        final = app.wait_online(desired["name"], expected, timeout=30)
    _summarise(result, final, desired)
    result["diff"]["after"] = view(final) if final else {"status": "absent"}
    if final and the_plan["changes"].get("env_changed"):
        result["diff"]["after"]["env_changed"] = the_plan["changes"]["env_changed"]

    if health and health.get("url") and starting:
        gate = health_check(app.http_get, health["url"], int(health.get("expect_status", 200)),
                            float(health.get("timeout", 5)), int(health.get("retries", 30)),
                            float(health.get("delay", 1)), sleep=app.sleep)
        result["health"] = gate
        if not gate["ok"]:
            raise Pm2Error(
                f"{desired['name']} is not healthy after {' + '.join(actions)}: GET {gate['url']} "
                f"gave {gate['detail']} after {gate['attempts']} attempts (expected HTTP "
                f"{int(health.get('expect_status', 200))}); see `pm2 logs {desired['name']} --lines 50`",
                result,
            )

    if params.get("save") and result["changed"]:
        app.pm2("save")
        result["saved"] = True
    return result


def _summarise(result: dict, running: dict | None, desired: dict, predicted: dict | None = None) -> None:
    if running:
        result.update(status=overall_status(running), instances=running["instances"],
                      pids=[p["pid"] for p in running["processes"]],
                      restarts=sum(int(p.get("restarts") or 0) for p in running["processes"]))
    elif predicted is not None:
        result.update(status=predicted.get("status", "absent"), instances=predicted.get("instances", 0),
                      pids=[], restarts=0)
    else:
        result.update(status="absent", instances=0, pids=[], restarts=0)
