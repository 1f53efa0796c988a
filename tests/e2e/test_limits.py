"""Limits with a defined, counted outcome (issue 12, defect 8).

- A redirect-class frame larger than an AF_XDP UMEM frame cannot be received by the socket
  (the kernel drops it in xsk_rcv): the program takes the class's on_failure fallback,
  counted as redirect_oversize, instead of redirecting it into a drop.
- RX queues beyond the program's queue capacity (xsk_map, queue state and counters) take the
  class fallback, counted as queue_over_capacity; the slow path serves the queues below it.
- Slow-path events waiting for the sink are bounded; what the bound refuses is counted.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.daemon.metrics import _slowpath_families_of
from hyperion.errors import HyperionError, SlowPathError
from hyperion.fastpath.program import FastPath, ifindex_of
from hyperion.kernel.abi import Abi
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.generator import Generator, TrafficSpec
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.slowpath import supervisor as slowpath
from hyperion.slowpath.supervisor import SlowPath
from tests.conftest import program_with_policy
from tests.netutil import UDPTOOL, Daemon, Receiver, counter, scrape, send, status, wait_for
from tests.test_slowpath import dig
from tests.test_telemetry import parse_metrics

POLICY = """
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: udp, port: 9999, on_failure: pass}
"""
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
# The kernel puts XDP_PACKET_HEADROOM (256) in front of every frame it copies into a UMEM chunk,
# and the socket then refuses frames longer than the rest (net/xdp/xsk.c, __xsk_rcv).
XDP_PACKET_HEADROOM = 256


def udp_frame(dport: int, total_length: int) -> bytes:
    header = ETH / IP(src="198.51.100.10", dst="192.0.2.1") / UDP(sport=40000, dport=dport)
    frame = bytes(header / Raw(b"q" * (total_length - len(header))))
    assert len(frame) == total_length
    return frame


def count(fastpath: Any, verdict: str, reason: str) -> int:
    return int(fastpath.counters().get((verdict, reason), (0, 0))[0])


def max_redirect_length(abi: Abi) -> int:
    return abi.capacity["umem_frame_bytes"] - XDP_PACKET_HEADROOM


def test_umem_frame_size_comes_from_the_abi(abi: Abi) -> None:
    """One definition: the workers' UMEM frames are the size the program checks against."""
    from hyperion import _slowpath
    assert abi.capacity["umem_frame_bytes"] == _slowpath.UMEM_FRAME_SIZE == 4096


def test_queue_beyond_the_capacity_takes_the_fallback(sandbox: Sandbox, abi: Abi) -> None:
    """A device with one more RX queue than the program's capacity (veth allows up to 4096): a
    redirect-class packet on the last queue takes the fallback, counted as queue_over_capacity."""
    cap = abi.capacity["queues"]
    name = f"{sandbox.prefix}q0"
    sandbox.exec(sandbox.host_ns, ["ip", "link", "add", name, "numtxqueues", str(cap + 1), "numrxqueues",
                                   str(cap + 1), "type", "veth", "peer", "name", f"{sandbox.prefix}q1",
                                   "numtxqueues", str(cap + 1), "numrxqueues", str(cap + 1)])
    with entered_netns(sandbox.host_ns), program_with_policy(POLICY) as (fastpath, prog_fd):
        ifindex = ifindex_of(name)
        frame = udp_frame(53, 100)
        assert run_xdp(prog_fd, frame, ingress_ifindex=ifindex, rx_queue_index=cap).action == "drop"
        assert count(fastpath, "drop", "queue_over_capacity") == 1
        assert run_xdp(prog_fd, udp_frame(9999, 100), ingress_ifindex=ifindex, rx_queue_index=cap).action == "pass"
        assert count(fastpath, "pass", "queue_over_capacity") == 1
        # The last queue within the capacity is still redirected (no socket: redirect_failed).
        assert run_xdp(prog_fd, frame, ingress_ifindex=ifindex, rx_queue_index=cap - 1).action == "drop"
        assert count(fastpath, "drop", "redirect_failed") == 1
        assert count(fastpath, "drop", "queue_over_capacity") == 1


