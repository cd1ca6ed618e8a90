"""A private Docker Engine for tests that stop, kill or restart dockerd.

The lab's dockerd (/var/run/docker.sock) is shared by every test running on the machine: a
test that needs to take the daemon away starts its own with `private_dockerd()` and never
touches the shared one.

    with private_dockerd("cr7d", live_restore=False) as daemon:
        daemon.load_images("local/httpapp:v1", "local/httpapp:v2")   # from the shared daemon
        daemon.docker("ps", "-a")                                     # docker -H <own socket> ps -a
        subprocess.run([...], env=daemon.env)                         # DOCKER_HOST=<own socket>
        daemon.kill(signal.SIGKILL); daemon.start()                   # restart it

What is private (nothing is shared with the lab's daemon):
- `--data-root`, `--exec-root` (its own managed containerd and shims live there), `--pidfile`,
  `-H unix://<tmp>/docker.sock`, an empty `--config-file` (/etc/docker/daemon.json is ignored);
- `--bridge <own bridge>`: a Linux bridge this helper creates (`ip link add ... type bridge`)
  with an address from an unused private /24 (checked against the routing table); never
  `--bridge none` (dockerd then deletes docker0) and never docker0;
- NO `--default-address-pool`: when a daemon with address pools and live-restore off starts
  again (a restart, exactly what these tests do), moby's configureNetworking deletes the
  host's `docker0` link by name (removeDefaultBridgeInterface), i.e. the lab daemon's default
  bridge (this happened: the lab's docker0 had to be recreated). Give every network you create
  an explicit subnet from `subnet()` instead (compose: `networks: default: ipam: config:
  [{subnet: ...}]`; CLI: `docker network create --subnet`), so it never takes a subnet the
  lab's daemon could use and close() finds its bridge by address even when the daemon is dead;
  `leftovers()` reports `docker0_gone` if the host's docker0 vanished while the daemon lived;
- `--iptables=false --ip-masq=false --ip-forward=false`: a second dockerd with iptables on
  flushes and rebuilds the DOCKER chains the lab's daemon owns. Without iptables, published
  ports still work through docker-proxy (reach containers only via 127.0.0.1 published
  ports), containers reach themselves, but neither each other across the host's FORWARD
  chain (its policy is DROP here) nor the outside world: fine for images loaded from the
  shared daemon (`load_images`), no build, no pull;
- `--cgroup-parent /<tag>`: its containers' cgroups are not under the lab's /docker.

Not parallel with itself: `private_dockerd()` holds an exclusive flock on
/tmp/ops-runbooks-private-dockerd.lock for its whole life (other sessions wait), and every
name (dirs, bridge, cgroup) is unique anyway.

Clean-up (`close()`, run by the context manager even when the test fails): remove every
container and network of the private daemon, stop it (SIGTERM, then SIGKILL), kill what is
left of it (processes whose command line names its folder: containerd, shims, docker-proxy;
processes in its cgroup), unmount what is mounted under its folder, delete the bridges it
made (its own one and the compose networks' `br-<id>`), remove its cgroups and its folder.
`leftovers()` lists what would still be there; tests assert it is empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

LOCK_PATH = Path("/tmp/ops-runbooks-private-dockerd.lock")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class PrivateDockerdError(Exception):
    """The private daemon could not be started or answered wrongly."""


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True).stdout
    nets = []
    for line in out.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unreachable", "blackhole"):
            dest = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dest, strict=False))
    return nets


def _free_net(candidates) -> ipaddress.IPv4Network:
    used = _routes()
    for net in candidates:
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0):
            return net
    raise PrivateDockerdError("no free private subnet for the private dockerd")


class PrivateDockerd:
    """One private dockerd; see the module docstring."""

    def __init__(self, tag: str = "pd", live_restore: bool = False, extra_args: list[str] | None = None):
        suffix = uuid.uuid4().hex[:6]
        self.tag = f"{tag}-{suffix}"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "dockerd.pid"
        self.socket = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.config_file = self.root / "daemon.json"
        self.config_file.write_text("{}\n")
        self.host = f"unix://{self.socket}"
        self.env = dict(os.environ, DOCKER_HOST=self.host)
        self.bridge = f"{tag[:6]}b{suffix}"[:15]  # IFNAMSIZ
        self.cgroup_parent = f"/{self.tag}"
        self.live_restore = live_restore
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.network_bridges: set[str] = set()
        self.bridge_net = _free_net(ipaddress.ip_network(f"10.199.{n}.0/24") for n in range(10, 250))
        self.subnets: list[ipaddress.IPv4Network] = []
        self._bridge_made = False
        self._had_docker0 = Path("/sys/class/net/docker0").exists()

    # ------------------------------------------------------------ the daemon

    def _create_bridge(self) -> None:
        self._bridge_made = True  # from here on close() deletes it
        address = f"{next(self.bridge_net.hosts())}/{self.bridge_net.prefixlen}"
        subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", address, "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def argv(self) -> list[str]:
        args = ["dockerd", "--config-file", str(self.config_file), "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "--pidfile", str(self.pidfile), "-H", self.host,
                "--bridge", self.bridge, "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                "--cgroup-parent", self.cgroup_parent,
                "--storage-driver", "overlay2", "--shutdown-timeout", "10"]
        if self.live_restore:
            args.append("--live-restore")
        return args + self.extra_args

    def start(self, timeout: float = 60) -> float:
        """Start dockerd and wait until it answers; returns the seconds it took."""
        if self.running():
            raise PrivateDockerdError(f"the private dockerd (pid {self.proc.pid}) is already running")
        if not self._bridge_made:
            self._create_bridge()
        self._forget_zombie_containerd()
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {time.strftime('%T')} live_restore={self.live_restore}\n".encode())
            log.flush()
            # dockerd outlives this call: close() / kill() stop it.
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrivateDockerdError(f"private dockerd exited rc={self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.answers():
                if self._had_docker0 and not Path("/sys/class/net/docker0").exists():
                    raise PrivateDockerdError("the host's docker0 vanished while the private dockerd started: "
                                              "recreate it (ip link add docker0 type bridge, its address, up)")
                return time.monotonic() - started
            time.sleep(0.1)
        raise PrivateDockerdError(f"private dockerd did not answer within {timeout}s:\n{self.log_tail()}")

    def subnet(self) -> str:
        """A free private /24 for a network of this daemon (remembered for the clean-up)."""
        taken = [self.bridge_net, *self.subnets]
        net = _free_net(n for n in (ipaddress.ip_network(f"10.199.{i}.0/24") for i in range(10, 250))
                        if n not in taken)
        self.subnets.append(net)
        return str(net)

    def _forget_zombie_containerd(self) -> None:
        """After `kill -9` of dockerd its containerd dies too (parent-death signal) and stays a zombie
        until PID 1 reaps it. systemd does that at once; this machine's PID 1 takes seconds, and a new
        dockerd takes the zombie's pid for a live containerd and waits for it in vain. Remove the
        pidfile of a zombie (or gone) containerd, which is what a reaping init leaves behind."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        if state in ("Z", "X", "gone"):
            pidfile.unlink(missing_ok=True)

    def answers(self, timeout: float = 5) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", check=False,
                               timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 60) -> float:
        """Send `sig` to dockerd (our own child) and wait for it to exit; returns the seconds it took."""
        if not self.running():
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------ using it

    def docker(self, *args: str, check: bool = True, timeout: float = 120, input_data: bytes | None = None):
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=input_data is None,
                              text=input_data is None, input=input_data, check=check, timeout=timeout,
                              env=self.env)

    def load_images(self, *refs: str) -> None:
        """`docker save refs` from the shared daemon piped into `docker load` of this one."""
        shared_env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        with subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE, env=shared_env) as save:
            loaded = subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                                    capture_output=True, text=True, check=False, env=self.env, timeout=300)
            save.stdout.close()
            save.wait(300)
        if save.returncode != 0 or loaded.returncode != 0:
            raise PrivateDockerdError(f"loading {refs} failed: {loaded.stderr.strip()}")

    def inspect(self, *ids: str) -> list[dict]:
        if not ids:
            return []
        return json.loads(self.docker("inspect", *ids).stdout)

    # ------------------------------------------------------------ clean-up

    def _own_pids(self) -> list[int]:
        """Processes started by this daemon: command line names its folder, or they sit in its cgroup."""
        pids = set()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.root) in cmdline:
                pids.add(int(entry.name))
        for procs in (CGROUP_ROOT / "pids" / self.cgroup_parent.lstrip("/")).glob("**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def _mounts(self) -> list[str]:
        mounts = []
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if point == str(self.root) or point.startswith(f"{self.root}/"):
                    mounts.append(point)
        return mounts

    def _cgroups(self) -> list[Path]:
        return [d for d in CGROUP_ROOT.glob(f"*/{self.cgroup_parent.lstrip('/')}") if d.is_dir()]

    def _links(self) -> list[str]:
        """Our bridge, the bridges of our networks: by name, or by an address in our subnets (also
        when the daemon is dead and cannot be asked)."""
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
        mine = names & ({self.bridge} | self.network_bridges)
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            fields = line.split()
            with contextlib.suppress(IndexError, ValueError):
                address = ipaddress.ip_interface(fields[3]).ip
                if any(address in net for net in (self.bridge_net, *self.subnets)):
                    mine.add(fields[1].split("@")[0])
        return sorted(mine)

    def remember_networks(self) -> None:
        """Note the bridges of the daemon's own networks (br-<id>), to delete them at the end."""
        if not self.running():
            return
        proc = self.docker("network", "ls", "-q", "--no-trunc", "--filter", "driver=bridge", check=False)
        for net_id in proc.stdout.split():
            options = self.docker("network", "inspect", "-f", "{{json .Options}}", net_id, check=False).stdout
            name = (json.loads(options or "{}") or {}).get("com.docker.network.bridge.name")
            if name != self.bridge:
                self.network_bridges.add(name or f"br-{net_id[:12]}")

    def leftovers(self) -> dict:
        """What this daemon left on the host (empty after close())."""
        docker0_gone = self._had_docker0 and not Path("/sys/class/net/docker0").exists()
        return {k: v for k, v in {"pids": self._own_pids(), "mounts": self._mounts(), "links": self._links(),
                                  "cgroups": [str(c) for c in self._cgroups()],
                                  "folder": [str(self.root)] if self.root.exists() else [],
                                  "docker0_gone": docker0_gone}.items() if v}

    def close(self) -> None:
        """Remove everything this daemon made; safe to call twice and after any failure."""
        if self.running():
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", "-v", *ids, check=False)
            self.remember_networks()
            self.docker("network", "prune", "-f", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.kill(signal.SIGTERM, timeout=30)
        if self.running():
            self.kill(signal.SIGKILL, timeout=30)
        for _attempt in range(3):
            pids = self._own_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for point in sorted(self._mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for link in self._links():
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for cgroup in self._cgroups():
            for sub in sorted(cgroup.glob("**/"), key=lambda p: len(str(p)), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_dockerd(tag: str = "pd", live_restore: bool = False, extra_args: list[str] | None = None):
    """Yield a started PrivateDockerd; hold the machine-wide lock; always clean up."""
    with LOCK_PATH.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        daemon = None
        try:
            daemon = PrivateDockerd(tag, live_restore, extra_args)
            daemon.start()
            yield daemon
        finally:
            if daemon is not None:
                daemon.close()
            fcntl.flock(lock, fcntl.LOCK_UN)
