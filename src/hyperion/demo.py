"""`make demo`: Hyperion's fast path doing its job in a throwaway sandbox.

Creates client and host namespaces over a veth pair, runs `hyperion run` on
the host with examples/policy.yaml, plays a scene of real UDP traffic and
crafted malformed frames from the client, and prints what was sent, what
arrived and the fast path's counters. Everything is removed at the end,
also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.sendrecv import sendp

from hyperion.sandbox import HOST_V4, Sandbox, entered_netns

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policy.yaml"
PORT = 5000
console = Console()


def hyperion(sb: Sandbox, *args: str) -> str:
    return sb.exec(sb.host_ns, [sys.executable, "-m", "hyperion.cli", *args]).stdout


def send(sb: Sandbox, src: str, count: int, tag: str, port: int = PORT) -> None:
    sb.exec(sb.client_ns, [sys.executable, "-m", "hyperion.probe", "send", "--src", src, "--dst", HOST_V4,
                           "--port", str(port), "--count", str(count), "--tag", tag])


def send_malformed(sb: Sandbox, count: int) -> int:
    """Crafted frames the parser must reject: bad IHL, lying lengths, short TCP."""
    dst_mac = sb.mac(sb.host_ns, sb.host_if)
    good = bytes(Ether(dst=dst_mac) / IP(src="198.51.100.10", dst=HOST_V4) / UDP(dport=PORT))
    frames = [
        good[:14] + b"\x44" + good[15:],                                         # IHL 4
        bytes(Ether(dst=dst_mac) / IP(src="198.51.100.10", dst=HOST_V4, len=900) / UDP(dport=PORT)),
        bytes(Ether(dst=dst_mac) / IP(src="198.51.100.10", dst=HOST_V4) / TCP(dport=80, dataofs=2)),
    ]
    with entered_netns(sb.client_ns):
        sendp([Raw(f) for f in frames] * count, iface=sb.client_if, verbose=False)
    return len(frames) * count


def scene(sb: Sandbox) -> dict[str, Any]:
    for address in ("198.51.100.10", "198.51.100.42", "203.0.113.9"):
        sb.add_client_address(address)
    console.rule("[bold]Hyperion demo: fast path")
    console.print(f"sandbox {sb.prefix}: client {sb.client_ns} -> host {sb.host_ns} ({sb.host_if})")
    daemon = sb.popen(sb.host_ns, [sys.executable, "-m", "hyperion.cli", "run", "--iface", sb.host_if,
                                   "--policy", str(POLICY)])
    receiver = sb.popen(sb.host_ns, [sys.executable, "-m", "hyperion.probe", "recv", "--port", str(PORT)],
                        stdout=subprocess.PIPE)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and daemon.poll() is None:
            if sb.exec(sb.host_ns, [sys.executable, "-m", "hyperion.cli", "status", "--iface", sb.host_if],
                       check=False).returncode == 0:
                break
            time.sleep(0.2)
        if daemon.poll() is not None:
            raise SystemExit("hyperion run exited early; see its messages above")
        console.print(f"hyperion run is up with {POLICY.name}")
        plan = [
            ("192.0.2.2", "allowlisted management host (192.0.2.0/28)", 20),
            ("198.51.100.10", "ordinary host", 20),
            ("198.51.100.42", "blocked exact IP", 20),
            ("203.0.113.9", "source in blocked 203.0.113.0/24", 20),
        ]
        for src, what, count in plan:
            console.print(f"  sending {count} UDP datagrams from {src:<15} {what}")
            send(sb, src, count, tag=src)
        console.print("  operator: hyperion block add 198.51.100.10 --ttl 3s")
        hyperion(sb, "block", "add", "198.51.100.10", "--ttl", "3s")
        send(sb, "198.51.100.10", 10, tag="198.51.100.10-while-blocked")
        malformed = send_malformed(sb, 5)
        console.print(f"  sent {malformed} malformed frames (bad IHL, lying length, short TCP offset)")
        console.print("  waiting for the dynamic block to expire...")
        time.sleep(3.2)
        send(sb, "198.51.100.10", 10, tag="198.51.100.10-after-expiry")
        time.sleep(0.3)
        status = json.loads(hyperion(sb, "status", "--json"))
    finally:
        receiver.send_signal(signal.SIGTERM)
        received = json.loads((receiver.communicate(timeout=10)[0] or "{}").strip().splitlines()[-1])
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
    return {"status": status, "received": received["by_tag"], "plan": plan}


def report(result: dict[str, Any]) -> None:
    table = Table(title="What was sent, what arrived")
    for column in ("traffic", "sent", "delivered"):
        table.add_column(column)
    received = result["received"]
    for src, what, count in result["plan"]:
        table.add_row(f"{src} ({what})", str(count), str(received.get(src, 0)))
    for tag in ("198.51.100.10-while-blocked", "198.51.100.10-after-expiry"):
        table.add_row(tag, "10", str(received.get(tag, 0)))
    console.print(table)
    counters = Table(title="Fast-path counters (hyperion status)")
    for column in ("verdict", "reason", "packets"):
        counters.add_column(column)
    for row in result["status"]["counters"]:
        counters.add_row(row["verdict"], row["reason"], str(row["packets"]))
    console.print(counters)


def main() -> int:
    sb = Sandbox()
    # Ctrl-C and SIGTERM both unwind through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sb.up()
        report(scene(sb))
        console.print("[green]demo finished; removing the sandbox[/green]")
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; removing the sandbox[/yellow]")
        return 130
    finally:
        sb.down()


if __name__ == "__main__":
    sys.exit(main())
