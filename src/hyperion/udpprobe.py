"""UDP probes for sandboxes, run inside a namespace: `send` tagged datagrams, `recv` and count them.

recv prints one JSON object on exit (SIGTERM or --duration): counts by source address.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time


def send(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if args.src:
            sock.bind((args.src, 0))
        deadline = time.monotonic() + args.max_seconds
        sent = 0
        for seq in range(args.count):
            if time.monotonic() > deadline:
                break
            sock.sendto(f"{args.tag} {seq}".encode().ljust(args.size, b"."), (args.dst, args.port))
            sent += 1
            if args.interval:
                time.sleep(args.interval)
    print(json.dumps({"sent": sent}), flush=True)


def recv(args: argparse.Namespace) -> None:
    sel = selectors.DefaultSelector()
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.bind(("0.0.0.0", args.port))
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::", args.port))
    for s in (v4, v6):
        sel.register(s, selectors.EVENT_READ)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    counts: dict[str, int] = {}
    tags: dict[str, int] = {}
    print("ready", flush=True)
    deadline = time.monotonic() + args.duration
    while not stop and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            data, addr = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
            counts[addr[0]] = counts.get(addr[0], 0) + 1
            tag = data.split(b" ", 1)[0].decode(errors="replace")
            tags[tag] = tags.get(tag, 0) + 1
    print(json.dumps({"by_source": counts, "by_tag": tags}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--src")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--interval", type=float, default=0.0)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--tag", default="t")
    s.add_argument("--max-seconds", type=float, default=30.0)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    if args.cmd == "send":
        send(args)
    else:
        recv(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
