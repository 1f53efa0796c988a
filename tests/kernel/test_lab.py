"""The lab tools: `hyperion sandbox` (pair and gateway topologies, idempotent, crash-safe cleanup)
and `hyperion generate` (live frames: UDP, TCP SYN, DNS, IPv4/IPv6, sources spread exactly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion.fastpath.program import FastPath
from hyperion.lab.generator import Generator, TrafficSpec, source_addresses
from hyperion.lab.sandbox import (
    HOST_V4,
    HOST_V6,
    NETNS_DIR,
    SANDBOX_STATE,
    SERVER_V4,
    SERVER_V6,
    Sandbox,
    cleanup_stale,
    entered_netns,
    list_sandboxes,
    read_state,
)
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.model import Policy
from tests.support.netutil import HYPERION_LAB, UDPTOOL, WAIT, wait_for

# ---- generator on the wire -------------------------------------------------------------------------


def _stack_counters(sb: Sandbox) -> dict[str, int]:
    with entered_netns(sb.host_ns):
        text6 = Path("/proc/thread-self/net/snmp6").read_text()
        text4 = Path("/proc/thread-self/net/snmp").read_text()
    counters = {line.split()[0]: int(line.split()[1]) for line in text6.splitlines()}
    rows = [line.split() for line in text4.splitlines()]
    for names, values in zip(rows[::2], rows[1::2], strict=True):
        counters.update({f"{names[0]}{k}": int(v) for k, v in zip(names[1:], values[1:], strict=True)})
    return counters


@pytest.fixture
def gro_sandbox(kernel: None) -> Iterator[Sandbox]:
    """GRO on: veth runs NAPI without XDP, so generated frames reach the stack."""
    sb = Sandbox(gro=True).up()
    try:
        yield sb
    finally:
        sb.down()


@pytest.mark.parametrize(("src", "dst", "protocol", "counter"), [
    ("2001:db8:ff00::/120", HOST_V6, "udp", "Udp6NoPorts"),
    ("203.0.113.0/25", HOST_V4, "udp", "Udp:NoPorts"),
    ("203.0.113.0/25", HOST_V4, "tcp", "Tcp:InSegs"),
    ("2001:db8:ff00::/120", HOST_V6, "dns", "Udp6NoPorts"),
])
def test_spread_sources_arrive_with_valid_checksums(gro_sandbox: Sandbox, src: str, dst: str, protocol: str,
                                                    counter: str) -> None:
    """Every frame, its source rewritten in the kernel, reaches the host's stack: none fails a checksum."""
    sb = gro_sandbox
    spec = TrafficSpec(dst=dst, dst_mac=sb.mac(sb.host_ns, sb.host_if), sources=tuple(source_addresses(src)),
                       protocol=protocol, dns_names=("a.test", "b.test") if protocol == "dns" else ())
    before = _stack_counters(sb)
    with entered_netns(sb.client_ns), Generator(sb.client_if, spec.sources) as gen:
        result = gen.send(spec.frames(), count=10_000)
    after: dict[str, int] = {}

    def arrived() -> bool:
        after.update(_stack_counters(sb))
        return after[counter] - before[counter] >= 10_000
    wait_for(arrived, WAIT)
    assert result.sent == 10_000 and result.templates == (2 if protocol == "dns" else 1)
    assert after[counter] - before[counter] == 10_000
    assert all(after[k] == before.get(k, 0) for k in after if "CsumErrors" in k or k.endswith("InErrs"))


def test_sources_get_exactly_equal_shares(gro_sandbox: Sandbox) -> None:
    """256 sources, 25,600 frames: with every other source blocked, exactly half is dropped."""
    sb = gro_sandbox
    sources = source_addresses("2001:db8:ff00::/120")
    with entered_netns(sb.host_ns):
        fastpath = FastPath.attach(sb.host_if)
    try:
        policy = Policy.model_validate({"fast_path": {"drop_ips": sources[::2]}})
        fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
        proc = sb.exec(sb.client_ns, [*HYPERION_LAB, "generate", "--iface", sb.client_if,
                                      "--src", "2001:db8:ff00::/120",
                                      "--dst", HOST_V6, "--dst-mac", sb.mac(sb.host_ns, sb.host_if),
                                      "--count", "25600"])
        assert json.loads(proc.stdout)["sources"] == 256
        wait_for(lambda: fastpath.counters().get(("drop", "blocklist_ip"), (0, 0))[0] >= 12_800
                 and fastpath.counters().get(("pass", "no_match"), (0, 0))[0] >= 12_800, WAIT)
        counters = fastpath.counters()
        assert counters[("drop", "blocklist_ip")][0] == 12_800
        assert 12_800 <= counters[("pass", "no_match")][0] <= 12_810  # + stray IPv6 neighbour/MLD frames
    finally:
        fastpath.close()
        with entered_netns(sb.host_ns):
            FastPath.detach(sb.host_if)


