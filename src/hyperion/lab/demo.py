"""`make demo`: Hyperion doing its whole job in a throwaway sandbox, with real clients.

A client and a protected host in their own network namespaces, joined by a
veth pair; dnsmasq serves DNS on the host behind `hyperion run` with
examples/policy.yaml. The scene: lookups that resolve, lookups dropped and
answered NXDOMAIN in the dataplane, a flood from a blocked network, malformed
frames, a payload signature, a hot reload that blocks a new name, and a
block_source escalation. Live views along the way, then a summary, key
metrics and a few events. Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp

from hyperion.lab.sandbox import HOST_V4, Sandbox, entered_netns

ROOT = Path(__file__).resolve().parents[3]
POLICY = ROOT / "examples" / "policy.yaml"
PORT = 5000
console = Console()
PYTHON = sys.executable


class Scene:
    def __init__(self, sb: Sandbox, workdir: Path) -> None:
        self.sb = sb
        self.policy = workdir / "policy.yaml"
        self.events = workdir / "events.jsonl"
        self.rows: list[tuple[str, str, str]] = []
        self.procs: list[subprocess.Popen[str]] = []

    # ---- helpers ---------------------------------------------------------------------------

    def hyperion(self, *args: str) -> str:
        return self.sb.exec(self.sb.host_ns, [PYTHON, "-m", "hyperion.cli", *args]).stdout

    def dig(self, name: str, source: str | None = None) -> str:
        argv = ["dig", "+time=1", "+tries=1", f"@{HOST_V4}", name] + (["-b", source] if source else [])
        out = self.sb.exec(self.sb.client_ns, argv, check=False).stdout
        if "timed out" in out or "no servers could be reached" in out:
            return "no answer (timed out)"
        status = next((line.split("status:")[1].split(",")[0].strip() for line in out.splitlines()
                       if "status:" in line), "?")
        answers = [line.split()[-1] for line in out.splitlines() if "\tA\t" in line and not line.startswith(";")]
        return f"{status} {' '.join(answers)}".strip()

    def probe(self, src: str, count: int, port: int = PORT, payload: str = "", tag: str = "t") -> None:
        self.sb.exec(self.sb.client_ns, [PYTHON, "-m", "hyperion.lab.probe", "send", "--src", src, "--dst", HOST_V4,
                                         "--port", str(port), "--count", str(count), "--payload", payload,
                                         "--tag", tag])

    def step(self, what: str, sent: str, outcome: str) -> None:
        self.rows.append((what, sent, outcome))
        console.print(f"  [bold]{escape(what)}[/bold]: {escape(outcome)}")

    def top(self) -> None:
        console.print(self.hyperion("top", "--once", "--interval", "0.5"), markup=False, highlight=False)

    # ---- the scene -------------------------------------------------------------------------

    def start(self) -> None:
        sb = self.sb
        shutil.copy(POLICY, self.policy)
        for address in ("192.0.2.9", "198.51.100.10", "198.51.100.11", "198.51.100.42", "203.0.113.9"):
            sb.add_client_address(address)
        self.procs.append(sb.popen(sb.host_ns, [
            "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={HOST_V4}",
            "--pid-file", "--user=root", "--address=/good.test/203.0.113.80", "--address=/c2.test/203.0.113.66",
            "--address=/newly-bad.test/203.0.113.67"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs.append(sb.popen(sb.host_ns, [PYTHON, "-m", "hyperion.cli", "run", "--iface", sb.host_if,
                                                "--policy", str(self.policy), "--events", str(self.events)],
                                   stderr=subprocess.DEVNULL))
        self.receiver = sb.popen(sb.host_ns, [PYTHON, "-m", "hyperion.lab.probe", "recv", "--port", str(PORT)],
                                 stdout=subprocess.PIPE)
        self.procs.append(self.receiver)
        assert self.receiver.stdout is not None and self.receiver.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise SystemExit("hyperion run did not come up; run `hyperion run` by hand to see why")
            time.sleep(0.3)

    def _ready(self) -> bool:
        """The daemon has applied its policy, and DNS answers through the slow path."""
        probe = self.sb.exec(self.sb.host_ns, [PYTHON, "-m", "hyperion.cli", "status", "--json"], check=False)
        if probe.returncode != 0 or json.loads(probe.stdout)["policy_generation"] < 1:
            return False
        return self.dig("good.test") == "NOERROR 203.0.113.80"

    def play(self) -> None:
        console.rule("[bold]1. DNS through the AF_XDP slow path")
        self.step("dig good.test", "1 query", self.dig("good.test"))
        self.step("dig evil.com (rule: drop)", "1 query", self.dig("evil.com"))
        self.step("dig ads.tracker.test (rule: *.tracker.test nxdomain)", "1 query", self.dig("ads.tracker.test"))
        long_name = "a" * 34 + ".example"
        self.step("dig <34 random-looking chars>.example (rule: regex alert)", "1 query", self.dig(long_name))

        console.rule("[bold]2. A flood from a blocked network, dropped in XDP")
        self.sb.exec(self.sb.client_ns, [
            PYTHON, "-m", "hyperion.lab.generator", "--iface", self.sb.client_if, "--src", "203.0.113.9", "--dst",
            HOST_V4, "--dst-mac", self.sb.mac(self.sb.host_ns, self.sb.host_if), "--count", "500000"])
        self.step("500,000 frames from 203.0.113.9 (drop_cidrs 203.0.113.0/24)", "500,000 frames",
                  "dropped at the driver, see blocklist_cidr below")
        self.probe("198.51.100.42", 20, tag="blocked-ip")
        self.probe("198.51.100.10", 20, tag="ordinary")
        self.probe("192.0.2.9", 20, tag="management")
        self.top()

        console.rule("[bold]3. Malformed frames")
        l2 = Ether(src=self.sb.mac(self.sb.client_ns, self.sb.client_if),
                   dst=self.sb.mac(self.sb.host_ns, self.sb.host_if))
        good = bytes(l2 / IP(src="198.51.100.10", dst=HOST_V4) / UDP(dport=PORT))
        frames = [good[:14] + b"\x44" + good[15:],
                  bytes(l2 / IP(src="198.51.100.10", dst=HOST_V4, len=900) / UDP(dport=PORT)),
                  bytes(l2 / IP(src="198.51.100.10", dst=HOST_V4) / TCP(dport=80, dataofs=2))]
        with entered_netns(self.sb.client_ns):
            sendp([Raw(frame) for frame in frames * 5], iface=self.sb.client_if, verbose=False)
        self.step("bad IHL, lying IP length, short TCP offset", "15 frames", "dropped, each counted by reason")

        console.rule("[bold]4. A payload signature, then the source dies in XDP")
        self.probe("198.51.100.11", 1, port=9999, payload="id=1 UNION SELECT password", tag="sqli")
        self.probe("198.51.100.11", 5, tag="after-sqli")
        self.step("UDP 9999 'UNION SELECT' from 198.51.100.11", "1 + 5 datagrams", "blocked for 5m (block_source)")

        console.rule("[bold]5. block_source escalation from a DNS rule")
        self.step("dig c2.test from 198.51.100.10 (rule: block_source 10m)", "1 query",
                  self.dig("c2.test", source="198.51.100.10"))
        self.probe("198.51.100.10", 10, tag="after-c2")
        blocks = json.loads(self.hyperion("block", "list", "--json"))
        self.step("hyperion block list", "-", ", ".join(b["address"] for b in blocks))

        console.rule("[bold]6. Hot reload: block a new name (the policy file is rewritten)")
        self.step("dig newly-bad.test before", "1 query", self.dig("newly-bad.test"))
        text = self.policy.read_text().replace('- {match: "evil.com", action: drop}',
                                               '- {match: "evil.com", action: drop}\n'
                                               '    - {match: "newly-bad.test", action: drop}')
        tmp = self.policy.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.policy)  # an editor's atomic save; inotify sees it
        deadline = time.monotonic() + 10
        outcome = self.dig("newly-bad.test")
        while outcome != "no answer (timed out)" and time.monotonic() < deadline:
            time.sleep(0.3)
            outcome = self.dig("newly-bad.test")
        self.step("dig newly-bad.test after the reload", "1 query", outcome)

        console.rule("[bold]7. A queue worker dies: the watchdog fences the queue and starts a fresh one")
        queue = json.loads(self.hyperion("queues", "--json"))["queues"][0]
        os.kill(queue["descriptors"]["worker_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            queue = json.loads(self.hyperion("queues", "--json"))["queues"][0]
            if queue["restarts"] >= 1 and queue["state"] == "active":
                break
            time.sleep(0.2)
        fence = next((t for t in queue["transitions"] if t["to_state"] == "fenced"), None)
        self.step("SIGKILL the worker of queue 0", "-",
                  f"fenced ({fence['reason']}) in {fence['detection_seconds'] * 1000:.0f} ms, active again "
                  f"{(queue['transitions'][-1]['time'] - fence['time']) * 1000:.0f} ms later"
                  if fence and fence["detection_seconds"] is not None else f"state {queue['state']}")
        self.step("dig good.test after the recovery", "1 query", self.dig("good.test"))
        self.step("dig evil.com after the recovery (inspection resumed)", "1 query", self.dig("evil.com"))
        self.top()

    def finish(self) -> dict[str, Any]:
        time.sleep(0.5)
        status = json.loads(self.hyperion("status", "--json"))
        metrics = self.sb.exec(self.sb.host_ns, [PYTHON, "-c", "import urllib.request,sys; sys.stdout.write("
                                                 "urllib.request.urlopen('http://127.0.0.1:2112/metrics').read()"
                                                 ".decode())"]).stdout
        self.receiver.send_signal(signal.SIGTERM)
        out, _ = self.receiver.communicate(timeout=10)
        received = json.loads(out.strip().splitlines()[-1])["by_tag"]
        return {"status": status, "metrics": metrics, "received": received}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def report(scene: Scene, result: dict[str, Any]) -> None:
    console.rule("[bold]Summary")
    table = Table(title="What was sent and what happened")
    for column in ("step", "sent", "outcome"):
        table.add_column(column)
    for row in scene.rows:
        table.add_row(*row)
    received = result["received"]
    for tag, sent in (("management", 20), ("ordinary", 20), ("blocked-ip", 20), ("after-sqli", 5), ("after-c2", 10)):
        table.add_row(f"UDP probes tagged {tag}", str(sent), f"{received.get(tag, 0)} delivered")
    console.print(table)
    counters = Table(title="Fast-path counters (hyperion status)")
    for column in ("verdict", "reason", "packets"):
        counters.add_column(column)
    for row in result["status"]["counters"]:
        counters.add_row(row["verdict"], row["reason"], f"{row['packets']:,}")
    console.print(counters)
    wanted = ("hyperion_fastpath_drops_total", "hyperion_slowpath_drops_total", "hyperion_slowpath_packets_total",
              "hyperion_policy_generation", "hyperion_policy_reload_total", "hyperion_events_total")
    console.print("[bold]Key metrics[/bold] (curl 127.0.0.1:2112/metrics in the host namespace)")
    for line in result["metrics"].splitlines():
        if line.startswith(wanted) and not line.rstrip().endswith(" 0.0"):
            console.print(f"  {line}", markup=False)
    console.print("[bold]A few events[/bold] (hyperion run --events)")
    events = [json.loads(line) for line in scene.events.read_text().splitlines()] if scene.events.exists() else []
    shown: set[str] = set()
    for event in events:
        key = event.get("reason", "") + event.get("action", "")
        if key not in shown and len(shown) < 6:
            shown.add(key)
            console.print(f"  {json.dumps(event)}", markup=False)


def main() -> int:
    sb = Sandbox(wire_xdp=True)  # the program's DNS answers reach the client
    # SIGTERM unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="hyperion-demo-") as tmp:
        scene = Scene(sb, Path(tmp))
        try:
            sb.up()
            console.rule("[bold]Hyperion demo")
            console.print(f"sandbox {sb.prefix}: client {sb.client_ns} -> protected host {sb.host_ns} "
                          f"({sb.host_if}), dnsmasq on {HOST_V4}, policy {POLICY.relative_to(ROOT)}")
            scene.start()
            scene.play()
            report(scene, scene.finish())
            console.print("[green]demo finished; removing the sandbox[/green]")
            return 0
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; removing the sandbox[/yellow]")
            return 130
        finally:
            scene.stop()
            sb.down()


if __name__ == "__main__":
    sys.exit(main())
