"""Building blocks of the benchmarks: receivers (the configurations under test), the in-process
generator, one measured sample, summaries.

A receiver is prepared once (program loaded, policy applied, times recorded), then
attached and detached around each of its samples, so configurations can take turns
(A B C A B C ...) without paying their set-up again. Each receiver names its ground
truth: a counter kept by the receiving side (the veth driver's XDP statistics, the
kernel's UDP "no port" counter, a firewall rule's own counter), never the sender's.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperion.daemon.daemon import DEFAULT_EVENTS_PER_SEC
from hyperion.errors import HyperionError
from hyperion.fastpath.loader import BpfObject
from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.kernel.netdev import ifindex_of
from hyperion.lab.generator import Generator, GeneratorResult, tool_object
from hyperion.lab.sandbox import Sandbox, entered_netns, in_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.model import Policy

from .telemetry import Probes, captured

# The generator and (on veth, where NAPI runs where the frame was sent) the receiver share this CPU.
GENERATOR_CPU = 0
# Upper bound of one sample, whatever its count.
SAMPLE_MAX_SECONDS = 60.0
DRAIN_SECONDS = 0.05
ATTACH_SETTLE_SECONDS = 0.1


class BenchError(HyperionError):
    """A benchmark could not run."""


# ---- ground truth counters ---------------------------------------------------------------


def veth_xdp_drops(sb: Sandbox) -> int:
    """Frames the host veth dropped in XDP, summed over its queues (ethtool -S)."""
    out = sb.exec(sb.host_ns, ["ethtool", "-S", sb.host_if]).stdout
    return sum(int(line.split(":")[1]) for line in out.splitlines()
               if line.strip().startswith("rx_queue_") and line.split(":")[0].endswith("_xdp_drops"))


def udp_no_ports(sb: Sandbox, ipv6: bool = True) -> int:
    """Datagrams the host's stack received for a closed port (Udp6NoPorts / UdpNoPorts): they went all the
    way up the stack."""
    with entered_netns(sb.host_ns):
        if ipv6:
            text = Path("/proc/thread-self/net/snmp6").read_text()
            return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Udp6NoPorts "))
        lines = [line.split() for line in Path("/proc/thread-self/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("NoPorts")])


# ---- receivers -------------------------------------------------------------------------


class Receiver:
    """One configuration under test, on the sandbox's host interface."""

    kind = "none"
    truth = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prog_fd: int | None = None
        self.setup_seconds: dict[str, float] = {}
        self.unavailable: str | None = None
        self.extra: dict[str, Any] = {}  # for the report: what this configuration stands for

    def prepare(self, sb: Sandbox) -> None:
        """One-time set-up (load, compile, apply)."""

    def attach(self, sb: Sandbox) -> None:
        """Before each sample."""

    def detach(self, sb: Sandbox) -> None:
        """After each sample (also on failure)."""

    def count(self, sb: Sandbox) -> int:
        """The ground-truth counter (cumulative)."""
        raise NotImplementedError

    def own_count(self) -> int | None:
        """The configuration's own idea of what it handled (Hyperion's counters), if it has one."""
        return None

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "ground_truth": self.truth,
                "setup_seconds": self.setup_seconds, "unavailable": self.unavailable}


class KernelStack(Receiver):
    """No filter: the kernel stack takes every frame up to UDP, which finds the port closed."""

    kind = "kernel"
    truth = "Udp6NoPorts (datagrams that reached UDP)"

    def count(self, sb: Sandbox) -> int:
        return udp_no_ports(sb)