def test_served_queues_stop_at_the_capacity() -> None:
    assert slowpath.served_queues(4, None, 256) == [0, 1, 2, 3]
    assert slowpath.served_queues(300, None, 256) == list(range(256))
    assert slowpath.served_queues(300, [0, 7], 256) == [0, 7]
    with pytest.raises(SlowPathError, match=r"queue 256 is beyond the fast path's capacity of 256 RX queues"):
        slowpath.served_queues(300, [0, 256], 256)


class _NoFastPath:
    """SlowPath's constructor keeps its fast path for later; these tests never start it."""


def _events(count: int) -> list[list[Any]]:
    return [[0, 0, 0, 4, 17, 40000 + i % 1000, 53, 1, "c6336407", "c0000201", "evil.com"] for i in range(count)]


def test_pending_slowpath_events_are_bounded_and_what_is_refused_is_counted() -> None:
    policy = parse_policy("slow_path:\n  dns_rules:\n    - {match: evil.com, action: drop}\n")
    received: list[dict[str, Any]] = []
    sp = SlowPath(_NoFastPath(), "lo", policy, event_sink=received.append)  # type: ignore[arg-type]
    sp._queue_events(0, 1, _events(slowpath.MAX_PENDING_EVENTS - 5))
    sp._queue_events(0, 1, _events(25))
    assert len(sp._pending_events) == slowpath.MAX_PENDING_EVENTS
    assert sp.events_dropped == 20
    families = {f.name: f for f in _slowpath_families_of(sp)}
    [sample] = families["hyperion_slowpath_events_dropped"].samples
    assert sample.value == 20
    assert sp.pump_events() == slowpath.MAX_PENDING_EVENTS
    assert len(received) == slowpath.MAX_PENDING_EVENTS and received[0]["qname"] == "evil.com"
    # Drained: room again, and the count of refused events stays.
    sp._queue_events(0, 1, _events(3))
    assert len(sp._pending_events) == 3 and sp.events_dropped == 20


def test_served_queues_error_is_a_hyperion_error() -> None:
    with pytest.raises(HyperionError):
        slowpath.served_queues(2, [5], 4)


# ---- a UMEM frame size of 2048 bytes, so BPF_PROG_TEST_RUN's linear frames can exceed it ----------------

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


@pytest.fixture(scope="module")
def small_frame_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The program built with 2048-byte UMEM frames: the kernel's test runs hand a program at most
    about 3.5 KB of linear data, less than a default 4096-byte frame holds."""
    out = tmp_path_factory.mktemp("bpf2048")
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), f"OUT={out}", "EXTRA_BPF_CFLAGS=-DHYP_UMEM_FRAME_SIZE=2048",
                    f"{out}/hyperion.bpf.o"], check=True, capture_output=True)
    return out / "hyperion.bpf.o"


@pytest.mark.parametrize("dport,on_failure_verdict,action", [(53, "drop", "drop"), (9999, "pass", "pass")])
def test_frame_larger_than_a_umem_frame_takes_the_fallback(kernel: None, small_frame_object: Path, dport: int,
                                                            on_failure_verdict: str, action: str) -> None:
    fastpath, prog_fd = FastPath.load_detached(small_frame_object)
    try:
        fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(parse_policy(POLICY)))
        assert fastpath.abi.capacity["umem_frame_bytes"] == 2048
        limit = max_redirect_length(fastpath.abi)
        # One byte too long: never redirected (the socket could not take it), fallback and counted.
        result = run_xdp(prog_fd, udp_frame(dport, limit + 1))
        assert result.action == action
        assert count(fastpath, on_failure_verdict, "redirect_oversize") == 1
        assert fastpath.class_counters()[(17, dport)] == {"redirected": 0, "failed": 1}
        # A frame that fits is still redirected (no socket here, so its fallback says redirect_failed).
        run_xdp(prog_fd, udp_frame(dport, limit))
        assert count(fastpath, on_failure_verdict, "redirect_failed") == 1
        assert count(fastpath, on_failure_verdict, "redirect_oversize") == 1
        # Oversize frames are not a missing socket: the watchdog's per-queue signal moved once only.
        assert fastpath.queue_counter(0)["redirect_failures"] == 1
    finally:
        fastpath.close()


def test_default_frames_fit_every_linear_test_frame(kernel: None, abi: Abi) -> None:
    """With 4096-byte frames the largest frame a test run hands the program in one piece is redirected."""
    with program_with_policy(POLICY) as (fastpath, prog_fd):
        run_xdp(prog_fd, udp_frame(9999, 3500))
        assert count(fastpath, "pass", "redirect_failed") == 1
        assert count(fastpath, "pass", "redirect_oversize") == 0


# ---- with real traffic ---------------------------------------------------------------------------------

SLOW_POLICY = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  dns_rules:
    - {match: "*.tracker.test", action: nxdomain}
"""