def test_generate_with_a_duration_stops_in_time(gro_sandbox: Sandbox) -> None:
    sb = gro_sandbox
    start = time.monotonic()
    proc = sb.exec(sb.client_ns, [*HYPERION_LAB, "generate", "--iface", sb.client_if, "--src", "192.0.2.2",
                                  "--dst", HOST_V4, "--dst-mac", sb.mac(sb.host_ns, sb.host_if), "--duration", "1"])
    out = json.loads(proc.stdout)
    assert out["sent"] > 0 and 1.0 <= out["seconds"] < 3.0 and time.monotonic() - start < 15


# ---- sandbox ---------------------------------------------------------------------------------------


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HYPERION_LAB, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_sandbox_cli_gateway_up_is_idempotent_and_down_removes_everything(kernel: None) -> None:
    name = f"hypt{os.getpid() % 100000}"
    try:
        first = json.loads(_cli("sandbox", "up", "--name", name, "--topology", "gateway", "--queues", "2",
                                "--json").stdout)
        again = json.loads(_cli("sandbox", "up", "--name", name, "--topology", "gateway", "--queues", "2",
                                "--json").stdout)
        assert first["created"] is True and again["created"] is False
        assert _cli("sandbox", "up", "--name", name, check=False).returncode == 2  # another topology: refused
        sb = Sandbox(prefix=name, topology="gateway", rx_queues=2)
        assert sb.is_up() and read_state(name)["owner_pid"] is None  # type: ignore[index]
        link = json.loads(sb.ip(sb.host_ns, "-d", "-j", "link", "show", sb.host_if).stdout)[0]
        assert link["num_rx_queues"] == 2
        # Forwarded through the gateway, IPv4 and IPv6.
        receiver = sb.popen(sb.server_ns, [*UDPTOOL, "recv", "--port", "5000", "--duration", "20"],
                            stdout=subprocess.PIPE)
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        for src, dst in (("192.0.2.2", SERVER_V4), ("2001:db8:1::2", SERVER_V6)):
            sb.exec(sb.client_ns, [*UDPTOOL, "send", "--src", src, "--dst", dst, "--port", "5000", "--count", "3"])

        def all_arrived() -> bool:  # the probe answers SIGUSR1 with what it has counted so far
            assert receiver.stdout is not None
            receiver.send_signal(signal.SIGUSR1)
            return sum(json.loads(receiver.stdout.readline())["by_source"].values()) >= 6
        wait_for(all_arrived, WAIT)
        receiver.send_signal(signal.SIGTERM)
        out, _ = receiver.communicate(timeout=10)
        assert json.loads(out.strip().splitlines()[-1])["by_source"] == {"192.0.2.2": 3, "2001:db8:1::2": 3}
        status = json.loads(_cli("sandbox", "status", "--json").stdout)
        assert [s["status"] for s in status if s["name"] == name] == ["up (kept)"]
    finally:
        _cli("sandbox", "down", "--name", name)
    assert not [ns for ns in os.listdir(NETNS_DIR) if ns.startswith(f"{name}-")]
    assert not (SANDBOX_STATE / f"{name}.json").exists()
    assert "nothing to remove" in _cli("sandbox", "down", "--name", name).stdout


def test_a_crashed_owners_sandbox_is_removed_as_stale(kernel: None) -> None:
    code = ("import sys, time; from hyperion.lab.sandbox import Sandbox; sb = Sandbox().up(); "
            "print(sb.prefix, flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        prefix = owner.stdout.readline().strip()
        assert [s["status"] for s in list_sandboxes(prefix)] == ["up"]
    finally:
        owner.kill()  # the owner dies without cleaning up (SIGKILL, by its own PID)
        owner.wait(timeout=10)
    assert [s["status"] for s in list_sandboxes(prefix)] == ["stale"]
    assert prefix in cleanup_stale()
    assert list_sandboxes(prefix) == []
    assert not (NETNS_DIR / f"{prefix}-cli").exists() and not (NETNS_DIR / f"{prefix}-host").exists()


def test_namespaces_without_a_record_are_never_removed_implicitly(kernel: None) -> None:
    sb = Sandbox().up()
    try:
        (SANDBOX_STATE / f"{sb.prefix}.json").unlink()  # as made by older code, maybe still in use
        assert [s["status"] for s in list_sandboxes(sb.prefix)] == ["unrecorded"]
        cleanup_stale()
        assert (NETNS_DIR / sb.client_ns).exists()
    finally:
        sb.down()
    assert list_sandboxes(sb.prefix) == []
