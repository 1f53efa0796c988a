"""Limits with a defined, counted outcome (issue 12, defect 8), with real traffic in a sandbox.

- A jumbo redirect-class frame in generic mode takes the class's on_failure fallback.
- The answers of a DNS burst are all sent and later queries answered; the next scrape shows every
  answered query (issue 12, defect 12).
- The slow path starts on more RX queues than the program's capacity and serves those below it.

The program's fallbacks (redirect_oversize, queue_over_capacity): tests/kernel/test_limits.py;
the bounds and layouts without root: tests/unit/test_limits.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hyperion.lab.generator import Generator, TrafficSpec
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, Sandbox, entered_netns
from tests.support.netutil import UDPTOOL, Daemon, Receiver, counter, scrape, send, status, wait_for
from tests.support.paths import BPF_DIR
from tests.support.peers import dig
from tests.support.telemetry import parse_metrics

# ---- with real traffic ---------------------------------------------------------------------------------

SLOW_POLICY = r"""
fast_path:
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: udp, port: 9999, on_failure: pass}
slow_path:
  dns_name_rules: slow_path  # these tests are about the slow path: every name rule runs there
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
    from tests.support.peers import dnsmasq
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
    from tests.support.peers import dnsmasq
    sandbox.down()
    sb = Sandbox(prefix=sandbox.prefix, rx_queues=3).up()
    out = tmp_path / "bpf"
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), f"OUT={out}", "EXTRA_BPF_CFLAGS=-DHYP_QUEUES_CAPACITY=2",
                    f"{out}/hyperion.bpf.o"], check=True, capture_output=True)
    policy = ("fast_path:\n  redirect_ports:\n    - {protocol: udp, port: 53, on_failure: pass}\n"
              "slow_path:\n  dns_name_rules: slow_path\n")  # redirected whole: the workers serve it
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