def test_jumbo_frame_takes_the_fallback_in_generic_mode(sandbox: Sandbox, tmp_path: Path) -> None:
    """Generic XDP (skb mode) has no MTU limit: with a 9000-byte MTU a 5,000-byte datagram reaches
    the program in one piece. It cannot fit a UMEM frame, so it takes udp/9999's fallback (pass) and
    is counted; a small one is inspected and delivered through the slow path."""
    sb = sandbox
    sb.exec(sb.client_ns, ["ip", "link", "set", "dev", sb.client_if, "mtu", "9000"])
    sb.exec(sb.host_ns, ["ip", "link", "set", "dev", sb.host_if, "mtu", "9000"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    daemon = Daemon(sb, policy, "--mode", "generic").start()
    try:
        receiver = Receiver(sb, duration=30, port=9999)
        sb.exec(sb.client_ns, [*UDPTOOL, "send", "--dst", HOST_V4, "--port", "9999", "--count", "1", "--tag", "big",
                               "--size", "5000"])
        wait_for(lambda: counter(status(sb), "pass", "redirect_oversize") == 1, 10)
        send(sb, CLIENT_V4, count=1, port=9999, tag="small")
        wait_for(lambda: slow_outcome(sb, "passed") == 1, 10)
        assert receiver.result()["by_tag"] == {"big": 1, "small": 1}
        assert counter(status(sb), "redirect", "redirect_class") == 1
    finally:
        daemon.stop()


def slow_outcome(sb: Sandbox, outcome: str) -> float:
    metrics, _ = parse_metrics(scrape(sb))
    return sum(v for (name, labels), v in metrics.items()
               if name == "hyperion_slowpath_packets_total" and dict(labels).get("outcome") == outcome)


# Runs in the client namespace: receives the answers to the generator's queries (sent from port 40000)
# until none has come for 3 s (15 s for the first), and counts them and their NXDOMAINs (the header's
# RCODE, read without a parser so the socket keeps up).
ANSWERS = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: room for every answer of the burst
s.bind((sys.argv[1], 40000))
print("ready", flush=True)
answers = nxdomain = 0
s.settimeout(15.0)
while answers < 1_000_000:
    try:
        reply = s.recv(4096)
    except socket.timeout:
        break
    s.settimeout(3.0)
    if not answers:
        first = time.monotonic()
    last = time.monotonic()
    answers += 1
    nxdomain += len(reply) >= 12 and reply[3] & 0x0F == 3  # RCODE, RFC 1035 4.1.1: 3 = NXDOMAIN
print(json.dumps({"answers": answers, "nxdomain": nxdomain, "span": last - first if answers else 0}), flush=True)
"""


BURST = 200_000


def test_answers_of_a_burst_are_all_sent_and_later_queries_answered(sandbox: Sandbox, tmp_path: Path) -> None:
    """Copy mode: one kick sends at most 32 TX descriptors. Under a flood of 200,000 blocked queries
    from the live-frames generator (far more than the worker inspects: the RX ring drops the rest,
    counted), every answer the workers built leaves (none is lost to a full TX ring or stranded in
    it), and each single query after the flood gets its own NXDOMAIN at once."""
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    daemon = Daemon(sb, policy).start()
    try:
        wait_for(lambda: dig(sb, "warm.tracker.test") == "NXDOMAIN", 10)
        before, _ = parse_metrics(scrape(sb))
        listener = sb.popen(sb.client_ns, [sys.executable, "-c", ANSWERS, CLIENT_V4], stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        # From the client's own MAC, so that the answers (addresses swapped) are for the client.
        spec = TrafficSpec(dst=HOST_V4, dst_mac=sb.mac(sb.host_ns, sb.host_if), sources=(CLIENT_V4,),
                           protocol="dns", dns_names=("burst.tracker.test",), sport=40000,
                           src_mac=sb.mac(sb.client_ns, sb.client_if))
        with entered_netns(sb.client_ns), Generator(sb.client_if, spec.sources) as gen:
            generated = gen.send(spec.frames(), count=BURST)
        received = json.loads(listener.communicate(timeout=60)[0].strip().splitlines()[-1])
        after, _ = parse_metrics(scrape(sb))
        singles = [dig(sb, f"single{i}.tracker.test") for i in range(10)]
    finally:
        daemon.stop()

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    built = delta("hyperion_slowpath_packets_total", queue="0", outcome="nxdomain")
    tx_failed = delta("hyperion_slowpath_packets_total", queue="0", outcome="tx_failed")
    inspected = delta("hyperion_slowpath_inspected_total", queue="0")
    lost_in_rx = delta("hyperion_afxdp_rx_dropped_total", queue="0") + delta("hyperion_afxdp_rx_ring_full_total",
                                                                               queue="0")
    assert generated.sent == BURST
    # Every query is accounted for: inspected and answered, or counted where the RX ring lost it.
    assert delta("hyperion_redirects_total", **{"class": "udp/53"}) == BURST
    assert inspected + lost_in_rx == BURST
    assert built == inspected
    # Every answer built left through the TX ring (before: about a third were lost to a full ring,
    # since each batch of up to 64 answers was kicked once, 32 sent) and reached the client.
    assert tx_failed == 0
    assert (received["answers"], received["nxdomain"]) == (built, built), (received, built)
    assert singles == ["NXDOMAIN"] * 10


# ---- counters at scrape time (issue 12, defect 12) -----------------------------------------------------


def test_control_block_layout_matches_the_c_struct() -> None:
    """control.h defines the layout; Python's ctypes mirror must agree field by field."""
    from hyperion import _slowpath
    from hyperion.slowpath.protocol import CONTROL_BYTES, ControlLayout
    layout = dict(_slowpath.CONTROL_LAYOUT)
    assert ctypes.sizeof(ControlLayout) == layout.pop("size") <= CONTROL_BYTES
    assert {name: getattr(ControlLayout, name).offset for name in layout} == layout
    assert len(_slowpath.STAT_NAMES) == len(ControlLayout().stats)
    assert _slowpath.LATENCY_BOUNDS[-1] == float("inf")
    assert len(_slowpath.LATENCY_BOUNDS) == len(ControlLayout().latency)


def test_supervisor_reads_counters_from_the_control_block_not_the_last_report() -> None:
    from hyperion import _slowpath
    from hyperion.slowpath.protocol import CONTROL_BYTES, ControlLayout
    from hyperion.slowpath.supervisor import WorkerProcess
    block = mmap.mmap(-1, CONTROL_BYTES)
    try:
        view = ControlLayout.from_buffer(block)
        view.stat_count = len(_slowpath.STAT_NAMES)
        view.stats[_slowpath.STAT_NAMES.index("rx")] = 7
        view.stats[_slowpath.STAT_NAMES.index("passed")] = 5
        view.latency[0] = 7
        del view  # releases the buffer, so the mmap can close
        worker = WorkerProcess(proc=None, control=block, started=0.0)  # type: ignore[arg-type]
        worker.report = {"rx": 3, "passed": 3, "rx_ring_level": 2, "xdp_rx_dropped": 1}
        stats = worker.stats()
        assert (stats["rx"], stats["passed"], stats["rx_ring_level"], stats["xdp_rx_dropped"]) == (7, 5, 2, 1)
        assert stats["latency_buckets"][0] == (_slowpath.LATENCY_BOUNDS[0], 7)
    finally:
        block.close()


# Runs in the client namespace: N queries, each answered before the next, then at once one scrape of the
# daemon's /metrics (served on the host's address, so no process has to start in between).
QUERIES_THEN_SCRAPE = r"""
import json, socket, sys, urllib.request
import dns.message, dns.rcode
count, server, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
answered = 0
for i in range(count):
    s.sendto(dns.message.make_query(f"q{i}.good.test", "A").to_wire(), (server, 53))
    try:
        answered += dns.message.from_wire(s.recv(4096)).rcode() == dns.rcode.NOERROR
    except socket.timeout:
        pass
print(json.dumps({"answered": answered, "metrics": urllib.request.urlopen(url, timeout=5).read().decode()}))
"""


def test_the_next_scrape_shows_every_answered_query(sandbox: Sandbox, tmp_path: Path) -> None:
    """Workers used to report their counters every 100 ms: a scrape right after the answers showed
    fewer. Now the very next scrape counts every query already answered, exactly."""
    from tests.test_slowpath import dnsmasq
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    server = dnsmasq(sb)
    url = f"http://{HOST_V4}:2112/metrics"
    daemon = Daemon(sb, policy, "--metrics-addr", f"{HOST_V4}:2112").start()
    try:
        # Ready when the slow path answers; then 4 rounds, each scraped at once.
        wait_for(lambda: dig(sb, "good.test") == "NOERROR 203.0.113.80", 10)
        for _ in range(4):
            start, _ = parse_metrics(sb.exec(sb.client_ns, [sys.executable, "-c", f"import urllib.request,sys; "
                                                            f"sys.stdout.write(urllib.request.urlopen({url!r})"
                                                            f".read().decode())"]).stdout)
            out = json.loads(sb.exec(sb.client_ns, [sys.executable, "-c", QUERIES_THEN_SCRAPE, "20", HOST_V4,
                                                    url]).stdout)
            after, _ = parse_metrics(out["metrics"])
            assert out["answered"] == 20

            inspected = ("hyperion_slowpath_inspected_total", frozenset({"queue": "0"}.items()))
            passed = ("hyperion_slowpath_packets_total", frozenset({"queue": "0", "outcome": "passed"}.items()))
            assert (after[inspected] - start[inspected], after[passed] - start[passed]) == (20, 20)
    finally:
        daemon.stop()
        server.terminate()
        server.wait(timeout=10)


# ---- more RX queues than the program has room for, with real traffic ----------------------------------

# Runs in the host namespace: the program built for 2 queues, on a 3-queue veth; the slow path starts
# (it used to fail with E2BIG), serves what fits and says which; on a line from stdin, prints the fast
# path's counters and tears everything down.
OVER_CAPACITY = r"""
import json, sys
from pathlib import Path
from hyperion.policy.compiler import PolicyCompiler
from hyperion.fastpath.program import FastPath
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.supervisor import SlowPath
ifname, obj, text = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
policy = parse_policy(text)
fastpath = FastPath.attach(ifname, object_path=obj)
try:
    fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
    slow = SlowPath(fastpath, ifname, policy)
    slow.start()
    try:
        print(json.dumps({"served": sorted(slow.queues)}), flush=True)
        sys.stdin.readline()
        counters = {f"{v}/{r}": n for (v, r), (n, _) in fastpath.counters().items()}
        print(json.dumps({"counters": counters}), flush=True)
    finally:
        slow.stop()
finally:
    fastpath.close()
    FastPath.detach(ifname)
"""


def test_slow_path_starts_on_more_queues_than_the_capacity(sandbox: Sandbox, tmp_path: Path) -> None:
    from tests.test_slowpath import dnsmasq
    sandbox.down()
    sb = Sandbox(prefix=sandbox.prefix, rx_queues=3).up()
    out = tmp_path / "bpf"
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), f"OUT={out}", "EXTRA_BPF_CFLAGS=-DHYP_QUEUES_CAPACITY=2",
                    f"{out}/hyperion.bpf.o"], check=True, capture_output=True)
    policy = "fast_path:\n  redirect_ports:\n    - {protocol: udp, port: 53, on_failure: pass}\n"
    server = dnsmasq(sb)
    proc = sb.popen(sb.host_ns, [sys.executable, "-c", OVER_CAPACITY, sb.host_if, str(out / "hyperion.bpf.o"),
                                 policy], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"served": [0, 1]}
        # Each dig from a new source port: spread over the three queues by the sender's hash.
        answers = [dig(sb, "good.test") for _ in range(30)]
        proc.stdin.write("\n")
        proc.stdin.flush()
        counters = json.loads(proc.stdout.readline())["counters"]
    finally:
        if proc.poll() is None:
            proc.communicate(timeout=30)
        server.terminate()
        server.wait(timeout=10)
        sb.down()
    assert answers == ["NOERROR 203.0.113.80"] * 30
    # Queue 2 has no slot: fail-open fallback, counted; queues 0 and 1 are inspected.
    assert counters.get("pass/queue_over_capacity", 0) > 0
    assert counters.get("redirect/redirect_class", 0) > 0
    assert counters["pass/queue_over_capacity"] + counters["redirect/redirect_class"] == 30
