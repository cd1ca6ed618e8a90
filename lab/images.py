"""Container images of the lab, built locally (no registry can be reached here).

    local/debian:bookworm     debootstrap minbase + python3 + the host's extra CA certs
    local/httpapp:v1|v2|broken busybox httpd on :8080 (FROM scratch, ~2 MB)
    local/httpapp:crashy      FROM local/httpapp:v2: healthy, then exits (rc 1) after 10 s
    local/nginx:bookworm      nginx-light on local/debian:bookworm (a compose project's proxy)
    local/droplet:bookworm    sshd + sudo `deploy` user + nginx + node/npm/pm2 + pg/redis clients
    local/labapp:<tag>        lab/app (Node.js) on Debian's nodejs

Every image carries the label `ops.runbooks.lab=1` and `ops.runbooks.lab.hash=<sha256>` of
its build recipe (build context files, build args, parent image id). An image is built only
when its tag is missing or its hash label differs, so a changed Dockerfile rebuilds and an
unchanged one never does. `build_all()` builds what is missing; `lab.docker.prune_images()`
removes them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import core

IMAGES_DIR = Path(__file__).resolve().parent / "images"
APP_DIR = core.APP_DIR
HASH_LABEL = f"{core.LABEL}.hash"
MIRROR = os.environ.get("OPS_LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
BUSYBOX = Path("/bin/busybox")

DEBIAN = "local/debian:bookworm"
DROPLET = "local/droplet:bookworm"
HTTPAPP = "local/httpapp"
HTTPAPP_VERSIONS = ("v1", "v2", "broken")
HTTPAPP_CRASHY = f"{HTTPAPP}:crashy"
NGINX = "local/nginx:bookworm"
LABAPP = "local/labapp"
LABAPP_TAGS = ("v1", "v2")
DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,ca-certificates", "bookworm")


def log(msg: str) -> None:
    print(f"[lab images] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- helpers


def image_info(tag: str) -> dict | None:
    """`docker image inspect` of tag, or None when it does not exist."""
    proc = core.run(["docker", "image", "inspect", tag], check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def image_id(tag: str) -> str | None:
    info = image_info(tag)
    return info["Id"] if info else None


def _labels(info: dict) -> dict:
    return (info.get("Config") or {}).get("Labels") or {}


def _hash_file(path: Path, name: str, digest) -> None:
    """Feed name, mode and content (or symlink target) of one file."""
    digest.update(name.encode() + b"\0")
    if path.is_symlink():
        digest.update(b"L" + os.readlink(path).encode() + b"\0")
        return
    digest.update(b"X" if os.access(path, os.X_OK) else b"F")
    with path.open("rb") as handle:
        for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(b"\0")


def _hash_tree(root: Path, prefix: str, digest) -> None:
    """_hash_file for every file under root, named prefix/<relative path>, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            _hash_file(path, f"{prefix}/{path.relative_to(root).as_posix()}", digest)


def recipe_hash(context: Path | None, files: dict[str, Path] | None = None,
                dirs: dict[str, Path] | None = None, **extra) -> str:
    """Hash of a build context (dir + extra files/dirs as placed in it) and extra data."""
    digest = hashlib.sha256()
    if context is not None:
        _hash_tree(context, ".", digest)
    for dest, src in sorted((files or {}).items()):
        _hash_file(src, f"./{dest}", digest)
    for dest, src in sorted((dirs or {}).items()):
        _hash_tree(src, f"./{dest}", digest)
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _current(tag: str, wanted_hash: str, force: bool) -> str | None:
    """Id of tag if it exists with the wanted hash (and not forced), else None."""
    if force:
        return None
    info = image_info(tag)
    if info and _labels(info).get(HASH_LABEL) == wanted_hash:
        return info["Id"]
    if info:
        log(f"{tag}: recipe changed, rebuilding")
    return None


def _require_parent(tag: str) -> str:
    parent = image_id(tag)
    if not parent:
        raise core.LabError(f"base image {tag} is missing: run lab.images.build_debian() first")
    return parent


