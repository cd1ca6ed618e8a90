"""Lab part "docker": Docker Engine (bookworm docker.io) + the Compose v2 CLI plugin.

up() starts `dockerd` in the background when `docker info` fails, and installs the Compose
v2 plugin from Debian trixie's `docker-compose` package when `docker compose version` fails
(bookworm only ships compose v1). down() removes every container, network and volume
labelled `ops.runbooks.lab` and stops dockerd only if the lab started it. Images are a
cache and are kept: prune_images() removes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from . import core, images

SOCKET = Path("/var/run/docker.sock")
DOCKER_HOST = f"unix://{SOCKET}"
DOCKERD_PIDFILE = Path("/var/run/docker.pid")
# Extra dockerd options (a test can run an isolated daemon). Never `--bridge none`, and never
# `--default-address-pool` on a daemon that is restarted with live-restore off: both make
# dockerd delete the host's docker0 link, breaking the default bridge for every other daemon
# (tests/integration/private_dockerd.py shows how to run a private daemon safely).
DOCKERD_ARGS: list[str] = []
TRIXIE_MIRROR = os.environ.get("OPS_LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
COMPOSE_IN_DEB = "usr/libexec/docker/cli-plugins/docker-compose"
LABEL_FILTER = f"label={core.LABEL}"


# ---------------------------------------------------------------- engine


def engine_version() -> str | None:
    """Server version when the daemon answers, else None."""
    proc = core.run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30)
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version or version == "<no value>":
        return None
    return version


def compose_version() -> str | None:
    proc = core.run(["docker", "compose", "version", "--short"], check=False, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _start_dockerd() -> int:
    if not shutil.which("dockerd"):
        raise core.LabError("dockerd is missing: apt-get install -y docker.io")
    if os.geteuid() != 0:
        raise core.LabError("docker is not running and starting dockerd needs root: "
                            "start it yourself (`sudo dockerd &`) and rerun")
    stale = DOCKERD_PIDFILE.exists() and not core.pid_alive(_read_int(DOCKERD_PIDFILE))
    if stale:
        DOCKERD_PIDFILE.unlink()
    log_path = core.part_dir("docker") / "dockerd.log"
    with log_path.open("ab") as log:
        # dockerd outlives this process: no `with` around the Popen.
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["dockerd", "--host", DOCKER_HOST, *DOCKERD_ARGS], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise core.LabError(f"dockerd exited with rc={proc.returncode}; see {log_path}:\n{tail}")
        return SOCKET.exists() and engine_version() is not None

    try:
        core.wait_for(ready, "dockerd to answer `docker info`", timeout=60, interval=0.3)
    except core.LabError as exc:
        if proc.poll() is None:
            core.kill_pid(proc.pid)
        raise core.LabError(f"{exc}\n(see {log_path})") from exc
    (core.part_dir("docker") / "dockerd.pid").write_text(str(proc.pid))
    return proc.pid


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- compose plugin


def plugin_dir() -> Path:
    """Where the compose plugin goes: system-wide when root, else ~/.docker/cli-plugins."""
    if os.geteuid() == 0:
        return Path("/usr/local/lib/docker/cli-plugins")
    return Path.home() / ".docker" / "cli-plugins"


def install_compose_plugin() -> Path:
    """Fetch trixie's docker-compose .deb with a private apt config and unpack the plugin."""
    dest = plugin_dir() / "docker-compose"
    with tempfile.TemporaryDirectory(prefix="ops-lab-compose-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lists" / "partial").mkdir(parents=True)
        (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
        sources = tmp / "sources.list"
        sources.write_text(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            f"{TRIXIE_MIRROR} trixie main\n"
        )
        apt_opts = [
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={tmp / 'lists'}",
            "-o", f"Dir::Cache={tmp / 'cache'}",
            "-o", "APT::Get::List-Cleanup=0",
            "-o", "APT::Sandbox::User=root",
            "-q",
        ]
        hint = (f"could not fetch docker-compose from Debian trixie ({TRIXIE_MIRROR}); check "
                "the network or install the Compose v2 plugin into "
                f"{plugin_dir()} by hand")
        try:
            core.run(["apt-get", *apt_opts, "update"], timeout=300)
            core.run(["apt-get", *apt_opts, "download", "docker-compose"], cwd=tmp, timeout=300)
        except core.LabError as exc:
            raise core.LabError(f"{hint}\n{exc}") from exc
        debs = sorted(tmp.glob("docker-compose_*.deb"))
        if not debs:
            raise core.LabError(f"{hint}: apt-get download left no .deb")
        core.run(["dpkg-deb", "-x", debs[-1], tmp / "x"])
        binary = tmp / "x" / COMPOSE_IN_DEB
        if not binary.exists():
            raise core.LabError(f"{debs[-1].name} has no {COMPOSE_IN_DEB}: {hint}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_suffix(".tmp")
        shutil.copy2(binary, staging)
        staging.chmod(0o755)
        staging.replace(dest)
    return dest


# ---------------------------------------------------------------- part API


def up(state: dict) -> dict:
    previous = state.get("docker") or {}
    started, pid = False, None
    version = engine_version()
    if version is None:
        pid = _start_dockerd()
        started = True
        version = engine_version()
    elif previous.get("started_dockerd") and core.pid_alive(previous.get("dockerd_pid")):
        started, pid = True, previous["dockerd_pid"]  # ours from an earlier `up`
    else:
        pid = _read_int(DOCKERD_PIDFILE)
    compose = compose_version()
    if compose is None:
        install_compose_plugin()
        compose = compose_version()
        if compose is None:
            raise core.LabError(
                f"installed the compose plugin into {plugin_dir()} but `docker compose "
                "version` still fails: check that the docker CLI looks there"
            )
    # Lab images replaced by a rebuild while a container still used them are dangling now.
    core.run(["docker", "image", "prune", "-f", "--filter", LABEL_FILTER], check=False, timeout=120)
    built = images.build_all()  # reused by content hash: 0.3 s when nothing changed
    return {
        "images": built,
        "host": DOCKER_HOST,
        "engine_version": version,
        "compose_version": compose,
        "started_dockerd": started,
        "dockerd_pid": pid,
    }


def _ids(kind: str) -> list[str]:
    if kind == "container":
        cmd = ["docker", "ps", "-aq", "--filter", LABEL_FILTER]
    else:
        cmd = ["docker", kind, "ls", "-q", "--filter", LABEL_FILTER]
    return core.run(cmd, timeout=60).stdout.split()


def remove_labelled() -> dict:
    """Remove every container, network and volume labelled ops.runbooks.lab."""
    removed = {"containers": _ids("container")}
    if removed["containers"]:
        core.run(["docker", "rm", "-f", "-v", *removed["containers"]], timeout=120)
    removed["networks"] = _ids("network")
    if removed["networks"]:
        core.run(["docker", "network", "rm", *removed["networks"]], timeout=60)
    removed["volumes"] = _ids("volume")
    if removed["volumes"]:
        core.run(["docker", "volume", "rm", "-f", *removed["volumes"]], timeout=60)
    return removed


def prune_images() -> list[str]:
    """Remove every image labelled ops.runbooks.lab (children before parents)."""
    removed: list[str] = []
    for _attempt in range(5):
        ids = core.run(["docker", "images", "-q", "--filter", LABEL_FILTER], timeout=60)
        ids = list(dict.fromkeys(ids.stdout.split()))
        if not ids:
            break
        for image in ids:
            if core.run(["docker", "rmi", "-f", image], check=False, timeout=120).returncode == 0:
                removed.append(image)
    core.run(["docker", "image", "prune", "-f", "--filter", LABEL_FILTER], check=False)
    left = core.run(["docker", "images", "-q", "--filter", LABEL_FILTER], timeout=60).stdout.split()
    if left:
        raise core.LabError(f"could not remove lab images {left}: remove the containers "
                            "using them (`python -m lab down`) and retry")
    return removed


def down(entry: dict) -> None:
    if engine_version() is not None:
        remove_labelled()
    if entry.get("started_dockerd") and entry.get("dockerd_pid"):
        stop_dockerd(int(entry["dockerd_pid"]))


def _gone(pid: int) -> bool:
    """True once pid has exited; reaps it when it is our child (else it stays a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not core.pid_alive(pid)


def stop_dockerd(pid: int, timeout: float = 30) -> None:
    """SIGTERM the dockerd the lab started, wait for it, SIGKILL if it hangs."""
    if _gone(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        core.wait_for(lambda: _gone(pid), f"dockerd (pid {pid}) to exit", timeout, 0.1)
    except core.LabError:
        os.kill(pid, signal.SIGKILL)
        core.wait_for(lambda: _gone(pid), f"dockerd (pid {pid}) to die", 10, 0.1)


def status(entry: dict) -> dict:
    version = engine_version()
    compose = compose_version() if version else None
    running = []
    if version:
        running = core.run(["docker", "ps", "--filter", LABEL_FILTER, "--format", "{{.Names}}"],
                           check=False).stdout.split()
    return {
        "ok": bool(version and compose),
        "engine_version": version,
        "compose_version": compose,
        "started_dockerd": bool(entry.get("started_dockerd")),
        "dockerd_pid": entry.get("dockerd_pid"),
        "lab_containers": running,
    }