class IptablesRawDrop(Receiver):
    """ip6tables -t raw PREROUTING -s NET -j DROP (Debian's iptables is the nf_tables backend)."""

    kind = "iptables"
    truth = "the DROP rule's packet counter"

    def __init__(self, name: str, source_net: str) -> None:
        super().__init__(name)
        self.source_net = source_net
        if shutil.which("ip6tables") is None:
            self.unavailable = "ip6tables is not installed (scripts/setup.sh installs iptables)"

    def _rule(self, op: str) -> list[str]:
        return ["ip6tables", "-w", "-t", "raw", op, "PREROUTING", "-s", self.source_net, "-j", "DROP"]

    def attach(self, sb: Sandbox) -> None:
        sb.exec(sb.host_ns, self._rule("-I"))

    def detach(self, sb: Sandbox) -> None:
        sb.exec(sb.host_ns, self._rule("-D"), check=False)
        # The emptied base chain would still be hooked into every later configuration's path.
        if shutil.which("nft"):
            sb.exec(sb.host_ns, ["nft", "delete", "table", "ip6", "raw"], check=False)
        else:
            sb.exec(sb.host_ns, ["ip6tables", "-w", "-t", "raw", "-F"], check=False)

    def count(self, sb: Sandbox) -> int:
        out = sb.exec(sb.host_ns, ["ip6tables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
                      check=False).stdout
        rules = [line.split() for line in out.splitlines()[2:] if "DROP" in line.split()]
        return int(rules[0][0]) if rules else 0


class NftNetdevDrop(Receiver):
    """nftables, netdev family, ingress hook of the host interface: `ip6 saddr NET counter drop`."""

    kind = "nftables"
    truth = "the drop rule's counter"
    table = "hypbench"

    def __init__(self, name: str, source_net: str) -> None:
        super().__init__(name)
        self.source_net = source_net
        if shutil.which("nft") is None:
            self.unavailable = "nft is not installed (scripts/setup.sh installs nftables)"

    def attach(self, sb: Sandbox) -> None:
        ruleset = (f"table netdev {self.table} {{\n  chain ingress {{\n"
                   f"    type filter hook ingress device {sb.host_if} priority 0; policy accept;\n"
                   f"    ip6 saddr {self.source_net} counter drop\n  }}\n}}\n")
        proc = subprocess.run(in_netns(sb.host_ns, ["nft", "-f", "-"]), input=ruleset, capture_output=True,
                              text=True)
        if proc.returncode:
            raise BenchError(f"nft: {proc.stderr.strip()}")

    def detach(self, sb: Sandbox) -> None:
        sb.exec(sb.host_ns, ["nft", "delete", "table", "netdev", self.table], check=False)

    def count(self, sb: Sandbox) -> int:
        out = sb.exec(sb.host_ns, ["nft", "-j", "list", "table", "netdev", self.table], check=False).stdout
        if not out:
            return 0
        for item in json.loads(out).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0


class XdpReceiver(Receiver):
    """An XDP program attached natively to the host veth for each sample (bpf_link; closing it detaches)."""

    kind = "xdp"

    def __init__(self, name: str, truth: str, counter: Callable[[Sandbox], int]) -> None:
        super().__init__(name)
        self.truth = truth
        self._counter = counter
        self._link_fd: int | None = None

    def attach(self, sb: Sandbox) -> None:
        assert self.prog_fd is not None
        opts = libbpf.BpfLinkCreateOpts(sz=ctypes.sizeof(libbpf.BpfLinkCreateOpts), flags=libbpf.XDP_FLAGS_DRV_MODE)
        with entered_netns(sb.host_ns):  # the ifindex means something in that namespace only
            self._link_fd = libbpf.check(libbpf.lib().bpf_link_create(
                self.prog_fd, ifindex_of(sb.host_if), libbpf.BPF_XDP, ctypes.byref(opts)), f"attach {self.name}")
        time.sleep(ATTACH_SETTLE_SECONDS)  # veth re-initialises its rings on attach: frames sent at once may be lost

    def detach(self, sb: Sandbox) -> None:
        if self._link_fd is not None:
            os.close(self._link_fd)
            self._link_fd = None

    def count(self, sb: Sandbox) -> int:
        return self._counter(sb)


class BaselineProgram:
    """A minimal tool program (bpf/tools/) attached natively to an interface of the calling thread's
    network namespace; close() detaches it."""

    def __init__(self, ifname: str, tool: str, program: str) -> None:
        self._obj = BpfObject(tool_object(tool))
        try:
            self._obj.load(None)
            self.prog_fd = self._obj.program_fd(program)
            opts = libbpf.BpfLinkCreateOpts(sz=ctypes.sizeof(libbpf.BpfLinkCreateOpts), flags=libbpf.XDP_FLAGS_DRV_MODE)
            self._link_fd = libbpf.check(libbpf.lib().bpf_link_create(
                self.prog_fd, ifindex_of(ifname), libbpf.BPF_XDP, ctypes.byref(opts)), f"attach {tool}")
        except BaseException:
            self._obj.close()
            raise

    def close(self) -> None:
        os.close(self._link_fd)  # an unpinned link detaches when its last fd closes
        self._obj.close()


class BaselineXdp(XdpReceiver):
    """A minimal tool program from bpf/tools/ (XDP_DROP, XDP_PASS)."""

    kind = "xdp-minimal"

    def __init__(self, name: str, tool: str, program: str, truth: str, counter: Callable[[Sandbox], int]) -> None:
        super().__init__(name, truth, counter)
        self._obj = BpfObject(tool_object(tool))
        self._program = program

    def prepare(self, sb: Sandbox) -> None:
        self._obj.load(None)
        self.prog_fd = self._obj.program_fd(self._program)

    def close(self) -> None:
        self._obj.close()


class HyperionXdp(XdpReceiver):
    """Hyperion's program, loaded unpinned with its own maps, a policy applied once; events at the daemon's
    default budget, as `hyperion run` deploys it."""

    kind = "hyperion"

    def __init__(self, name: str, policy: Callable[[], dict[str, Any]], truth: str,
                 counter: Callable[[Sandbox], int], own: tuple[str, str] | None) -> None:
        super().__init__(name, truth, counter)
        self._policy = policy
        self._own = own
        self.fastpath: FastPath | None = None
        self.entries = 0

    def prepare(self, sb: Sandbox) -> None:
        self.fastpath, self.prog_fd = FastPath.load_detached()
        document = self._policy()
        fast = document.get("fast_path", {})
        self.entries = sum(len(v) for k, v in fast.items() if k in ("drop_ips", "drop_cidrs"))
        start = time.perf_counter()
        policy = Policy.model_validate(document)
        validated = time.perf_counter()
        compiled = PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy)
        compiled_at = time.perf_counter()
        self.fastpath.apply(compiled)
        done = time.perf_counter()
        self.fastpath.set_event_rate(DEFAULT_EVENTS_PER_SEC)
        self.setup_seconds = {"validate": validated - start, "compile": compiled_at - validated,
                              "apply": done - compiled_at}

    def own_count(self) -> int | None:
        if self.fastpath is None or self._own is None:
            return None
        return self.fastpath.counters().get(self._own, (0, 0))[0]

    def close(self) -> None:
        if self.fastpath is not None:
            self.fastpath.close()
            self.fastpath = None


