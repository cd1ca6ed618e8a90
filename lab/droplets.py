"""Lab part "droplets": N containers from local/droplet:bookworm that act like droplets.

Each droplet runs with `--network host` (it reaches the lab's PostgreSQL/Redis on
127.0.0.1 and we reach it on 127.0.0.1; container IPs are never used) and gets its own
SSH_PORT (sshd, key auth, user `deploy` with passwordless sudo), NGINX_PORT (nginx proxying
/ to APP_PORT, 502 until an app listens there) and APP_PORT. One ed25519 key pair under
the part dir logs into all of them. Running droplets are reused when their key and image
are current.

`release_archives()` writes release tarballs of the lab app for the deploy role's droplet
platform (`deploy_droplet_release_archive`), under the part dir's `releases/`:
opslab-app-v1/v2.tar.gz (node_modules included: installable offline), -v3 (no node_modules:
the role runs `npm ci` on the droplet) and -bad (its health always answers 503: a broken
release for the automatic-rollback tests). Each reports its version from package.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from . import core, images

PREFIX = "ops-lab-droplet"
USER = "deploy"
PORT_LABELS = ("ssh_port", "nginx_port", "app_port")
APP_FILES = ("server.js", "package.json", "package-lock.json", "schema.sql", "ecosystem.config.js")
# version -> (package.json version, carries node_modules, broken health)
RELEASES = {
    "v1": ("1.0.0", True, False),
    "v2": ("2.0.0", True, False),
    "v3": ("3.0.0", False, False),
    "bad": ("9.9.9-bad", True, True),
}


def count() -> int:
    raw = os.environ.get("OPS_LAB_DROPLETS", "2")
    try:
        number = int(raw)
    except ValueError as exc:
        raise core.LabError(f"OPS_LAB_DROPLETS={raw!r} is not a number") from exc
    if not 1 <= number <= 20:
        raise core.LabError(f"OPS_LAB_DROPLETS={number}: use 1..20")
    return number


def ensure_key() -> Path:
    """ed25519 key pair under the part dir (created once); returns the private key path."""
    key = core.part_dir("droplets") / "id_ed25519"
    if not key.exists() or not key.with_suffix(".pub").exists():
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        core.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops-runbooks-lab",
                  "-f", key])
    key.chmod(0o600)
    return key


def ssh_command(key: Path | str, port: int, *remote: str) -> list[str]:
    """argv that runs `remote` on a droplet as deploy (no host key checks: lab only)."""
    return [
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
        f"{USER}@{core.HOST}", *remote,
    ]


def ssh_ok(key: Path | str, port: int) -> bool:
    return core.run(ssh_command(key, port, "true"), check=False, timeout=15).returncode == 0


def _inspect(name: str) -> dict | None:
    proc = core.run(["docker", "container", "inspect", name], check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def _static_args(name: str, pubkey: str) -> list[str]:
    """The `docker run` options that do not depend on the ports."""
    return [
        "--name", name, "--hostname", name, "--network", "host",
        "--add-host", f"{name}:127.0.1.1", "--init", "--restart", "no",
        "--label", f"{core.LABEL}=1", "--label", f"{core.LABEL}.part=droplets",
        "-e", f"AUTHORIZED_KEY={pubkey}",
    ]


def _spec(name: str, pubkey: str, image: str) -> str:
    """Fingerprint of image + run options: a running droplet is reused only if it matches."""
    blob = json.dumps([image, _static_args(name, pubkey)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reusable(info: dict, spec: str) -> dict | None:
    """Ports of a running droplet started with the same spec, else None."""
    labels = info["Config"].get("Labels") or {}
    if not info["State"].get("Running") or labels.get(f"{core.LABEL}.spec") != spec:
        return None
    try:
        ports = {name: int(labels[f"{core.LABEL}.{name}"]) for name in PORT_LABELS}
    except (KeyError, ValueError):
        return None
    # APP_PORT has no listener until an app is deployed: keep free_port() off all three.
    core.reserve_port(*ports.values())
    return ports


def _start(name: str, pubkey: str, spec: str) -> dict:
    ports = {key: core.free_port() for key in PORT_LABELS}
    cmd = ["docker", "run", "-d", *_static_args(name, pubkey),
           "--label", f"{core.LABEL}.spec={spec}"]
    for key, value in ports.items():
        cmd += ["--label", f"{core.LABEL}.{key}={value}", "-e", f"{key.upper()}={value}"]
    core.run([*cmd, images.DROPLET], timeout=120)
    return ports


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def release_archives(dest: Path | None = None) -> dict[str, str]:
    """Write (or reuse) the lab app's release tarballs; {version: path}."""
    core.ensure_app_node_modules()
    dest = dest or core.part_dir("droplets") / "releases"
    dest.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name in APP_FILES:
        digest.update((core.APP_DIR / name).read_bytes())
    digest.update((core.APP_DIR / "node_modules" / ".package-lock.json").read_bytes())
    stamp = digest.hexdigest()[:16]
    out = {}
    for version, (pkg_version, with_modules, broken) in RELEASES.items():
        path = dest / f"opslab-app-{version}.tar.gz"
        marker = dest / f".opslab-app-{version}.{stamp}"
        out[version] = str(path)
        if path.exists() and marker.exists():
            continue
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for name in APP_FILES:
                data = (core.APP_DIR / name).read_bytes()
                if name == "package.json":
                    pkg = json.loads(data)
                    pkg["version"] = pkg_version
                    data = (json.dumps(pkg, indent=2) + "\n").encode()
                if name == "server.js" and broken:
                    data = data.replace(b"const FAIL_HEALTH = process.env.FAIL_HEALTH === '1';",
                                        b"const FAIL_HEALTH = true; // broken release (lab)")
                    if b"const FAIL_HEALTH = true;" not in data:
                        raise core.LabError("lab/app/server.js changed: cannot build the broken release")
                _add_bytes(tar, name, data)
            if with_modules:
                tar.add(core.APP_DIR / "node_modules", arcname="node_modules")
        tmp.replace(path)
        for old in dest.glob(f".opslab-app-{version}.*"):
            old.unlink()
        marker.touch()
    return out


