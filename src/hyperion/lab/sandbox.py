"""Network-namespace sandboxes over veth pairs, for the tests, the demo, the benchmarks and by hand.

Two topologies:

  pair     client (<p>-cli) --veth-- host (<p>-host)
           Hyperion attaches to the host's end (<p>h0).
  gateway  client (<p>-cli) --veth-- gateway (<p>-gw) --veth-- server (<p>-srv)
           the gateway forwards; Hyperion attaches to its client-facing end (<p>h0),
           so the server is protected the way a network behind a router is.

In both, `host_ns`/`host_if` name where Hyperion attaches. Every name carries a
per-run prefix so parallel runs never collide. Only documentation addresses are
used (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).

Each sandbox records itself in /run/hyperion/sandboxes/<prefix>.json with the
process that owns it (or none: made by `hyperion sandbox up`, kept until
`down`). A sandbox whose owner died without removing it (a crash, SIGKILL) is
stale: `stale_sandboxes()` finds it and `cleanup_stale()` (run by every
`up()`) removes it. Namespaces with the prefix but no record are listed, never
removed implicitly: a run of older code may still be using them.

Namespaces are entered with `nsenter --net=` (setns), not `ip netns exec`,
which would remount /sys and hide the pinned state in /sys/fs/bpf.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hyperion.errors import HyperionError
from hyperion.fastpath.loader import STATE_ROOT, detach_netns

NAME_PREFIX = "hyp"
NETNS_DIR = Path("/run/netns")
SANDBOX_STATE = STATE_ROOT / "sandboxes"
TOPOLOGIES = ("pair", "gateway")
NS_SUFFIXES = ("-cli", "-host", "-gw", "-srv")
MAX_QUEUES = 16
# Interface names are <prefix> + two characters, within IFNAMSIZ - 1 = 15.
_PREFIX_RE = re.compile(rf"^{NAME_PREFIX}[a-z0-9]{{0,10}}$")

CLIENT_V4, HOST_V4 = "192.0.2.2", "192.0.2.1"
CLIENT_V6, HOST_V6 = "2001:db8:1::2", "2001:db8:1::1"
# Extra client-side sources, routed back by the host through the client.
REMOTE_V4_NETS = ("198.51.100.0/24", "203.0.113.0/24")
REMOTE_V6_NET = "2001:db8:ff00::/40"
# gateway topology: the server's network behind the gateway (the gateway is HOST_V4/HOST_V6 towards the client).
GATEWAY_UPLINK_V4, SERVER_V4 = "198.51.100.1", "198.51.100.2"
GATEWAY_UPLINK_V6, SERVER_V6 = "2001:db8:2::1", "2001:db8:2::2"
SERVER_NET_V4, SERVER_NET_V6 = "198.51.100.0/24", "2001:db8:2::/64"
GATEWAY_REMOTE_V4_NETS = ("203.0.113.0/24",)


class SandboxError(HyperionError):
    """A namespace or link operation failed."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SandboxError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv wrapped to run inside a named network namespace, keeping this mount namespace."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def _process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), None if it is gone: pid + start names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Sandbox:
    """A named topology of network namespaces joined by veth pairs (see the module doc)."""

    prefix: str = field(default_factory=lambda: f"{NAME_PREFIX}{secrets.token_hex(3)}")
    rx_queues: int = 1
    topology: str = "pair"
    # Recorded as the owner: when this process is gone the sandbox counts as stale. False: kept until down().
    owned: bool = True
    # GRO on every veth end: veth then runs NAPI without an XDP program too, so frames from the
    # live-frames generator (XDP_TX, i.e. ndo_xdp_xmit to the peer) reach the peer's stack; without
    # NAPI, veth drops them. Off by default: it changes how plain stack traffic is received.
    gro: bool = False
    # A minimal XDP_PASS on the client's end, which stands for the wire and the client's NIC: a veth
    # hands the frames an XDP program transmits (XDP_TX: Hyperion's DNS answers) only to a peer that
    # runs an XDP program itself (on 6.18, without one it drops them); a NIC sends them from its own
    # ring. Off by default: an XDP program on a veth caps its peer's MTU and channel changes.
    wire_xdp: bool = False

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise SandboxError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {self.topology!r}")
        if not _PREFIX_RE.match(self.prefix):
            raise SandboxError(f"sandbox name {self.prefix!r}: '{NAME_PREFIX}' then at most 10 of a-z0-9")
        if not 1 <= self.rx_queues <= MAX_QUEUES:
            raise SandboxError(f"queues must be between 1 and {MAX_QUEUES}")

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-cli"

    @property
    def host_ns(self) -> str:
        """Where Hyperion attaches: the host (pair) or the gateway (gateway)."""
        return f"{self.prefix}-{'host' if self.topology == 'pair' else 'gw'}"

    @property
    def server_ns(self) -> str:
        self._need_gateway()
        return f"{self.prefix}-srv"

    @property
    def client_if(self) -> str:
        return f"{self.prefix}c0"

    @property
    def host_if(self) -> str:
        return f"{self.prefix}h0"

    @property
    def uplink_if(self) -> str:
        """The gateway's server-facing interface."""
        self._need_gateway()
        return f"{self.prefix}u0"

    @property
    def server_if(self) -> str:
        self._need_gateway()
        return f"{self.prefix}s0"

    @property
    def namespaces(self) -> list[str]:
        if self.topology == "pair":
            return [self.client_ns, self.host_ns]
        return [self.client_ns, self.host_ns, self.server_ns]

    def _need_gateway(self) -> None:
        if self.topology != "gateway":
            raise SandboxError("only the gateway topology has a server")

    # ---- lifecycle -------------------------------------------------------------------------

    def up(self) -> Sandbox:
        """Creates the sandbox; if it is already complete (same topology and queues), does nothing."""
        cleanup_stale()
        if self.is_up():
            return self
        existing = read_state(self.prefix)
        if existing and (existing.get("topology"), existing.get("rx_queues")) != (self.topology, self.rx_queues):
            raise SandboxError(f"sandbox {self.prefix} exists as {existing.get('topology')} with "
                               f"{existing.get('rx_queues')} queue(s); remove it first")
        self.down()  # a partial one (crash during creation): start over
        try:
            self._write_state()
            self._create()
        except BaseException:
            self.down()
            raise
        return self

    def is_up(self) -> bool:
        state = read_state(self.prefix)
        if not state or (state.get("topology"), state.get("rx_queues")) != (self.topology, self.rx_queues):
            return False
        if not all((NETNS_DIR / ns).exists() for ns in self.namespaces):
            return False
        return all(self.exec(ns, ["ip", "link", "show", "dev", ifname], check=False).returncode == 0
                   for ns, ifname in self.links())

    def down(self) -> None:
        """Removes every namespace (which removes the veth pairs) and the record. Safe to call twice."""
        remove_sandbox_namespaces([f"{self.prefix}{s}" for s in NS_SUFFIXES])
        with contextlib.suppress(FileNotFoundError):
            (SANDBOX_STATE / f"{self.prefix}.json").unlink()

    def __enter__(self) -> Sandbox:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _write_state(self) -> None:
        SANDBOX_STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
        pid = os.getpid() if self.owned else None
        state = {"prefix": self.prefix, "topology": self.topology, "rx_queues": self.rx_queues, "gro": self.gro,
                 "wire_xdp": self.wire_xdp, "namespaces": self.namespaces, "owner_pid": pid,
                 "owner_start": _process_start(pid) if pid else None, "created": time.time()}
        tmp = SANDBOX_STATE / f".{self.prefix}.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(SANDBOX_STATE / f"{self.prefix}.json")

    def _create(self) -> None:
        self._create_links()
        if self.gro:
            # Only once both ends are up: set earlier, veth does not start NAPI for XDP frames.
            for ns, ifname in self.links():
                self.exec(ns, ["ethtool", "-K", ifname, "gro", "on"])
        if self.wire_xdp:
            self.exec(self.client_ns, ["ip", "link", "set", "dev", self.client_if, "xdpdrv", "obj",
                                       str(resources.files("hyperion") / "_bpf" / "xdp_pass.bpf.o"), "sec", "xdp"])

    def links(self) -> list[tuple[str, str]]:
        """(namespace, interface) of every veth end."""
        ends = [(self.client_ns, self.client_if), (self.host_ns, self.host_if)]
        if self.topology == "gateway":
            ends += [(self.host_ns, self.uplink_if), (self.server_ns, self.server_if)]
        return ends

    def _create_links(self) -> None:
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
        for ns in self.namespaces:
            self.ip(ns, "link", "set", "lo", "up")
            # Spoofed test sources must not be dropped by reverse-path filtering.
            for conf in ("all", "default"):
                self.exec(ns, ["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"])
        self._veth(self.client_ns, self.client_if, self.host_ns, self.host_if)
        self._address(self.client_ns, self.client_if, CLIENT_V4, CLIENT_V6)
        self._address(self.host_ns, self.host_if, HOST_V4, HOST_V6)
        # Static neighbours: no ARP/ND on the wire, so a blocked source cannot starve address
        # resolution, and the only IP traffic crossing the link is what a test sends.
        self._neighbours(self.client_ns, self.client_if, self.host_ns, self.host_if, (HOST_V4, HOST_V6))
        self._neighbours(self.host_ns, self.host_if, self.client_ns, self.client_if, (CLIENT_V4, CLIENT_V6))
        if self.topology == "pair":
            for net in REMOTE_V4_NETS:
                self.ip(self.host_ns, "route", "add", net, "via", CLIENT_V4)
            self.ip(self.host_ns, "-6", "route", "add", REMOTE_V6_NET, "via", CLIENT_V6)
            return
        gw, srv = self.host_ns, self.server_ns
        self._veth(gw, self.uplink_if, srv, self.server_if)
        self._address(gw, self.uplink_if, GATEWAY_UPLINK_V4, GATEWAY_UPLINK_V6)
        self._address(srv, self.server_if, SERVER_V4, SERVER_V6)
        self._neighbours(gw, self.uplink_if, srv, self.server_if, (SERVER_V4, SERVER_V6))
        self._neighbours(srv, self.server_if, gw, self.uplink_if, (GATEWAY_UPLINK_V4, GATEWAY_UPLINK_V6))
        self.exec(gw, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.exec(gw, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        self.ip(self.client_ns, "route", "add", SERVER_NET_V4, "via", HOST_V4)
        self.ip(self.client_ns, "-6", "route", "add", SERVER_NET_V6, "via", HOST_V6)
        for net in ("192.0.2.0/24", *GATEWAY_REMOTE_V4_NETS):
            self.ip(srv, "route", "add", net, "via", GATEWAY_UPLINK_V4)
        for net in ("2001:db8:1::/64", REMOTE_V6_NET):
            self.ip(srv, "-6", "route", "add", net, "via", GATEWAY_UPLINK_V6)
        for net in GATEWAY_REMOTE_V4_NETS:
            self.ip(gw, "route", "add", net, "via", CLIENT_V4)
        self.ip(gw, "-6", "route", "add", REMOTE_V6_NET, "via", CLIENT_V6)

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        queues = [] if self.rx_queues == 1 else ["numtxqueues", str(self.rx_queues), "numrxqueues", str(self.rx_queues)]
        _run(["ip", "link", "add", if_a, *queues, "netns", ns_a, "type", "veth", "peer", "name", if_b, *queues,
              "netns", ns_b])

    def _address(self, ns: str, ifname: str, v4: str, v6: str) -> None:
        # No duplicate address detection: addresses (link-local too) are usable at once,
        # so the first test packet does not race neighbour discovery.
        self.exec(ns, ["sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0"])
        # No router solicitations (sent 1-4 s after link up, then every 4 s): they would
        # cross the link in the middle of a test and be counted by the fast path.
        self.exec(ns, ["sysctl", "-qw", f"net.ipv6.conf.{ifname}.router_solicitations=0"])
        self.exec(ns, ["sysctl", "-qw", f"net.ipv4.conf.{ifname}.rp_filter=0"])
        self.ip(ns, "addr", "add", f"{v4}/24", "dev", ifname)
        self.ip(ns, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
        self.ip(ns, "link", "set", ifname, "up")

    def _neighbours(self, ns: str, ifname: str, peer_ns: str, peer_if: str, peer_addrs: Sequence[str]) -> None:
        peer_mac = self.mac(peer_ns, peer_if)
        for addr in peer_addrs:
            self.ip(ns, "neigh", "replace", addr, "lladdr", peer_mac, "dev", ifname, "nud", "permanent")

    # ---- use -----------------------------------------------------------------------------

    def mac(self, netns: str, ifname: str) -> str:
        return str(json.loads(self.ip(netns, "-j", "link", "show", ifname).stdout)[0]["address"])

    def add_client_address(self, address: str) -> None:
        """Adds a source address to the client (within REMOTE_*), for traffic from 'another network'."""
        if ":" in address:
            self.ip(self.client_ns, "-6", "addr", "add", f"{address}/128", "dev", self.client_if, "nodad")
        else:
            self.ip(self.client_ns, "addr", "add", f"{address}/32", "dev", self.client_if)

    def ip(self, netns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(in_netns(netns, ["ip", *args]))

    def exec(self, netns: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(in_netns(netns, argv), check=check)

    def popen(self, netns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(in_netns(netns, argv), text=True, **kwargs)

    def describe(self) -> dict[str, Any]:
        """Namespaces, interfaces and addresses, for `hyperion sandbox status` and the benchmark report."""
        nodes: dict[str, Any] = {
            "client": {"netns": self.client_ns, "interfaces": {self.client_if: [CLIENT_V4, CLIENT_V6]}},
        }
        if self.topology == "pair":
            nodes["host"] = {"netns": self.host_ns, "interfaces": {self.host_if: [HOST_V4, HOST_V6]}}
        else:
            nodes["gateway"] = {"netns": self.host_ns, "interfaces": {
                self.host_if: [HOST_V4, HOST_V6], self.uplink_if: [GATEWAY_UPLINK_V4, GATEWAY_UPLINK_V6]}}
            nodes["server"] = {"netns": self.server_ns, "interfaces": {self.server_if: [SERVER_V4, SERVER_V6]}}
        return {"name": self.prefix, "topology": self.topology, "rx_queues": self.rx_queues, "gro": self.gro,
                "attach": {"netns": self.host_ns, "iface": self.host_if}, "nodes": nodes}


_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def entered_netns(netns: str) -> Iterator[None]:
    """Runs the block with this thread in a named network namespace (setns), then returns.

    The mount namespace is untouched, so /sys/fs/bpf stays visible.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as original, open(NETNS_DIR / netns, "rb") as target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise SandboxError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(original.fileno(), _CLONE_NEWNET) != 0:
                raise SandboxError(f"setns back from {netns}: {os.strerror(ctypes.get_errno())}")


def remove_sandbox_namespaces(names: Sequence[str]) -> None:
    """Detaches Hyperion pinned in each namespace, then deletes the namespace."""
    for ns in names:
        path = NETNS_DIR / ns
        if path.exists():
            detach_netns(path.stat().st_ino)
            _run(["ip", "netns", "delete", ns], check=False)


def stale_namespaces(prefix: str = NAME_PREFIX) -> list[str]:
    """Sandbox namespaces (by prefix) that exist now: those of crashed runs, and any in use."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix) and n.endswith(NS_SUFFIXES))


def read_state(prefix: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((SANDBOX_STATE / f"{prefix}.json").read_text()))
    except (FileNotFoundError, ValueError):
        return None


def _owner_alive(state: dict[str, Any]) -> bool | None:
    """True/False for an owned sandbox, None for one kept until `down` (made by the CLI)."""
    pid = state.get("owner_pid")
    if not pid:
        return None
    return _process_start(int(pid)) == state.get("owner_start")


def _sandbox_of(namespace: str) -> str:
    return namespace.rsplit("-", 1)[0]


def list_sandboxes(prefix: str = NAME_PREFIX, processes: bool = False) -> list[dict[str, Any]]:
    """Every sandbox with the prefix: recorded ones and unrecorded namespaces, with their state
    (and, with processes=True, the PIDs living in each namespace)."""
    names = {_sandbox_of(ns) for ns in stale_namespaces(prefix)}
    if SANDBOX_STATE.is_dir():
        names |= {p.stem for p in SANDBOX_STATE.glob(f"{prefix}*.json")}
    result = []
    for name in sorted(names):
        state = read_state(name)
        present = [ns for ns in stale_namespaces(name) if _sandbox_of(ns) == name]
        if state is None:
            status = "unrecorded"
        else:
            alive = _owner_alive(state)
            expected = set(state.get("namespaces", []))
            status = ("stale" if alive is False else
                      "incomplete" if not expected <= set(present) else
                      "up (kept)" if alive is None else "up")
        entry = {"name": name, "status": status, "topology": (state or {}).get("topology"),
                 "rx_queues": (state or {}).get("rx_queues"), "owner_pid": (state or {}).get("owner_pid"),
                 "namespaces": present}
        if processes:
            entry["processes"] = {ns: processes_in_netns(ns) for ns in present}
        result.append(entry)
    return result


def stale_sandboxes(prefix: str = NAME_PREFIX) -> list[str]:
    """Recorded sandboxes whose owning process is gone."""
    return [s["name"] for s in list_sandboxes(prefix) if s["status"] == "stale"]


def cleanup_stale(prefix: str = NAME_PREFIX) -> list[str]:
    """Removes the sandboxes whose owner died without removing them; returns their names."""
    removed = []
    for name in stale_sandboxes(prefix):
        state = read_state(name)
        # The owner may have been replaced by another process with the same pid and start: re-check.
        if state is None or _owner_alive(state) is not False:
            continue
        Sandbox(prefix=name, topology=state.get("topology", "pair"),
                rx_queues=int(state.get("rx_queues", 1))).down()
        removed.append(name)
    return removed


def processes_in_netns(netns: str) -> list[int]:
    """PIDs of processes living in a named namespace (they keep it alive after `ip netns delete`)."""
    try:
        inode = (NETNS_DIR / netns).stat().st_ino
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "ns" / "net").stat().st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)