# ---- generator ----------------------------------------------------------------------------


def send_from(netns: str, ifname: str, frames: Sequence[bytes], count: int, sources: Sequence[str] = (),
              cpu: int = GENERATOR_CPU) -> GeneratorResult:
    """Runs the live-frames generator in a thread that enters netns and is pinned to cpu; with several
    sources, each frame's source address is the next of them."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            with entered_netns(netns), Generator(ifname, sources) as gen:
                outcome["result"] = gen.send(frames, count=count, duration=SAMPLE_MAX_SECONDS)
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="generator")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]


# ---- samples -----------------------------------------------------------------------------


@dataclass
class Sample:
    section: str
    config: str
    round: int
    phase: str              # "throughput" (bpf stats off) or "cost" (kernel.bpf_stats_enabled=1)
    sent: int
    received: int           # ground truth: what the receiving side counted
    seconds: float          # generator wall time
    own_count: int | None   # Hyperion's own counter for the same packets, if any
    telemetry: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rx_pps(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def ns_per_pkt(self) -> float | None:
        """The program's own cost per run (bpf_stats), None when stats were off or no program ran."""
        runs = [p["ns_per_run"] for p in self.telemetry.get("bpf", {}).values() if p.get("ns_per_run")]
        return runs[0] if runs else None

    @property
    def counters_agree(self) -> bool | None:
        """Hyperion's own counter against the ground truth: equal, but for stray frames on the link."""
        if self.own_count is None:
            return None
        return self.received <= self.own_count <= self.received + int(self.extra.get("stray_frames", 0))

    def as_dict(self) -> dict[str, Any]:
        return {"section": self.section, "config": self.config, "round": self.round, "phase": self.phase,
                "sent": self.sent, "received": self.received, "seconds": self.seconds, "rx_pps": self.rx_pps,
                "own_count": self.own_count, "counters_agree": self.counters_agree, "ns_per_pkt": self.ns_per_pkt,
                **self.extra,
                "telemetry": self.telemetry}


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the block (it adds two clock reads to every program run)."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(old + "\n")