def up(state: dict) -> dict:
    image = images.require(state, images.DROPLET)
    key = ensure_key()
    pubkey = key.with_suffix(".pub").read_text().strip()
    hosts = []
    for index in range(1, count() + 1):
        name = f"{PREFIX}{index}"
        spec = _spec(name, pubkey, image)
        info = _inspect(name)
        ports = _reusable(info, spec) if info else None
        if ports is None:
            if info:
                core.run(["docker", "rm", "-f", "-v", name], timeout=60)
            ports = _start(name, pubkey, spec)
        hosts.append({"name": name, **ports, "user": USER, "container": name})
    for host in hosts:
        _wait_ready(host, key)
    _remove_extra(len(hosts))
    releases = release_archives()
    return {"key": str(key), "hosts": hosts, "releases": releases}


def _wait_ready(host: dict, key: Path) -> None:
    name = host["container"]

    def ready() -> bool:
        info = _inspect(name)
        if not info or not info["State"].get("Running"):
            logs = core.run(["docker", "logs", "--tail", "20", name], check=False)
            raise core.LabError(
                f"droplet {name} is not running; its log:\n{logs.stdout}{logs.stderr}"
            )
        return core.port_open(host["ssh_port"]) and ssh_ok(key, host["ssh_port"])

    core.wait_for(ready, f"ssh deploy@127.0.0.1:{host['ssh_port']} ({name})", timeout=60,
                  interval=0.3)


def _remove_extra(keep: int) -> None:
    """Remove droplets numbered above `keep` (OPS_LAB_DROPLETS was lowered)."""
    names = core.run(["docker", "ps", "-a", "--filter", f"label={core.LABEL}.part=droplets",
                      "--format", "{{.Names}}"], check=False).stdout.split()
    extra = [n for n in names if n.startswith(PREFIX)
             and n[len(PREFIX):].isdigit() and int(n[len(PREFIX):]) > keep]
    if extra:
        core.run(["docker", "rm", "-f", "-v", *extra], timeout=60)


def down(entry: dict) -> None:
    names = [host["container"] for host in entry.get("hosts", [])]
    names += core.run(["docker", "ps", "-aq", "--filter", f"label={core.LABEL}.part=droplets"],
                      check=False).stdout.split()
    if names:
        core.run(["docker", "rm", "-f", "-v", *dict.fromkeys(names)], check=False, timeout=120)


def status(entry: dict) -> dict:
    key = entry.get("key")
    hosts = []
    for host in entry.get("hosts", []):
        info = _inspect(host["container"])
        running = bool(info and info["State"].get("Running"))
        hosts.append({
            "name": host["name"],
            "running": running,
            "ssh": bool(running and key and ssh_ok(key, host["ssh_port"])),
            "nginx": core.port_open(host["nginx_port"]),
        })
    ok = bool(hosts) and all(h["running"] and h["ssh"] and h["nginx"] for h in hosts)
    return {"ok": ok, "hosts": hosts}
