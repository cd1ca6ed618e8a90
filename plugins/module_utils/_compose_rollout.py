# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.compose_rollout: plan, gate, drain, roll back.

Nothing here imports Ansible. The engine talks to Docker through a *backend* object:

    backend.compose(args, env)        -> (rc, stdout, stderr) of `docker compose <base> <args>`
    backend.containers(project, svc)  -> [{id, name, image, image_id, config_hash, status,
                                          exit_code, health, networks: {name: ip}}]
    backend.image(ref)                -> {id, digests} or None
    backend.exec(container_id, argv, timeout) -> (rc, output)
    backend.disconnect(container_id)  take it off every network (out of the service's DNS name)
    backend.stop(container_id, timeout)     stop (SIGTERM, then SIGKILL after timeout)
    backend.remove(container_id, timeout)   stop and remove
    backend.now() / backend.sleep(seconds)

`DockerBackend` is the real one (docker SDK for inspection, the `docker compose` CLI for
changes); unit tests use a fake. The same `plan()` decides in check mode and in a real run.

Rolling (start-first, the scale-to-2x trick): `up -d --no-deps --no-recreate --scale S=2n S`
starts n new containers beside the n old ones, each new one must pass the gate (`successes`
consecutive probes within `wait_timeout`) and stay healthy for `soak` seconds; then the old
ones are taken out of rotation (without `proxy`: off the network, out of the service's DNS
name; with `proxy`: stopped, then the proxy reloads and resolves the service without them),
they get `drain` seconds, and are removed. The proxy
also reloads once the new containers passed the gate, so a proxy with a static upstream
(`server app:8080;`, resolved at reload) never sends a request to a container that has not
passed the gate. A failed gate removes the new ones the same way: the old ones never stopped.

Last known good: `<project_src>/.ops-rollout-state.json` (mode 0600) holds, per service,
`current` and `previous` releases (image ref, image id, digests, compose config hash, the
`env` overrides used). `state=rolled_back` goes to `previous`, with the image pinned to the
recorded image id by a temporary override file, so a moved tag cannot change what comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time

STATE_FILE = ".ops-rollout-state.json"
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
HEALTH_TYPES = ("docker", "http", "tcp", "command")
STRATEGIES = ("rolling", "recreate")
STATES = ("rolled_out", "rolled_back")
HEALTH_DEFAULTS = {
    "type": "docker", "url": None, "port": None, "command": None, "expect_status": 200,
    "interval": 1.0, "timeout": 5.0, "successes": 3, "soak": 0.0, "probe_from": None,
}
PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ComposeRolloutError(Exception):
    """What went wrong and what to do; `result` is the partial result to return."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.result = result or {}


class DockerUnavailable(ComposeRolloutError):
    """The Docker daemon stopped answering (restarted, killed, socket gone) in the middle of a run."""


DAEMON_GONE_RE = re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running", re.IGNORECASE)


# ---------------------------------------------------------------- input checks (pure)


def normalize_health(health: dict | None) -> dict:
    """The health spec with defaults; ComposeRolloutError when it cannot work."""
    spec = dict(HEALTH_DEFAULTS)
    spec.update({k: v for k, v in (health or {}).items() if v is not None})
    kind = spec["type"]
    if kind not in HEALTH_TYPES:
        raise ComposeRolloutError(f"health.type must be one of {', '.join(HEALTH_TYPES)}, got {kind!r}")
    if kind == "http":
        url = spec["url"]
        if not isinstance(url, str) or not re.match(r"^http://[^/\s]+", url):
            raise ComposeRolloutError(
                "health.type=http needs health.url, an http:// URL as seen from inside the project "
                "network, e.g. http://{host}:8080/health ({host} becomes the new container's "
                f"address); got {url!r}")
    if kind == "tcp":
        try:
            port = int(spec["port"])
        except (TypeError, ValueError):
            port = 0
        if not 0 < port < 65536:
            raise ComposeRolloutError(f"health.type=tcp needs health.port (1-65535), got {spec['port']!r}")
        spec["port"] = port
    if kind == "command" and not (isinstance(spec["command"], str) and spec["command"].strip()):
        raise ComposeRolloutError("health.type=command needs health.command, a shell command run "
                                  "inside each new container (exit 0 = healthy)")
    for key, low in (("interval", 0.1), ("timeout", 0.1), ("successes", 1), ("soak", 0)):
        try:
            value = float(spec[key])
        except (TypeError, ValueError):
            value = -1
        if value < low:
            raise ComposeRolloutError(f"health.{key} must be a number >= {low}, got {spec[key]!r}")
        spec[key] = int(value) if key == "successes" else value
    try:
        status = int(spec["expect_status"])
    except (TypeError, ValueError):
        status = 0
    if not 100 <= status <= 599:
        raise ComposeRolloutError(f"health.expect_status must be an HTTP status 100-599, got {spec['expect_status']!r}")
    spec["expect_status"] = status
    return spec


def check_params(params: dict) -> None:
    """Checks that need no Docker: raise ComposeRolloutError naming the bad option."""
    if params.get("strategy") not in STRATEGIES:
        raise ComposeRolloutError(f"strategy must be rolling or recreate, got {params.get('strategy')!r}")
    if params.get("state") not in STATES:
        raise ComposeRolloutError(f"state must be rolled_out or rolled_back, got {params.get('state')!r}")
    services = params.get("services") or []
    if not services:
        raise ComposeRolloutError("services must name at least one service of the compose project")
    if len(set(services)) != len(services):
        raise ComposeRolloutError(f"services lists a service twice: {services}")
    name = params.get("project_name")
    if name is not None and not PROJECT_RE.match(name):
        raise ComposeRolloutError(f"project_name must be lower-case letters, digits, '-' and '_', "
                                  f"starting with a letter or digit; got {name!r}")
    for key in (params.get("env") or {}):
        if not ENV_NAME_RE.match(str(key)):
            raise ComposeRolloutError(f"env has an invalid variable name {key!r}")
    proxy = params.get("proxy") or {}
    if proxy and not proxy.get("service"):
        raise ComposeRolloutError("proxy needs proxy.service, the compose service that routes to the rolled "
                                  "service (e.g. nginx), and optionally proxy.reload_command")
    if proxy.get("service") and proxy["service"] in services:
        raise ComposeRolloutError(f"proxy.service {proxy['service']!r} is also in services: roll the proxy "
                                  "out separately (strategy=recreate if it publishes a fixed port)")
    for key in ("drain", "wait_timeout"):
        if params.get(key) is not None and float(params[key]) < 0:
            raise ComposeRolloutError(f"{key} must be >= 0, got {params[key]!r}")
    src = params.get("project_src")
    if not src or not os.path.isdir(src):
        raise ComposeRolloutError(f"project_src {src!r} is not a directory: point it at the folder "
                                  "that holds the compose file")


def compose_files(project_src: str, files: list | None) -> list[str]:
    """Absolute compose file paths: `files` (relative to project_src) or the default name."""
    if files:
        paths = [f if os.path.isabs(f) else os.path.join(project_src, f) for f in files]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ComposeRolloutError(f"compose file(s) not found: {', '.join(missing)}")
        return paths
    for name in COMPOSE_FILE_NAMES:
        path = os.path.join(project_src, name)
        if os.path.isfile(path):
            return [path]
    raise ComposeRolloutError(f"no compose file in {project_src} (looked for {', '.join(COMPOSE_FILE_NAMES)}); "
                              "set files")


def fixed_host_ports(service_config: dict) -> list[str]:
    """Published host ports that are fixed (a second container could not bind them)."""
    fixed = []
    for port in service_config.get("ports") or []:
        if isinstance(port, dict):
            published = port.get("published")
            if published not in (None, "", "0", 0):
                fixed.append(f"{port.get('host_ip') or '*'}:{published}->{port.get('target')}")
        elif isinstance(port, str) and port.count(":") >= 1:
            fixed.append(port)
    return fixed


def check_rolling(service: str, service_config: dict) -> None:
    """Rolling runs old and new side by side: refuse what cannot run twice."""
    fixed = fixed_host_ports(service_config)
    if fixed:
        raise ComposeRolloutError(
            f"strategy=rolling cannot update service {service!r}: it publishes fixed host port(s) "
            f"{', '.join(fixed)}, which the old and the new container cannot both bind. Put a proxy "
            "in front and drop the fixed port (or publish an ephemeral one, e.g. '127.0.0.1::8080'), "
            "or use strategy=recreate, which stops the old container before starting the new one "
            "(downtime of one restart plus the gate).")
    if service_config.get("container_name"):
        raise ComposeRolloutError(
            f"strategy=rolling cannot update service {service!r}: it sets container_name "
            f"{service_config['container_name']!r}, so two containers cannot exist at once. Remove "
            "container_name or use strategy=recreate (documented downtime).")


def parse_hashes(output: str) -> dict:
    """`docker compose config --hash S` prints `S <sha256>` per line."""
    hashes = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2:
            hashes[parts[0]] = parts[1]
    return hashes


# ---------------------------------------------------------------- planning (pure)


def matches(container: dict, target: dict) -> bool:
    return (container.get("status") == "running"
            and container.get("config_hash") == target.get("config_hash")
            and container.get("image_id") == target.get("image_id"))


def plan(service: str, strategy: str, existing: list[dict], target: dict) -> dict:
    """What takes `existing` containers of `service` to `target` ({config_hash, image_id}).

    Returns {action: none|create|rolling|recreate, create: n, adopt: [names], remove: [names],
    keep: [names]}. `adopt` are running containers already at the target left by an interrupted
    rollout: a rolling re-run gates them with the new ones instead of starting more.
    """
    running = [c for c in existing if c.get("status") == "running"]
    stopped = sorted(c["name"] for c in existing if c.get("status") != "running")
    at_target = sorted(c["name"] for c in running if matches(c, target))
    others = sorted(c["name"] for c in running if not matches(c, target))
    if running and not others:
        return {"service": service, "action": "none", "create": 0, "adopt": [], "remove": [], "keep": at_target}
    if not running:
        # nothing runs (never started, or stopped by a dockerd restart half way through a rollout):
        # as many as the larger set of stopped containers, old or new, so an interrupted rollout of
        # n containers comes back with n, not 2n
        stopped_new = len([c for c in existing if c.get("status") != "running" and same_release(c, target)])
        count = max(1, stopped_new, len(stopped) - stopped_new)
        return {"service": service, "action": "create", "create": count, "adopt": [], "remove": stopped,
                "keep": []}
    if strategy == "recreate":
        return {"service": service, "action": "recreate", "create": len(running), "adopt": [],
                "remove": sorted(stopped + at_target + others), "keep": []}
    return {"service": service, "action": "rolling", "create": max(0, len(others) - len(at_target)),
            "adopt": at_target, "remove": sorted(stopped + others), "keep": []}


# ---------------------------------------------------------------- state file (last known good)


def state_path(project_src: str) -> str:
    return os.path.join(project_src, STATE_FILE)


def load_state(project_src: str) -> dict:
    path = state_path(project_src)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {"version": 1, "services": {}}
    except (OSError, ValueError) as exc:
        raise ComposeRolloutError(f"cannot read the rollout state {path}: {exc}; fix or delete it "
                                  "(deleting forgets the last known good releases)") from exc
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeRolloutError(f"{path} is not a compose_rollout state file; fix or delete it")
    return data


def save_state(project_src: str, data: dict) -> None:
    """Atomic write, mode 0600 (the env overrides may name internal tags)."""
    path = state_path(project_src)
    fd, tmp = tempfile.mkstemp(prefix=".ops-rollout-", dir=project_src)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_success(data: dict, service: str, release: dict, rolled_back: bool,
                   before: dict | None = None) -> dict:
    """New state after `release` went live: previous <- current, unless it was a rollback.

    `before` describes what ran before ({image, image_id, config_hash, containers}); when no
    release was recorded yet it becomes `previous` (adopted: its env overrides are unknown).
    """
    entry = dict(data["services"].get(service) or {})
    current = entry.get("current")
    if current is None and before and before.get("image_id") and not same_release(before, release):
        current = {"image": before.get("image"), "image_id": before["image_id"],
                   "digests": before.get("digests") or [], "config_hash": before.get("config_hash"),
                   "env": None, "containers": before.get("containers") or [], "adopted": True}
    if rolled_back:
        entry["current"] = release  # previous stays: a second rolled_back is a no-op
    else:
        if current and not same_release(current, release):
            entry["previous"] = current
        entry["current"] = release
    data["services"][service] = entry
    return data


def same_release(one: dict, other: dict) -> bool:
    return one.get("image_id") == other.get("image_id") and one.get("config_hash") == other.get("config_hash")


# ---------------------------------------------------------------- probes


_HTTP_PROBE = (
    'u="$1"; t="$2"; '
    'if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null -m "$t" -w "%{http_code}" "$u"; '
    'elif command -v python3 >/dev/null 2>&1; then python3 - "$u" "$t" <<"EOF"\n'
    "import sys, http.client, urllib.parse\n"
    "u = urllib.parse.urlsplit(sys.argv[1])\n"
    "try:\n"
    "    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=float(sys.argv[2]))\n"
    "    c.request('GET', (u.path or '/') + ('?' + u.query if u.query else ''))\n"
    "    print(c.getresponse().status)\n"
    "except Exception as e:\n"
    "    print('000', e)\n"
    "EOF\n"
    'else wget -S -q -O /dev/null -T "$t" "$u" 2>&1 '
    '| sed -n "s/.*HTTP\\/[0-9.]* \\([0-9][0-9][0-9]\\).*/\\1/p" | tail -n 1; fi'
)
_TCP_PROBE = (
    'h="$1"; p="$2"; t="$3"; '
    'if command -v python3 >/dev/null 2>&1; then python3 -c "import socket,sys; '
    'socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()" "$h" "$p" "$t"; '
    'elif command -v nc >/dev/null 2>&1; then nc -w "$t" "$h" "$p" </dev/null >/dev/null 2>&1; '
    'else exit 127; fi'
)


def probe_host(target: dict, prober: dict) -> str | None:
    """Address of `target` as seen from `prober` (127.0.0.1 when it probes itself)."""
    if prober["id"] == target["id"]:
        return "127.0.0.1"
    shared = [net for net in (target.get("networks") or {}) if net in (prober.get("networks") or {})]
    if not shared:
        return None
    return target["networks"][sorted(shared)[0]]


def probe(backend, container: dict, health: dict, prober: dict | None) -> tuple[bool, str, bool]:
    """One probe: (healthy, detail, fatal). `fatal` means waiting longer cannot help."""
    if container.get("status") != "running":
        return False, (f"container {container['name']} is {container.get('status')} "
                       f"(exit code {container.get('exit_code')})"), True
    kind = health["type"]
    if kind == "docker":
        state = container.get("health")
        if state is None:
            return False, (f"container {container['name']} has no Docker HEALTHCHECK: add one to the image or "
                           "compose file, or use health.type http, tcp or command"), True
        return state == "healthy", f"docker health is {state}", False
    timeout = health["timeout"]
    if kind == "command":
        rc, out = backend.exec(container["id"], ["sh", "-c", health["command"]], timeout + 5)
        return rc == 0, f"command exited {rc}: {out.strip()[-200:]}", False
    prober = prober or container
    host = probe_host(container, prober)
    if host is None:
        return False, f"{prober['name']} shares no network with {container['name']}", True
    if kind == "http":
        url = health["url"].replace("{host}", host)
        rc, out = backend.exec(prober["id"], ["sh", "-c", _HTTP_PROBE, "probe", url, str(int(max(1, timeout)))],
                               timeout + 5)
        match = re.search(r"\b(\d{3})\b", out or "")
        code = int(match.group(1)) if match else None
        if rc == 127 and code is None:
            return False, f"{prober['name']} has none of curl, python3, wget to probe {url}", True
        answer = code if code else (out or "").strip()[-120:] or "no answer"
        return code == health["expect_status"], f"GET {url} -> {answer}", False
    rc, out = backend.exec(prober["id"], ["sh", "-c", _TCP_PROBE, "probe", host, str(health["port"]),
                                          str(int(max(1, timeout)))], timeout + 5)
    if rc == 127:
        return False, f"{prober['name']} has neither nc nor python3 to probe tcp {host}:{health['port']}", True
    return rc == 0, f"tcp {host}:{health['port']} {'open' if rc == 0 else 'closed'}", False


# ---------------------------------------------------------------- the engine


class ComposeRollout:
    """One module run: `run()` returns the result dict or raises ComposeRolloutError."""

    def __init__(self, backend, params: dict, check_mode: bool = False):
        self.backend = backend
        self.params = params
        self.check_mode = check_mode
        self.steps: list[dict] = []
        self.started = backend.now()
        self.health = normalize_health(params.get("health"))
        self.project = None
        self.config = None
        self.state: dict = {"version": 1, "services": {}}
        self._tmp_files: list[str] = []
        self._service: str | None = None  # the service being worked on, for error messages
        self._old_down: list[str] = []  # old containers found not running after a rollback
        self.result: dict = {"changed": False, "plan": [], "from": {}, "to": {}, "rolled_back": False,
                             "rollback_reason": None, "steps": self.steps, "state_file": None}

    # -- helpers

    def _step(self, service: str, name: str, start: float, **extra) -> None:
        self.steps.append({"service": service, "step": name,
                           "duration_s": round(self.backend.now() - start, 3), **extra})

    def _env(self, env: dict | None) -> dict:
        merged = {str(k): str(v) for k, v in (self.params.get("env") or {}).items()}
        if env is not None:
            merged = {str(k): str(v) for k, v in env.items()}
        return merged

    def _compose(self, args: list, env: dict, extra_files: list | None = None, what: str = "") -> str:
        rc, out, err = self.backend.compose(list(args), env, extra_files or [])
        if rc != 0:
            detail = (err or out or "").strip()
            if DAEMON_GONE_RE.search(detail):
                raise DockerUnavailable(f"`docker compose {args[0]}` could not reach the Docker daemon{what}: "
                                        f"{detail[-500:]}")
            raise ComposeRolloutError(f"`docker compose {' '.join(args)}` failed (rc={rc}){what}: {detail[-1500:]}",
                                      self._partial())
        return out

    def _partial(self) -> dict:
        self.result["duration_s"] = round(self.backend.now() - self.started, 3)
        return self.result

    def _load_config(self, env: dict, extra_files: list | None = None) -> dict:
        rc, out, err = self.backend.compose(["config", "--format", "json"], env, extra_files or [])
        if rc != 0:
            raise ComposeRolloutError(
                f"the compose project in {self.params['project_src']} is invalid: "
                f"{(err or out).strip()[-1500:]} (check the compose file(s) and the variables they use)")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise ComposeRolloutError(f"`docker compose config` printed no JSON: {exc}") from exc

    def _containers(self, service: str) -> list[dict]:
        return self.backend.containers(self.project, service)

    def _describe(self, containers: list[dict]) -> dict:
        running = [c for c in containers if c.get("status") == "running"]
        if not running:
            return {"image": None, "image_id": None, "digests": [], "config_hash": None, "containers": []}
        first = running[0]
        info = self.backend.image(first["image_id"]) or {}
        return {"image": first.get("image"), "image_id": first.get("image_id"),
                "digests": info.get("digests") or [], "config_hash": first.get("config_hash"),
                "containers": sorted(c["name"] for c in running)}

    # -- targets

    def _target(self, service: str) -> dict:
        """The release to go to: {image, image_id, digests, config_hash, env, extra_files}."""
        if self.params["state"] == "rolled_back":
            return self._rollback_target(service)
        env = self._env(None)
        return self._resolve(service, env, [], pull=self.params.get("pull"))

    def _resolve(self, service: str, env: dict, extra_files: list, pull: bool = False) -> dict:
        config = self._load_config(env, extra_files) if (extra_files or env != self._env(None)) else self.config
        svc = config["services"][service]
        ref = svc.get("image")
        if not ref:
            raise ComposeRolloutError(f"service {service!r} has no image: name the image (build: alone is not "
                                      "supported; build it first, e.g. `docker compose build`)")
        if pull and not self.check_mode:
            start = self.backend.now()
            self._compose(["pull", service], env, extra_files, f" pulling {ref}")
            self._step(service, "pull", start)
        info = self.backend.image(ref)
        if info is None:
            if pull and self.check_mode:
                info = {"id": "(pulled at run time)", "digests": []}
            else:
                raise ComposeRolloutError(f"image {ref} of service {service!r} is not on the Docker host: build it "
                                          "(`docker compose build`) or set pull=true", self._partial())
        hash_files = list(extra_files)
        if svc.get("depends_on"):
            # `up --no-deps` (how every rollout starts containers) hashes the service without its
            # depends_on: compute the target hash the same way, or it never matches.
            hash_files.append(self._reset_deps_file(service))
        out = self._compose(["config", "--hash", service], env, hash_files)
        config_hash = parse_hashes(out).get(service)
        if not config_hash:
            raise ComposeRolloutError(f"`docker compose config --hash {service}` printed no hash: {out!r}")
        return {"image": ref, "image_id": info["id"], "digests": info.get("digests") or [],
                "config_hash": config_hash, "env": env, "extra_files": extra_files}

    def _rollback_target(self, service: str) -> dict:
        entry = self.state["services"].get(service) or {}
        previous = entry.get("previous")
        if not previous:
            raise ComposeRolloutError(
                f"no last known good release recorded for service {service!r} in "
                f"{state_path(self.params['project_src'])}: state=rolled_back needs a release that "
                "compose_rollout rolled out before the current one")
        if self.backend.image(previous["image_id"]) is None:
            raise ComposeRolloutError(
                f"the last known good image of {service!r} ({previous.get('image')}, {previous['image_id']}) "
                "is no longer on the Docker host (pruned?): rebuild or pull it, then retry")
        env = self._env(previous.get("env") or {})
        pin = self._pin_file(service, previous["image_id"])
        target = self._resolve(service, env, [pin])
        target["image"] = previous.get("image")
        return target

    def _reset_deps_file(self, service: str) -> str:
        fd, path = tempfile.mkstemp(prefix=".ops-rollout-nodeps-", suffix=".yml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"services:\n  {json.dumps(service)}:\n    depends_on: !reset []\n")
        self._tmp_files.append(path)
        return path

    def _pin_file(self, service: str, image_id: str) -> str:
        """A temporary compose override that pins the service's image to an image id."""
        fd, path = tempfile.mkstemp(prefix=".ops-rollout-pin-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"services": {service: {"image": image_id}}}, handle)
        self._tmp_files.append(path)
        return path

    # -- main

    def run(self) -> dict:
        try:
            return self._run()
        except DockerUnavailable as exc:
            where = f"service {self._service!r}: " if self._service else ""
            done = ", ".join(f"{s['step']}" for s in self.steps if s["service"] == self._service)
            raise ComposeRolloutError(
                f"{where}{exc}. The run stopped there"
                + (f" (steps done: {done})" if done else "")
                + ("; the new containers had been removed (rolled back)" if self.result["rolled_back"]
                   else "; nothing was rolled back, as the daemon is gone")
                + ". Once dockerd answers again, run the same "
                "task again: it removes the stopped containers, adopts new containers already at the target "
                "release, gates them and finishes the rollout (or rolls back if the gate fails).",
                self._partial()) from None
        finally:
            for path in self._tmp_files:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _run(self) -> dict:
        params = self.params
        src = params["project_src"]
        self.state = load_state(src)
        self.result["state_file"] = state_path(src)
        start = self.backend.now()
        self.config = self._load_config(self._env(None))
        self.project = params.get("project_name") or self.config.get("name")
        self.result["project_name"] = self.project
        known = sorted((self.config.get("services") or {}).keys())
        unknown = [s for s in params["services"] if s not in known]
        if unknown:
            raise ComposeRolloutError(f"unknown service(s) {', '.join(unknown)} in project {self.project}: "
                                      f"the compose file defines {', '.join(known) or 'none'}")
        proxy_service = (params.get("proxy") or {}).get("service")
        if proxy_service and proxy_service not in known:
            raise ComposeRolloutError(f"proxy.service {proxy_service!r} is not a service of project {self.project}: "
                                      f"the compose file defines {', '.join(known)}")
        if params["strategy"] == "rolling":
            for service in params["services"]:
                check_rolling(service, self.config["services"][service])
        plans, targets = [], {}
        for service in params["services"]:
            self._service = service
            existing = self._containers(service)
            target = self._target(service)
            targets[service] = (target, existing)
            item = plan(service, params["strategy"], existing, target)
            plans.append(item)
            self.result["from"][service] = self._describe(existing)
            self.result["to"][service] = {k: target[k] for k in ("image", "image_id", "digests", "config_hash")}
        self._service = None
        self._step("*", "plan", start)
        self.result["plan"] = plans
        self.result["changed"] = any(p["action"] != "none" for p in plans)
        self.result["diff"] = {
            "before": {s: {k: self.result["from"][s][k] for k in ("image", "image_id", "config_hash", "containers")}
                       for s in params["services"]},
            "after": {s: {k: self.result["to"][s][k] for k in ("image", "image_id", "config_hash")}
                      for s in params["services"]},
        }
        if self.check_mode:
            return self._partial()
        for item in plans:
            service = item["service"]
            self._service = service
            target, existing = targets[service]
            if item["action"] == "none":
                self._record_if_unknown(service, target, existing)
                continue
            self._apply(item, target, existing)
            self.result["to"][service]["containers"] = sorted(
                c["name"] for c in self._containers(service) if c.get("status") == "running")
        return self._partial()

    def _record_if_unknown(self, service: str, target: dict, existing: list[dict]) -> None:
        """Adopt a service already at the target: remember it as the current release."""
        entry = self.state["services"].get(service) or {}
        current = entry.get("current")
        if current and same_release(current, target):
            return
        if self.params["state"] == "rolled_back":
            return
        self.state = record_success(self.state, service, self._release(service, target, existing), False)
        save_state(self.params["project_src"], self.state)

    def _release(self, service: str, target: dict, containers: list[dict]) -> dict:
        return {"image": target["image"], "image_id": target["image_id"], "digests": target.get("digests") or [],
                "config_hash": target["config_hash"], "env": target["env"],
                "containers": sorted(c["name"] for c in containers if c.get("status") == "running"),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _apply(self, item: dict, target: dict, existing: list[dict]) -> None:
        service = item["service"]
        rolled_back_state = self.params["state"] == "rolled_back"
        try:
            if item["action"] == "recreate":
                live = self._recreate(service, target, len([c for c in existing if c.get("status") == "running"]))
            else:
                live = self._rolling(service, target, existing, item)
        except _GateFailed as exc:
            reason = str(exc)
            self.result["rollback_reason"] = reason
            if item["action"] == "recreate" and self.params.get("rollback_on_failure", True):
                self._recreate_back(service, existing, reason)
            raise ComposeRolloutError(
                f"service {service!r}: {reason}. "
                + ("Rolled back: " + ("the new containers were removed, but the old ones are not running "
                                      f"either ({', '.join(self._old_down)}): was dockerd restarted? Run the "
                                      "task again to start the release."
                                      if self.result["rolled_back"] and self._old_down
                                      else "the old containers kept serving and the new ones were removed."
                                      if self.result["rolled_back"] and item["action"] != "recreate"
                                      else "the previous release was started again." if self.result["rolled_back"]
                                      else "not rolled back.")),
                self._partial()) from None
        before = self.result["from"].get(service)
        if not (before or {}).get("image_id"):
            # nothing ran (a dockerd restart stopped it half way): what ran before is the stopped
            # containers of another release, adopted as `previous` when no release was recorded
            before = self._describe([dict(c, status="running") for c in existing
                                     if c.get("status") != "running" and not same_release(c, target)])
        self.state = record_success(self.state, service, self._release(service, target, live), rolled_back_state,
                                    before)
        save_state(self.params["project_src"], self.state)

    def _new_containers(self, service: str, old_ids: set) -> list[dict]:
        return [c for c in self._containers(service) if c["id"] not in old_ids]

    def _rolling(self, service: str, target: dict, existing: list[dict], item: dict) -> list[dict]:
        running = [c for c in existing if c.get("status") == "running"]
        for dead in (c for c in existing if c.get("status") != "running"):
            self.backend.remove(dead["id"], 10)
        old = [c for c in running if c["name"] not in item["adopt"]]
        old_ids = {c["id"] for c in old}
        start = self.backend.now()
        if item["create"] or not running:
            scale = len(running) + max(1, item["create"])
            self._compose(["up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={scale}", service],
                          target["env"], target["extra_files"], " starting the new containers")
        new = self._new_containers(service, old_ids)
        self._step(service, "start_new", start, containers=sorted(c["name"] for c in new))
        try:
            if len(new) < max(1, len(old)):
                raise _GateFailed(f"compose started {len(new)} new container(s), expected {max(1, len(old))}")
            new = self._gate(service, new)
            self._reload_proxy(service, "join", strict=True)
            if self.params.get("drain") and (self.params.get("proxy") or {}).get("service"):
                # the old and the new containers serve together while the proxy's old workers finish
                self.backend.sleep(float(self.params["drain"]))
        except _GateFailed as exc:
            if self.params.get("rollback_on_failure", True) and old:
                start = self.backend.now()
                try:
                    self._retire(service, self._new_containers(service, old_ids), "remove_new")
                except DockerUnavailable as lost:
                    raise DockerUnavailable(f"{lost}, rolling back after: {exc}") from None
                self.result["rolled_back"] = True
                self._step(service, "rollback", start)
                # the old containers were never touched, but something else may have stopped them
                # (a dockerd restart stops every container without a restart policy)
                now = {c["id"]: c for c in self._containers(service)}
                self._old_down = sorted(f"{c['name']} {now[c['id']].get('status') if c['id'] in now else 'gone'}"
                                        for c in old if (now.get(c["id"]) or {}).get("status") != "running")
            raise
        self._retire(service, old, "drain_old")
        return new

    def _reload_proxy(self, service: str, why: str, strict: bool) -> None:
        """Run proxy.reload_command in every running container of proxy.service."""
        proxy = self.params.get("proxy") or {}
        if not proxy.get("service"):
            return
        start = self.backend.now()
        containers = [c for c in self._containers(proxy["service"]) if c.get("status") == "running"]
        problems = []
        if not containers:  # first deployment: the proxy starts after the services it routes to
            self.result.setdefault("warnings", []).append(
                f"proxy service {proxy['service']!r} has no running container: nothing reloaded")
        for container in containers:
            rc, out = self.backend.exec(container["id"], ["sh", "-c", proxy.get("reload_command") or "nginx -s reload"],
                                        30)
            if rc != 0:
                problems.append(f"{container['name']}: reload exited {rc}: {out.strip()[-300:]}")
        self._step(service, f"proxy_reload_{why}", start)
        if problems:
            if strict:
                raise _GateFailed("the proxy did not reload with the new containers: " + "; ".join(problems))
            self.result.setdefault("warnings", []).append(f"proxy reload ({why}) failed: " + "; ".join(problems))

    def _retire(self, service: str, containers: list[dict], step: str) -> None:
        """Take containers out of rotation, drain, remove.

        With `proxy` (the proxy was reloaded with old + new and given `drain` seconds): stop them
        (the app finishes what it is serving; the proxy retries a refused or timed-out connection
        on another upstream server), reload the proxy so it resolves the service without them,
        remove. Without: disconnect them from their networks
        (out of the service's DNS name), wait `drain`, remove.
        """
        if not containers:
            return
        start = self.backend.now()
        if (self.params.get("proxy") or {}).get("service"):
            for container in containers:
                if container.get("status") == "running":
                    self.backend.stop(container["id"], 10)
            self._reload_proxy(service, "leave", strict=False)
        else:
            for container in containers:
                if container.get("status") == "running":
                    self.backend.disconnect(container["id"])
            if self.params.get("drain"):
                self.backend.sleep(float(self.params["drain"]))
        for container in containers:
            self.backend.remove(container["id"], 10)
        self._step(service, step, start, containers=sorted(c["name"] for c in containers))

    def _recreate(self, service: str, target: dict, count: int) -> list[dict]:
        start = self.backend.now()
        self._compose(["up", "-d", "--no-deps", "--force-recreate", "--scale", f"{service}={max(1, count)}",
                       service], target["env"], target["extra_files"], " recreating the containers")
        new = list(self._containers(service))
        self._step(service, "recreate", start, containers=sorted(c["name"] for c in new))
        new = self._gate(service, new)
        self._reload_proxy(service, "join", strict=True)
        return new

    def _recreate_back(self, service: str, existing: list[dict], reason: str) -> None:
        """recreate failed: start the release that ran before (it must be the recorded current one)."""
        before = self._describe(existing)
        current = (self.state["services"].get(service) or {}).get("current")
        if not before["containers"]:
            self.result["rollback_reason"] = f"{reason}; nothing ran before, nothing to roll back to"
            return
        if not current or not same_release(current, before):
            self.result["rollback_reason"] = (f"{reason}; not rolled back: the release that ran before is not "
                                              f"recorded in {state_path(self.params['project_src'])}")
            return
        start = self.backend.now()
        pin = self._pin_file(service, current["image_id"])
        try:
            self._compose(["up", "-d", "--no-deps", "--force-recreate", "--scale",
                           f"{service}={len(before['containers'])}", service],
                          self._env(current.get("env") or {}), [pin], " restarting the previous release")
            self._gate(service, self._containers(service))
            self._reload_proxy(service, "join", strict=False)
        except (ComposeRolloutError, _GateFailed) as exc:
            self.result["rollback_reason"] = f"{reason}; the rollback failed too: {exc}"
            return
        self.result["rolled_back"] = True
        self._step(service, "rollback", start)

    def _prober(self) -> dict | None:
        name = self.health.get("probe_from")
        if not name or self.health["type"] not in ("http", "tcp"):
            return None
        running = [c for c in self._containers(name) if c.get("status") == "running"]
        if not running:
            raise _GateFailed(f"health.probe_from service {name!r} has no running container to probe from")
        return running[0]

    def _gate(self, service: str, containers: list[dict]) -> list[dict]:
        """Every container must pass `successes` consecutive probes, then survive `soak`."""
        health = self.health
        ids = [c["id"] for c in containers]
        start = self.backend.now()
        deadline = start + float(self.params.get("wait_timeout") or 0)
        streak = {cid: 0 for cid in ids}
        last = {}
        while True:
            prober = self._prober()
            current = {c["id"]: c for c in self._containers(service) if c["id"] in streak}
            for cid in ids:
                container = current.get(cid)
                if container is None:
                    raise _GateFailed(f"new container {cid[:12]} disappeared")
                if streak[cid] >= health["successes"]:
                    continue
                ok, detail, fatal = probe(self.backend, container, health, prober)
                last[cid] = f"{container['name']}: {detail}"
                if fatal:
                    raise _GateFailed(f"gate failed: {last[cid]}")
                streak[cid] = streak[cid] + 1 if ok else 0
            if all(streak[cid] >= health["successes"] for cid in ids):
                break
            if self.backend.now() >= deadline:
                waiting = [last[cid] for cid in ids if streak[cid] < health["successes"]]
                raise _GateFailed(f"not healthy within wait_timeout={self.params.get('wait_timeout')}s "
                                  f"({health['type']} gate, {health['successes']} consecutive successes needed); "
                                  f"last probe: {'; '.join(waiting)}")
            self.backend.sleep(health["interval"])
        self._step(service, "gate", start)
        if health["soak"] > 0:
            start = self.backend.now()
            end = start + health["soak"]
            while self.backend.now() < end:
                self.backend.sleep(min(health["interval"], max(0.0, end - self.backend.now())))
                prober = self._prober()
                current = {c["id"]: c for c in self._containers(service) if c["id"] in streak}
                for cid in ids:
                    container = current.get(cid)
                    if container is None:
                        raise _GateFailed(f"new container {cid[:12]} disappeared during the soak")
                    ok, detail, _fatal = probe(self.backend, container, health, prober)
                    if not ok:
                        raise _GateFailed(f"failed during the soak, {self.backend.now() - start:.1f}s after the gate "
                                          f"passed: {container['name']}: {detail}")
            self._step(service, "soak", start)
        return [c for c in self._containers(service) if c["id"] in streak]


class _GateFailed(Exception):
    """The new release did not become (or stay) healthy."""


# ---------------------------------------------------------------- the real backend


class DockerBackend:
    """docker SDK client for inspection + `docker compose` CLI through `run(argv, env)`.

    `run(argv, env) -> (rc, stdout, stderr)`; the module passes AnsibleModule.run_command.
    """

    def __init__(self, client, run, project_src: str, files: list[str], project_name: str | None,
                 env_file: str | None, docker_host: str | None = None, compose_bin: str = "docker",
                 api_error: type = OSError, conn_errors: tuple = (OSError,)):
        self.client = client
        self.api_error = api_error  # docker.errors.APIError (NotFound and friends derive from it)
        # what the SDK raises when the daemon does not answer at all (requests' ConnectionError is an
        # OSError); APIError derives from it too and is told apart first
        self.conn_errors = conn_errors
        self.run = run
        self.project_src = project_src
        self.files = files
        self.project_name = project_name
        self.env_file = env_file
        self.docker_host = docker_host
        self.compose_bin = compose_bin

    def compose(self, args: list, env: dict, extra_files: list) -> tuple[int, str, str]:
        argv = [self.compose_bin, "compose", "--project-directory", self.project_src]
        for path in list(self.files) + list(extra_files):
            argv += ["-f", path]
        if self.project_name:
            argv += ["--project-name", self.project_name]
        if self.env_file:
            argv += ["--env-file", self.env_file]
        full_env = dict(env or {})
        if self.docker_host:
            full_env["DOCKER_HOST"] = self.docker_host
        return self.run(argv + list(args), full_env)

    @contextlib.contextmanager
    def _daemon(self, what: str):
        """Turn "the daemon does not answer" into DockerUnavailable; let API errors through."""
        try:
            yield
        except self.api_error:
            raise
        except self.conn_errors as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DockerUnavailable(f"lost the Docker daemon at {self.docker_host or 'the default socket'} while "
                                    f"{what} ({reason})") from None

    def containers(self, project: str, service: str) -> list[dict]:
        with self._daemon(f"listing the containers of {service}"):
            return self._containers(project, service)

    def _containers(self, project: str, service: str) -> list[dict]:
        found = self.client.api.containers(all=True, filters={"label": [
            f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]})
        result = []
        for summary in found:
            labels = summary.get("Labels") or {}
            if labels.get("com.docker.compose.oneoff") == "True":
                continue
            info = self._inspect(summary["Id"])
            if info is None:  # removed between list and inspect
                continue
            state = info.get("State") or {}
            nets = ((info.get("NetworkSettings") or {}).get("Networks") or {})
            result.append({
                "id": info["Id"], "name": info["Name"].lstrip("/"), "image": (info.get("Config") or {}).get("Image"),
                "image_id": info.get("Image"), "config_hash": labels.get("com.docker.compose.config-hash"),
                "number": labels.get("com.docker.compose.container-number"),
                "status": state.get("Status"), "exit_code": state.get("ExitCode"),
                "health": (state.get("Health") or {}).get("Status"),
                "networks": {name: (net or {}).get("IPAddress") for name, net in nets.items()},
            })
        return sorted(result, key=lambda c: c["name"])

    def image(self, ref: str) -> dict | None:
        try:
            with self._daemon(f"inspecting image {ref}"):
                info = self.client.api.inspect_image(ref)
        except self.api_error:  # ImageNotFound
            return None
        return {"id": info["Id"], "digests": info.get("RepoDigests") or []}

    def exec(self, container_id: str, argv: list, timeout: float) -> tuple[int, str]:
        try:
            with self._daemon(f"running a probe in container {container_id[:12]}"):
                exec_id = self.client.api.exec_create(container_id, argv, stdout=True, stderr=True)
                output = self.client.api.exec_start(exec_id)
                rc = self.client.api.exec_inspect(exec_id).get("ExitCode")
        except self.api_error as exc:  # container gone, exec refused
            return 126, str(exc)
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        return (rc if rc is not None else 1), text

    def disconnect(self, container_id: str) -> None:
        info = self._inspect(container_id) or {}
        for net in ((info.get("NetworkSettings") or {}).get("Networks") or {}):
            with contextlib.suppress(self.api_error), self._daemon(f"disconnecting {container_id[:12]} from {net}"):
                self.client.api.disconnect_container_from_network(container_id, net, force=True)

    def _inspect(self, container_id: str) -> dict | None:
        try:
            with self._daemon(f"inspecting container {container_id[:12]}"):
                return self.client.api.inspect_container(container_id)
        except self.api_error:
            return None

    def stop(self, container_id: str, timeout: float) -> None:
        with contextlib.suppress(self.api_error), self._daemon(f"stopping container {container_id[:12]}"):
            self.client.api.stop(container_id, timeout=int(timeout))

    def remove(self, container_id: str, timeout: float) -> None:
        self.stop(container_id, timeout)
        with contextlib.suppress(self.api_error), self._daemon(f"removing container {container_id[:12]}"):
            self.client.api.remove_container(container_id, v=True, force=True)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
