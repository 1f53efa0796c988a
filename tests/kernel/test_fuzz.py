"""Fuzzing in CI (short budgets; `make fuzz` runs the long ones).

1. The slow path's native parsers under libFuzzer with AddressSanitizer and UBSan.
2. The XDP program under BPF_PROG_TEST_RUN: 50,000 mutated frames. Properties: the
   action is always pass or drop; every run moves exactly one counter; mutating
   only the payload beyond the headers never changes the verdict.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import MIN_FRAME, run_xdp
from tests.support.kernel import IN_CI, program_with_policy
from tests.support.paths import ROOT

POLICY = """
fast_path:
  allow_cidrs: ["192.0.2.0/28"]
  drop_ips: ["198.51.100.42", "2001:db8:ff::42"]
  drop_cidrs: ["203.0.113.0/24", "2001:db8:bad::/48"]
  redirect_ports: [{protocol: udp, port: 53, on_failure: drop}, {protocol: tcp, port: 80, on_failure: pass}]
slow_path:
  dns_name_rules: slow_path  # compared with the reference classifier, which has no DNS stage
"""
PAYLOAD = Raw(bytes(range(64)))
SOURCES4 = ["192.0.2.3", "198.51.100.42", "198.51.100.43", "203.0.113.9"]
SOURCES6 = ["2001:db8:ff::42", "2001:db8:ff::43", "2001:db8:bad::1"]


def base_packets() -> list[bytes]:
    """Valid frames of every shape the parser knows, each with a 64-byte payload at the end."""
    frames = []
    for src in SOURCES4:
        for l4 in (UDP(dport=53), UDP(dport=9), TCP(dport=80), TCP(dport=22), ICMP()):
            frames.append(bytes(Ether() / IP(src=src, dst="192.0.2.1") / l4 / PAYLOAD))
            frames.append(bytes(Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IP(src=src) / l4 / PAYLOAD))
        frames.append(bytes(Ether() / IP(src=src, frag=10, proto=17) / PAYLOAD))
    for src in SOURCES6:
        for l4 in (UDP(dport=53), TCP(dport=80), UDP(dport=9)):
            frames.append(bytes(Ether() / IPv6(src=src) / l4 / PAYLOAD))
            frames.append(bytes(Ether() / IPv6(src=src) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / l4
                                / PAYLOAD))
    frames.append(bytes(Ether() / ARP() / PAYLOAD))
    return frames


@pytest.fixture(scope="module")
def program(kernel: None) -> Iterator[tuple[FastPath, int]]:
    with program_with_policy(POLICY) as loaded_program:
        yield loaded_program


def total_packets(fastpath: FastPath) -> int:
    return sum(packets for packets, _ in fastpath.counters().values())


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    choice = rng.random()
    if choice < 0.3:  # truncate anywhere
        return bytes(data[: rng.randrange(MIN_FRAME, len(data) + 1)])
    if choice < 0.8:  # flip bytes within the headers
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(12, len(data) - len(PAYLOAD))] = rng.randrange(256)
        return bytes(data)
    # append junk or grow a length field's claim by extending the frame
    return bytes(data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))


def test_xdp_program_under_50k_mutated_frames(program: tuple[FastPath, int]) -> None:
    fastpath, prog_fd = program
    rng = random.Random(20261125)
    frames = base_packets()
    baseline = {frame: run_xdp(prog_fd, frame).action for frame in frames}
    before = total_packets(fastpath)
    runs = 0
    for i in range(50_000):
        frame = frames[i % len(frames)]
        if i % 5 == 0:
            # Payload-only mutation: the verdict must not change.
            data = bytearray(frame)
            for _ in range(3):
                data[rng.randrange(len(frame) - len(PAYLOAD), len(frame))] = rng.randrange(256)
            assert run_xdp(prog_fd, bytes(data)).action == baseline[frame]
        else:
            assert run_xdp(prog_fd, mutate(rng, frame)).action in ("pass", "drop")
        runs += 1
    assert total_packets(fastpath) - before == runs


def test_slow_path_parsers_under_libfuzzer(kernel: None, tmp_path: Path) -> None:
    if shutil.which("clang") is None:
        if IN_CI:
            pytest.fail("clang is not installed (scripts/setup.sh installs it)")
        pytest.skip("clang is not installed")
    build = subprocess.run(["make", "-s", "-C", str(ROOT), "build/fuzz/fuzz_dns"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = subprocess.run([str(ROOT / "build" / "fuzz" / "fuzz_dns"), "-max_total_time=20", "-print_final_stats=1",
                          str(corpus), str(ROOT / "native" / "fuzz" / "corpus")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    executed = int(next(line.rsplit(":", 1)[1] for line in run.stderr.splitlines()
                        if line.startswith("stat::number_of_executed_units")))
    print(f"libFuzzer: {executed} inputs in 20 s, no sanitizer finding")
    assert executed > 100_000