def measure(sb: Sandbox, section: str, receiver: Receiver, frames: Sequence[bytes], count: int, round_no: int,
            phase: str, sources: Sequence[str] = ()) -> Sample:
    """One sample: attach, count, send, drain, count, detach; telemetry around the sending."""
    receiver.attach(sb)
    try:
        truth0, own0 = receiver.count(sb), receiver.own_count()
        probes = Probes(interfaces=[(sb.client_ns, sb.client_if), (sb.host_ns, sb.host_if)],
                        programs={receiver.name: receiver.prog_fd} if receiver.prog_fd is not None else {})
        with captured(probes) as telemetry:
            gen = send_from(sb.client_ns, sb.client_if, frames, count, sources)
            time.sleep(DRAIN_SECONDS)
        truth1, own1 = receiver.count(sb), receiver.own_count()
    finally:
        receiver.detach(sb)
    own = None if own0 is None or own1 is None else own1 - own0
    # Frames the host veth saw besides the generator's (IPv6 neighbour/MLD chatter): a pass-through
    # counter may count them, the UDP ground truth does not.
    seen = sum(v for k, v in telemetry["ethtool"].get(sb.host_if, {}).items() if k.endswith("_xdp_packets"))
    return Sample(section, receiver.name, round_no, phase, gen.sent, truth1 - truth0, gen.seconds, own, telemetry,
                  {"stray_frames": max(0, seen - gen.sent)})


def interleaved(sb: Sandbox, section: str, receivers: Sequence[Receiver], frames: Sequence[bytes], count: int,
                rounds: int, phase: str = "throughput",
                progress: Callable[[str], None] | None = None, sources: Sequence[str] = ()) -> list[Sample]:
    """rounds x (every available receiver once, in turn)."""
    samples = []
    for round_no in range(rounds):
        for receiver in receivers:
            if receiver.unavailable:
                continue
            sample = measure(sb, section, receiver, frames, count, round_no, phase, sources)
            samples.append(sample)
            if progress:
                progress(f"{section} {phase} r{round_no} {receiver.name}: {sample.rx_pps / 1e6:.3f} Mpps"
                         + (f", {sample.ns_per_pkt:.1f} ns/pkt" if sample.ns_per_pkt else ""))
    return samples


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median with min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def median_of(samples: Sequence[Sample], key: Callable[[Sample], float | None]) -> float | None:
    values = [v for v in (key(s) for s in samples) if v is not None]
    return statistics.median(values) if values else None


def telemetry_summary(samples: Sequence[Sample]) -> dict[str, Any]:
    """Medians over samples of the telemetry that explains a figure."""
    if not samples:
        return {}
    ncpu = len(samples[0].telemetry.get("cpu", []))

    def cpu_median(cpu: int, key: str) -> float:
        return float(statistics.median(s.telemetry["cpu"][cpu][key] for s in samples))

    def softnet_median(cpu: int, key: str) -> float:
        return float(statistics.median(s.telemetry["softnet"][cpu][key] for s in samples))

    def net_rx(cpu: int) -> float:
        return float(statistics.median(s.telemetry["softirqs"].get("NET_RX", [0] * ncpu)[cpu] for s in samples))

    def interrupts(cpu: int) -> float:
        return float(statistics.median(s.telemetry["interrupts"]["per_cpu"][cpu] for s in samples))

    return {"cpu": [{"cpu": c, "busy_pct": cpu_median(c, "busy_pct"), "softirq_pct": cpu_median(c, "softirq_pct"),
                     "system_pct": cpu_median(c, "system_pct"), "user_pct": cpu_median(c, "user_pct"),
                     "softnet_processed": softnet_median(c, "processed"),
                     "softnet_dropped": softnet_median(c, "dropped"),
                     "softnet_time_squeeze": softnet_median(c, "time_squeeze"),
                     "net_rx_softirqs": net_rx(c), "interrupts": interrupts(c)} for c in range(ncpu)]}
