"""A second Docker engine on this machine, for tests of pools with two nodes.

In production each node of a pool is a Docker engine on a host of its own.
Tests imitate a second host with a second dockerd on this one. The main engine
(unix:///var/run/docker.sock) is shared with other test runs and must never be
disturbed, so the second one has its own everything:

- its own Linux bridge for its default network (BRIDGE_ADDRESS) and its own
  range for the networks it creates (ADDRESS_POOL), clear of the main engine's
  10.210.0.0/16 and of every other network on this machine (checked before the
  bridge is made);
- its own API socket, pidfile and exec root (and so its own containerd), and a
  data root under /var/lib, so the images copied into it survive between runs;
- a fallback `unreachable` route for those ranges, so that their traffic
  never follows the default route off this machine;
- `--iptables=false`: a second dockerd with iptables on would rewrite the same
  DOCKER* chains in which the main engine's port forwarding and isolation live.
  Ports are published by docker-proxy instead, so 127.0.0.1:<port> answers as
  usual. (So Docker's own isolation rules do not cover this engine's bridges;
  only scripts/engine-firewall.sh's rules do, which match every `rts*` bridge
  on the host.)
- no `--live-restore`: stopping the engine stops its containers, as a node going
  down takes its instances with it.

One test session at a time owns the engine: an exclusive lock that the kernel
releases when the session's process dies. Starting is safe to repeat and cleans
up after a session that crashed: a dockerd still running with the same command
line is adopted, one with another command line or that never answers is
stopped, a stale pidfile or socket is removed, and an existing bridge is reused.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from requests.exceptions import RequestException

NAME = "docker-rts2"
# Clear of what this machine uses (checked with `ip addr` / `ip route`): the main
# engine's 10.210.0.0/16, the swarm spike's 10.211-10.216 (docs/swarm-notes.md)
# and eth0's 192.0.2.0/24. start() checks again and says so if one is taken.
BRIDGE_ADDRESS = "10.220.0.1/24"
ADDRESS_POOL = "10.221.0.0/16"
# Bridges the project makes per service (services.instance_runtime.service_network_spec):
# they are the engine's own, wherever their subnet lies.
SERVICE_BRIDGE_PREFIXES = ("rtsa", "rtsd")

# The main engine's default bridge. A dockerd started with --default-address-pool
# and without --live-restore deletes the interface "docker0" as it clears its own
# stale default network (moby's removeDefaultBridgeInterface), whatever its
# --bridge: the second engine's start would take the main engine's bridge away.
MAIN_BRIDGE = "docker0"

# Engines this process owns now: the test clean-up removes containers on them too.
_owned: list[SecondEngine] = []


class EngineStartError(RuntimeError):
    """The second engine could not be started; the message says why (and where its log is)."""


class SecondEngine:
    """A dockerd with its own socket, bridge, data root and exec root.

    acquire() takes the engine for this process (waiting for another session
    to finish with it), start()/stop() can then run as often as a test needs,
    and release() gives it up. Nothing here touches the main engine except
    reading images from it in ensure_images().
    """

    def __init__(
        self,
        name: str = NAME,
        *,
        bridge_address: str = BRIDGE_ADDRESS,
        address_pool: str = ADDRESS_POOL,
        log_path: Path | None = None,
    ) -> None:
        if len(name) > 15:
            raise ValueError(f"{name!r} is also the bridge's name, and Linux allows 15 characters")
        self.name = name
        self.bridge = name
        self.bridge_address = ipaddress.ip_interface(bridge_address)
        self.address_pool = ipaddress.ip_network(address_pool)
        self.socket = Path(f"/var/run/{name}.sock")
        self.pidfile = Path(f"/var/run/{name}.pid")
        self.lock_path = Path(f"/var/run/{name}.lock")
        self.exec_root = Path(f"/var/run/{name}")
        self.data_root = Path(f"/var/lib/{name}")
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"{name}.log"
        self._lock_fd: int | None = None
        # The dockerd this object started, to reap it when it exits.
        self._process: subprocess.Popen | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [
            "dockerd",
            f"--host={self.docker_host}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            f"--default-address-pool=base={self.address_pool},size=24",
        ]

    def client(self, timeout: int = 30) -> docker.DockerClient:
        """A new SDK client for this engine (close it when done)."""
        return docker.DockerClient(base_url=self.docker_host, version="auto", timeout=timeout)

    # --- Ownership ----------------------------------------------------------------

    def acquire(self, timeout: float = 900.0) -> None:
        """Take the engine for this process; waits while another session has it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise EngineStartError(
                        f"another test session has held {self.lock_path} for {timeout:g} s"
                    ) from None
                time.sleep(0.5)
        self._lock_fd = fd
        _owned.append(self)

    def release(self) -> None:
        if self._lock_fd is None:
            return
        if self in _owned:
            _owned.remove(self)
        os.close(self._lock_fd)  # closing the only descriptor drops the lock
        self._lock_fd = None

    # --- Start and stop --------------------------------------------------------------

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with closing(self.client(timeout=3)) as client:
                return bool(client.ping())
        except (DockerException, RequestException, OSError):
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Make the engine answer; returns the seconds it took (about 0 when it
        already did). Safe to repeat; containers it had stay as they were (the
        ones its stop ended stay exited)."""
        self._require_owned()
        began = time.monotonic()
        running = self._dockerd_pids()
        if running == [self._pidfile_pid()] and self._cmdline(running[0]) == self.command():
            # Ours, perhaps left by a session that crashed, perhaps still starting.
            if self._wait_until_answering(running[0], timeout):
                return time.monotonic() - began
        for pid in running:
            self._terminate(pid, timeout)
        # No dockerd of ours runs now: its pidfile and socket are stale (a
        # pidfile naming a live process, after PID reuse, stops dockerd from starting).
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        self._bridge_ensure()
        self._fallback_routes_ensure()
        main_bridge = _link_addresses(MAIN_BRIDGE)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C of pytest does not reach it, and stop() ends it in order.
            self._process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        answered = self._wait_until_answering(self._process.pid, timeout)
        _main_bridge_restore(main_bridge)
        if not answered:
            self._terminate(self._process.pid, 15)
            raise EngineStartError(
                f"{self.name} did not answer on {self.docker_host} within {timeout:g} s; "
                f"last lines of {self.log_path}:\n{self._log_tail()}"
            )
        return time.monotonic() - began

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM the engine and wait until it has exited (its containers stop
        with it); returns the seconds it took. Safe to repeat."""
        self._require_owned()
        began = time.monotonic()
        for pid in self._dockerd_pids():
            self._terminate(pid, timeout)
        return time.monotonic() - began

    def _require_owned(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError(f"acquire() {self.name} before starting or stopping it")

    def _wait_until_answering(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return True
            if not self._is_alive(pid):
                return False
            time.sleep(0.1)
        return False

    def _terminate(self, pid: int, timeout: float) -> None:
        """SIGTERM, and SIGKILL if it is still there after `timeout` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self._is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._is_alive(pid):
                break
        if self._process is not None and self._process.pid == pid:
            self._process.wait(timeout=10)
            self._process = None

    def _is_alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        try:
            # Field 3 of stat is the state; a zombie is dead, waiting for its parent.
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def _dockerd_pids(self) -> list[int]:
        """Live dockerd processes serving this engine's socket or writing its pidfile."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = self._cmdline(int(entry.name))
            if not argv or os.path.basename(argv[0]) != "dockerd":
                continue
            if self._flag(argv, "--host") == self.docker_host or self._flag(argv, "--pidfile") == str(self.pidfile):
                if self._is_alive(int(entry.name)):
                    pids.append(int(entry.name))
        return pids

    @staticmethod
    def _flag(argv: list[str], name: str) -> str | None:
        for index, arg in enumerate(argv):
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
        return None

    @staticmethod
    def _cmdline(pid: int) -> list[str]:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- The bridge -------------------------------------------------------------------

    def own_ranges(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The address ranges this engine hands out (each gets a fallback route)."""
        return (self.bridge_address.network, self.address_pool)

    def own_devices(self) -> tuple[str, ...]:
        """Interfaces this engine makes, whose routes may lie in its own ranges."""
        return (self.bridge,)

    def _bridge_ensure(self) -> None:
        """The engine's default bridge, up and with its address; an existing one is reused."""
        self._check_ranges_free()
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _ip("link", "add", "name", self.bridge, "type", "bridge")
        addresses = _ip("-o", "-4", "addr", "show", "dev", self.bridge).split()
        if str(self.bridge_address) not in addresses:
            _ip("addr", "flush", "dev", self.bridge)
            _ip("addr", "add", str(self.bridge_address), "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _fallback_routes_ensure(self) -> None:
        """Keep traffic for the engine's ranges on this machine when no bridge
        holds the address it is meant for (a bridge went, or lost its address to
        another engine's network of the same bridge name): an `unreachable`
        route that every bridge's own route outranks, instead of the default
        route out of the machine."""
        for network in self.own_ranges():
            _ip("route", "replace", "unreachable", str(network), "metric", "1000")

    def _check_ranges_free(self) -> None:
        """Fail before anything is made when another network of this machine
        overlaps the bridge or the address pool (they would shadow each other's routes)."""
        ours = self.own_ranges()
        for line in _ip("-o", "-4", "route", "show").splitlines():
            words = line.split()
            if not words or words[0] == "default" or "dev" not in words:
                continue
            device = words[words.index("dev") + 1]
            if device in self.own_devices() or device.startswith(SERVICE_BRIDGE_PREFIXES):
                continue
            try:
                routed = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                continue
            for network in ours:
                if routed.overlaps(network):
                    raise EngineStartError(
                        f"{network} (for {self.name}) overlaps {routed} on {device}: "
                        f"choose other BRIDGE_ADDRESS / ADDRESS_POOL in tests/engines.py"
                    )

    # --- What runs on it -------------------------------------------------------------

    def reset(self) -> None:
        """Remove every container and user-made network on the engine. Only this
        session can be using it (it holds the lock), so whatever is there was
        left by an earlier session."""
        with closing(self.client()) as client:
            for container in client.containers.list(all=True, ignore_removed=True):
                try:
                    container.remove(force=True)
                except NotFound:
                    pass
            for network in client.networks.list():
                if network.name not in ("bridge", "host", "none"):
                    try:
                        network.remove()
                    except NotFound:
                        pass

    def ensure_images(self, source_host: str, images: Iterable[str]) -> list[str]:
        """Copy each image from the engine at `source_host` (docker save | docker
        load) unless this engine has the same image under that name already;
        returns the ones copied."""
        copied = []
        source = docker.DockerClient(base_url=source_host, version="auto", timeout=300)
        with closing(source), closing(self.client(300)) as own:
            for name in images:
                wanted = source.images.get(name)
                try:
                    if own.images.get(name).id == wanted.id:
                        continue
                except ImageNotFound:
                    pass
                # Through a file: the engine reads the whole archive before it answers.
                with tempfile.TemporaryFile() as archive:
                    for chunk in wanted.save(named=name):
                        archive.write(chunk)
                    archive.seek(0)
                    own.images.load(archive)
                copied.append(name)
        return copied


SWARM_NAME = "docker-swarm"
# Clear of the ranges above and of the spike's (checked as for SecondEngine).
SWARM_BRIDGE_ADDRESS = "10.222.0.1/24"
SWARM_ADDRESS_POOL = "10.223.0.0/16"
# Swarm-scoped networks (ingress, overlays): the default would be 10.0.0.0/8,
# which holds every other range here.
SWARM_NETWORK_POOL = "10.224.0.0/16"
# The bridge Swarm makes on each node for its tasks' overlay traffic; Swarm fixes its name.
SWARM_GATEWAY_BRIDGE = "docker_gwbridge"
SWARM_INGRESS_NETWORK = "ingress"


class SwarmEngine(SecondEngine):
    """A second engine that is the one node, and the manager, of a swarm of its own.

    The swarm listens and advertises on 127.0.0.1 only, and its networks come
    from a range of their own with a fallback route like the engine's. Tasks
    publish host-mode ports (the routing mesh needs IPVS, which this kernel
    lacks), so they answer on 127.0.0.1:<published port>.
    """

    def __init__(
        self,
        name: str = SWARM_NAME,
        *,
        bridge_address: str = SWARM_BRIDGE_ADDRESS,
        address_pool: str = SWARM_ADDRESS_POOL,
        swarm_address_pool: str = SWARM_NETWORK_POOL,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(name, bridge_address=bridge_address, address_pool=address_pool, log_path=log_path)
        self.swarm_address_pool = ipaddress.ip_network(swarm_address_pool)

    def own_ranges(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return (*super().own_ranges(), self.swarm_address_pool)

    def own_devices(self) -> tuple[str, ...]:
        return (*super().own_devices(), SWARM_GATEWAY_BRIDGE)

    def swarm_state(self) -> str:
        """The engine's LocalNodeState: inactive, pending, active, error or locked."""
        with closing(self.client()) as client:
            return str(client.info()["Swarm"]["LocalNodeState"])

    def swarm_init(self) -> float:
        """Make the engine the manager of a new single-node swarm, leaving any
        swarm an earlier session left; returns the seconds it took."""
        self._require_owned()
        began = time.monotonic()
        self.swarm_leave()
        with closing(self.client()) as client:
            client.api.init_swarm(
                advertise_addr="127.0.0.1",
                listen_addr="127.0.0.1:2377",
                data_path_addr="127.0.0.1",
                default_addr_pool=[str(self.swarm_address_pool)],
                subnet_size=24,
            )
            # The routing mesh's network: useless here (no IPVS in this kernel;
            # tasks publish host-mode ports), and its VXLAN socket is the one
            # thing of the swarm that listens on 0.0.0.0 (udp 4789).
            client.api.remove_network(SWARM_INGRESS_NETWORK)
        return time.monotonic() - began

    def swarm_leave(self) -> float:
        """Leave the swarm (its services go with it) and remove the gateway
        bridge's network; returns the seconds it took. Safe to repeat."""
        self._require_owned()
        began = time.monotonic()
        with closing(self.client(timeout=60)) as client:
            if client.info()["Swarm"]["LocalNodeState"] != "inactive":
                client.api.leave_swarm(force=True)
            for network in client.networks.list(names=[SWARM_GATEWAY_BRIDGE]):
                try:
                    network.remove()
                except NotFound:
                    pass
        return time.monotonic() - began

    def reset(self) -> None:
        """Leave the swarm first: while the engine is in one, its swarm networks cannot be removed."""
        self.swarm_leave()
        super().reset()


def owned_engines() -> list[SecondEngine]:
    """The second engines this process holds (the test clean-up covers them too)."""
    return list(_owned)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise EngineStartError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _link_addresses(name: str) -> list[str] | None:
    """The IPv4 addresses of an interface, or None when there is no such interface."""
    if not Path(f"/sys/class/net/{name}").exists():
        return None
    return [part for part in _ip("-o", "-4", "addr", "show", "dev", name).split() if "/" in part]


def _main_bridge_restore(addresses: list[str] | None) -> None:
    """Put the main engine's default bridge back as it was, if the start took it away."""
    if addresses is None or Path(f"/sys/class/net/{MAIN_BRIDGE}").exists():
        return
    _ip("link", "add", "name", MAIN_BRIDGE, "type", "bridge")
    for address in addresses:
        _ip("addr", "add", address, "dev", MAIN_BRIDGE)
    _ip("link", "set", MAIN_BRIDGE, "up")
    # The main engine runs without the userland proxy: its ports published on
    # 127.0.0.1 are NAT rules, which need the bridge to route loopback addresses
    # (dockerd set this when it made the bridge).
    Path(f"/proc/sys/net/ipv4/conf/{MAIN_BRIDGE}/route_localnet").write_text("1\n")
