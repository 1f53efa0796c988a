"""Limits with a defined, counted outcome (issue 12, defect 8), in the XDP program.

- RX queues beyond the program's queue capacity take the class fallback, counted as
  queue_over_capacity.
- A redirect-class frame larger than an AF_XDP UMEM frame (the kernel would drop it in xsk_rcv)
  takes the class's on_failure fallback, counted as redirect_oversize (program built with
  2048-byte frames); with the default 4096-byte frames every linear test frame is redirected.

With real traffic in a sandbox: tests/e2e/test_limits.py; the bounds without root: tests/unit/test_limits.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel.abi import Abi
from hyperion.kernel.netdev import ifindex_of
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.support.kernel import count, program_with_policy
from tests.support.paths import BPF_DIR

POLICY = """
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # the udp/53 class is redirected whole, as this test expects
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


def max_redirect_length(abi: Abi) -> int:
    return abi.capacity["umem_frame_bytes"] - XDP_PACKET_HEADROOM


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