def docker_build(tag: str, context: Path, wanted_hash: str, build_args: dict | None = None,
                 timeout: int = 1200) -> str:
    """Classic `docker build` of context; labels; removes failed build containers."""
    cmd = ["docker", "build", "--force-rm", "-t", tag,
           "--label", f"{core.LABEL}=1", "--label", f"{HASH_LABEL}={wanted_hash}"]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd.append(str(context))
    log(f"building {tag} ...")
    old_id = image_id(tag)
    start = time.monotonic()
    env = {"DOCKER_BUILDKIT": "0"}  # no buildx here: use the classic builder, quietly
    proc = core.run(cmd, check=False, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise core.LabError(
            f"docker build of {tag} failed (rc={proc.returncode}); fix "
            f"{context} or the network to deb.debian.org/npm, then rerun.\n{tail}"
        )
    new_id = image_id(tag)
    if not new_id:
        raise core.LabError(f"docker build of {tag} reported success but the tag is missing")
    log(f"built {tag} in {time.monotonic() - start:.1f}s ({new_id[7:19]})")
    if old_id and old_id != new_id:  # drop the replaced image unless something still uses it
        core.run(["docker", "rmi", old_id], check=False)
    return new_id


# ---------------------------------------------------------------- local/debian


def _umount_below(root: Path) -> None:
    """Unmount anything debootstrap left mounted under root (before deleting it)."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        core.run(["umount", "-l", mount], check=False)


def _debian_hash() -> str:
    certs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(HOST_CA_DIR.glob("*.crt"))}
    return recipe_hash(IMAGES_DIR / "debian", debootstrap=DEBOOTSTRAP_ARGS, mirror=MIRROR,
                       certs=certs)


def build_debian(force: bool = False) -> str:
    """local/debian:bookworm from debootstrap + the host's CA certs; returns the image id."""
    wanted = _debian_hash()
    existing = _current(DEBIAN, wanted, force)
    if existing:
        return existing
    if not shutil.which("debootstrap"):
        raise core.LabError("debootstrap is missing: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise core.LabError("building local/debian:bookworm needs root (debootstrap, chroot)")
    tmp = Path(tempfile.mkdtemp(prefix="ops-lab-debian-"))
    rootfs = tmp / "rootfs"
    try:
        log(f"debootstrap bookworm from {MIRROR} (about a minute) ...")
        start = time.monotonic()
        proc = core.run(["debootstrap", *DEBOOTSTRAP_ARGS, rootfs, MIRROR],
                        check=False, timeout=1200)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            debootstrap_log = rootfs / "debootstrap" / "debootstrap.log"
            if debootstrap_log.exists():
                tail += "\n" + "\n".join(debootstrap_log.read_text().splitlines()[-15:])
            raise core.LabError(
                f"debootstrap failed (rc={proc.returncode}); check that {MIRROR} is "
                f"reachable (or set OPS_LAB_DEBIAN_MIRROR).\n{tail}\n{proc.stderr.strip()}"
            )
        log(f"debootstrap done in {time.monotonic() - start:.1f}s")
        ca_dir = rootfs / "usr/local/share/ca-certificates"
        ca_dir.mkdir(parents=True, exist_ok=True)
        for cert in sorted(HOST_CA_DIR.glob("*.crt")):
            shutil.copy2(cert, ca_dir / cert.name)
        shutil.copy2(IMAGES_DIR / "debian" / "setup.sh", rootfs / "tmp" / "lab-setup.sh")
        core.run(["chroot", rootfs, "/bin/sh", "/tmp/lab-setup.sh"], timeout=300)
        log("importing rootfs ...")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            imp = subprocess.run(
                ["docker", "import",
                 "-c", f"LABEL {core.LABEL}=1",
                 "-c", f"LABEL {HASH_LABEL}={wanted}",
                 "-c", "ENV LANG=C.UTF-8",
                 "-c", 'CMD ["/bin/bash"]',
                 "-", DEBIAN],
                stdin=tar.stdout, capture_output=True, text=True, timeout=600, check=False,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise core.LabError(f"docker import of {DEBIAN} failed: {imp.stderr.strip()}")
    finally:
        _umount_below(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    new_id = image_id(DEBIAN)
    if not new_id:
        raise core.LabError(f"docker import reported success but {DEBIAN} is missing")
    log(f"built {DEBIAN} ({new_id[7:19]})")
    return new_id


# ---------------------------------------------------------------- contexts


def _staged_build(tag: str, name: str, extra_files: dict[str, Path] | None = None,
                  extra_dirs: dict[str, Path] | None = None, build_args: dict | None = None,
                  parent: str | None = None, force: bool = False) -> str:
    """Build lab/images/<name> (+ extra files/dirs copied in) unless current; image id."""
    parent_id = _require_parent(parent) if parent else None
    wanted = recipe_hash(IMAGES_DIR / name, files=extra_files, dirs=extra_dirs,
                         args=build_args or {}, parent=parent_id)
    existing = _current(tag, wanted, force)
    if existing:
        return existing
    with tempfile.TemporaryDirectory(prefix=f"ops-lab-{name}-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(IMAGES_DIR / name, context, symlinks=True)
        for dest, src in (extra_files or {}).items():
            shutil.copy2(src, context / dest)
        for dest, src in (extra_dirs or {}).items():
            shutil.copytree(src, context / dest, symlinks=True)
        return docker_build(tag, context, wanted, build_args)


def build_httpapp(version: str = "v1", force: bool = False) -> str:
    """local/httpapp:<version> (v1, v2 or broken); returns the image id."""
    if version not in HTTPAPP_VERSIONS:
        raise core.LabError(f"unknown httpapp version {version!r}: use one of {HTTPAPP_VERSIONS}")
    if not BUSYBOX.exists():
        raise core.LabError(f"{BUSYBOX} is missing: apt-get install -y busybox-static")
    return _staged_build(f"{HTTPAPP}:{version}", "httpapp", extra_files={"busybox": BUSYBOX},
                         build_args={"VERSION": version}, force=force)


# Serves like v2 and passes its HEALTHCHECK, then dies 10 s after start: a release that a
# readiness gate lets through and only a soak period catches. Run it with `init: true`.
CRASHY_DOCKERFILE = f"""\
FROM {HTTPAPP}:v2
LABEL org.opencontainers.image.version="crashy"
CMD ["sh", "-c", "httpd -p 8080 -h /www; sleep 10; echo 'crashy: exiting after 10 s' >&2; exit 1"]
"""

NGINX_DOCKERFILE = f"""\
FROM {DEBIAN}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
        nginx-light && rm -rf /var/lib/apt/lists/* \\
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""


def _inline_build(tag: str, dockerfile: str, parent: str, force: bool = False) -> str:
    """Build tag from an inline Dockerfile on top of parent (an image the lab builds)."""
    parent_id = _require_parent(parent)
    wanted = recipe_hash(None, dockerfile=dockerfile, parent=parent_id)
    existing = _current(tag, wanted, force)
    if existing:
        return existing
    with tempfile.TemporaryDirectory(prefix="ops-lab-inline-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        return docker_build(tag, Path(tmp), wanted)


def build_httpapp_crashy(force: bool = False) -> str:
    """local/httpapp:crashy (builds local/httpapp:v2 first if needed)."""
    build_httpapp("v2")
    return _inline_build(HTTPAPP_CRASHY, CRASHY_DOCKERFILE, f"{HTTPAPP}:v2", force)


def build_nginx(force: bool = False) -> str:
    """local/nginx:bookworm (builds local/debian:bookworm first if needed)."""
    build_debian()
    return _inline_build(NGINX, NGINX_DOCKERFILE, DEBIAN, force)


def build_droplet(force: bool = False) -> str:
    """local/droplet:bookworm (builds local/debian:bookworm first if needed)."""
    build_debian()
    return _staged_build(DROPLET, "droplet", parent=DEBIAN, force=force)


def build_labapp(tag: str = "v1", force: bool = False) -> str | None:
    """local/labapp:<tag> from lab/app (APP_VERSION=<tag>); None when lab/app is absent."""
    if not (APP_DIR / "package.json").exists():
        log(f"{APP_DIR}/package.json not found: skipping {LABAPP}:{tag}")
        return None
    if _has_dependencies(APP_DIR / "package.json"):
        core.ensure_app_node_modules()
    build_debian()
    return _staged_build(f"{LABAPP}:{tag}", "labapp", extra_dirs={"app": APP_DIR},
                         build_args={"APP_VERSION": tag}, parent=DEBIAN, force=force)


def _has_dependencies(package_json: Path) -> bool:
    try:
        data = json.loads(package_json.read_text())
    except ValueError:
        return False
    return bool(data.get("dependencies"))


def require(state: dict, tag: str) -> str:
    """The id of an image the docker part built (`python -m lab up` brings docker up first)."""
    image = ((state.get("docker") or {}).get("images") or {}).get(tag)
    if not image:
        raise core.LabError(f"image {tag} is not built: bring up the docker part (`python -m lab up docker`)")
    return image


def build_all(force: bool = False) -> dict[str, str]:
    """Build every lab image that is missing or out of date; {tag: image id}."""
    ids = {DEBIAN: build_debian(force)}
    for version in HTTPAPP_VERSIONS:
        ids[f"{HTTPAPP}:{version}"] = build_httpapp(version, force)
    ids[HTTPAPP_CRASHY] = build_httpapp_crashy(force)
    ids[NGINX] = build_nginx(force)
    ids[DROPLET] = build_droplet(force)
    for tag in LABAPP_TAGS:
        app_id = build_labapp(tag, force)
        if app_id:
            ids[f"{LABAPP}:{tag}"] = app_id
    return ids


if __name__ == "__main__":
    print(json.dumps(build_all(force="--force" in sys.argv[1:]), indent=2))
