"""Live policy: reload on file change and SIGHUP, bad reloads rejected, atomic switch under load."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hyperion.fastpath.program import FastPath
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, HOST_V6, Sandbox, entered_netns
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import Policy
from tests.support.netutil import (
    Daemon,
    Receiver,
    counter,
    generation,
    hyperion,
    scrape,
    send,
    status,
    wait_counter,
    wait_for,
)
from tests.support.telemetry import parse_metrics, value

POLICY_A = 'fast_path:\n  drop_ips: ["198.51.100.42"]\n'
POLICY_B = 'fast_path:\n  drop_ips: ["198.51.100.43"]\n'


def delivered(sb: Sandbox, src: str, count: int = 5) -> int:
    receiver = Receiver(sb)
    send(sb, src, count=count)
    receiver.barrier(CLIENT_V4)  # unlisted, same veth queue: src's datagrams were judged before it
    return int(receiver.result()["by_source"].get(src, 0))


def _inotify_fds(pid: int) -> int:
    found = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            found += os.readlink(fd) == "anon_inode:inotify"
    return found


def test_reload_on_file_change_and_bad_file_kept_out(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    for address in ("198.51.100.42", "198.51.100.43"):
        sb.add_client_address(address)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_A)
    daemon = Daemon(sb, policy).start()
    try:
        assert delivered(sb, "198.51.100.42") == 0 and delivered(sb, "198.51.100.43") == 5
        # An editor's save: write a temporary file, rename it over the policy.
        tmp = tmp_path / ".policy.yaml.swp"
        tmp.write_text(POLICY_B)
        os.replace(tmp, policy)
        wait_for(lambda: generation(sb) == 2, 10)
        assert delivered(sb, "198.51.100.42") == 5 and delivered(sb, "198.51.100.43") == 0
        missing = hyperion(sb, "policy", "diff", str(tmp_path / "missing.yaml"), check=False)
        assert missing.returncode == 2 and "missing.yaml" in missing.stderr
        # A broken file: rejected, logged with the field, counted; policy B stays.
        policy.write_text('fast_path:\n  drop_ips: ["198.51.100.999"]\n')
        wait_for(lambda: value(parse_metrics(scrape(sb))[0], "hyperion_policy_reload_total", result="error") == 1,
                 10)
        assert generation(sb) == 2
        assert delivered(sb, "198.51.100.43") == 0
        metrics, _ = parse_metrics(scrape(sb))
        assert value(metrics, "hyperion_policy_reload_total", result="success") == 1
    finally:
        code, err = daemon.stop()
    assert code == 0
    assert "reload rejected, running policy kept" in err and "fast_path.drop_ips[0]: '198.51.100.999'" in err


def test_sighup_reloads_and_policy_diff_against_running(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_A)
    daemon = Daemon(sb, policy, "--no-watch").start()
    try:
        candidate = tmp_path / "candidate.yaml"
        candidate.write_text('mode: monitor\nfast_path:\n  drop_ips: ["198.51.100.43"]\n')
        out = hyperion(sb, "policy", "diff", str(candidate)).stdout
        assert out.splitlines() == [
            "--- running policy", f"+++ {candidate}", "~ mode: enforce -> monitor",
            "- fast_path.drop_ips: 198.51.100.42", "+ fast_path.drop_ips: 198.51.100.43",
        ]
        policy.write_text(candidate.read_text())
        # --no-watch: nothing in the daemon watches the file (it holds no inotify instance), so the
        # change alone cannot act; checked directly rather than by waiting for a reload that must not come.
        assert daemon.proc is not None
        assert _inotify_fds(daemon.proc.pid) == 0
        assert generation(sb) == 1
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: generation(sb) == 2, 10)
        assert status(sb)["mode"] == "monitor"
        assert hyperion(sb, "policy", "diff", str(candidate)).stdout.splitlines()[-1] == "(no changes)"
    finally:
        daemon.stop()


def _xdp_packets(sb: Sandbox) -> int:
    """Frames the host veth ran its XDP program on, all queues (the kernel's rx_queue_N_xdp_packets)."""
    out = sb.exec(sb.host_ns, ["ethtool", "-S", sb.host_if]).stdout
    return sum(int(value) for name, _, value in (line.strip().partition(":") for line in out.splitlines())
               if name.startswith("rx_queue_") and name.endswith("_xdp_packets"))


def _frame(sb: Sandbox, src: str) -> list[str]:
    return [sys.executable, "-m", "hyperion.lab.generator", "--iface", sb.client_if, "--src", src,
            "--dst", HOST_V6 if ":" in src else HOST_V4, "--dst-mac", sb.mac(sb.host_ns, sb.host_if)]


def test_switch_is_atomic_under_load(sandbox: Sandbox) -> None:
    """A: allow X, block X's /24; B: block X exactly. A packet judged by a mix of A and B
    (B's empty allowlist, A's CIDR blocklist) would get blocklist_cidr: that must never happen."""
    sb = sandbox
    source = "198.51.100.77"
    policy_a = parse_policy(f'fast_path:\n  allow_cidrs: ["{source}"]\n  drop_cidrs: ["198.51.100.0/24"]\n')
    policy_b = parse_policy(f'fast_path:\n  drop_ips: ["{source}"]\n')
    with entered_netns(sb.host_ns):
        fastpath = FastPath.attach(sb.host_if)
    try:
        compiler = PolicyCompiler(fastpath.abi, fastpath.capacities())
        images = [compiler.compile(policy_a), compiler.compile(policy_b)]
        fastpath.apply(images[0])
        before, reached_before = fastpath.counters(), _xdp_packets(sb)
        generator = sb.popen(sb.client_ns, [*_frame(sb, source), "--count", "8000000"], stdout=subprocess.PIPE)
        reloads = 0
        while generator.poll() is None and reloads < 400:
            fastpath.apply(images[reloads % 2])
            reloads += 1
        assert generator.wait(timeout=120) == 0
        assert generator.stdout is not None
        sent = int(json.loads(generator.stdout.read())["sent"])

        def total(counters: dict[tuple[str, str], tuple[int, int]]) -> int:
            return sum(packets for packets, _ in counters.values())
        # Every frame that reached the program is counted under some verdict: wait until all are. The
        # reference is the kernel's count of frames the host veth ran XDP on (ethtool -S): under load
        # some of the generator's frames never get there (the veth's ring is full).
        reached = _xdp_packets(sb) - reached_before
        assert reached >= sent // 2, f"only {reached} of {sent} frames reached the program"
        wait_for(lambda: total(fastpath.counters()) - total(before) >= reached, 60)
        after = fastpath.counters()

        def delta(verdict: str, reason: str) -> int:
            return after.get((verdict, reason), (0, 0))[0] - before.get((verdict, reason), (0, 0))[0]

        judged = delta("pass", "allowlist") + delta("drop", "blocklist_ip")
        moved = {key for key in after if delta(*key)}
        assert reloads >= 10, "the generator finished before the policy could flip"
        assert delta("pass", "allowlist") > 0 and delta("drop", "blocklist_ip") > 0
        assert delta("drop", "blocklist_cidr") == 0
        # Only A's or B's verdicts (and link chatter that neither policy matches).
        assert moved <= {("pass", "allowlist"), ("drop", "blocklist_ip"), ("pass", "no_match"), ("pass", "non_ip")}
        assert judged >= 1_000_000
    finally:
        fastpath.close()
        with entered_netns(sb.host_ns):
            FastPath.detach(sb.host_if)


def test_large_reload_loses_no_allowed_packet(sandbox: Sandbox) -> None:
    """Swap a 200k-entry blocklist for another under a steady stream both policies allow."""
    sb = sandbox
    base = int(ipaddress.IPv6Address("2001:db8:100::"))

    def blocklist(offset: int) -> Policy:
        ips = [str(ipaddress.IPv6Address(base + offset + i)) for i in range(200_000)]
        return Policy.model_validate({"fast_path": {"drop_ips": ips}})

    sb.add_client_address("198.51.100.10")
    with entered_netns(sb.host_ns):
        fastpath = FastPath.attach(sb.host_if)
    try:
        compiler = PolicyCompiler(fastpath.abi, fastpath.capacities())
        first, second = compiler.compile(blocklist(0)), compiler.compile(blocklist(500_000))
        fastpath.apply(first)
        receiver = Receiver(sb)
        stream = sb.popen(sb.client_ns, [sys.executable, "-m", "hyperion.lab.probe", "send", "--src",
                                         "198.51.100.10", "--dst", HOST_V4, "--port", "5000", "--count", "1500",
                                         "--interval", "0.001", "--tag", "steady"], stdout=subprocess.PIPE)
        timings = []
        while stream.poll() is None:
            start = time.perf_counter()
            fastpath.apply(second if len(timings) % 2 == 0 else first)
            timings.append(time.perf_counter() - start)
        assert stream.wait(timeout=60) == 0
        receiver.wait_tags({"steady": 1500})
        assert receiver.result()["by_tag"] == {"steady": 1500}
        assert timings and fastpath.map_fill()["hyp_bip6"][0] == 200_000
        print(f"200k-entry apply: {min(timings):.3f}-{max(timings):.3f} s over {len(timings)} reloads")
    finally:
        fastpath.close()
        with entered_netns(sb.host_ns):
            FastPath.detach(sb.host_if)


def test_reload_counters_survive(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.add_client_address("198.51.100.42")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_A)
    daemon = Daemon(sb, policy).start()
    try:
        send(sb, "198.51.100.42", count=9)
        wait_counter(sb, "drop", "blocklist_ip", 9)
        policy.write_text(POLICY_B)
        wait_for(lambda: generation(sb) == 2, 10)
        assert counter(status(sb), "drop", "blocklist_ip") == 9
        assert json.loads(hyperion(sb, "status", "--json").stdout)["maps"]["hyp_bip4"]["entries"] == 1
    finally:
        daemon.stop()
