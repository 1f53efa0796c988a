"""UDP and TCP probes for sandboxes, run inside a namespace.

`send` sends tagged messages (UDP datagrams, or one TCP connection each with
--tcp); `recv` listens on a port for both, and on exit (SIGTERM or
--duration) prints one JSON object: messages counted by source address and by
tag. SIGUSR1 prints the same object for the messages counted so far, so that a
test can wait until what it expects has arrived. Every loop is bounded in count
and time.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time


def _message(args: argparse.Namespace, seq: int) -> bytes:
    return f"{args.tag} {seq} {args.payload}".encode().ljust(args.size, b".")


def send(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    deadline = time.monotonic() + args.max_seconds
    sent = 0
    if args.tcp:
        for seq in range(args.count):
            if time.monotonic() > deadline:
                break
            try:
                with socket.create_connection((args.dst, args.port), timeout=args.timeout,
                                              source_address=(args.src, 0) if args.src else None) as conn:
                    conn.sendall(_message(args, seq))
                sent += 1
            except OSError:
                pass  # connection refused or dropped on the way: not sent
            if args.interval:
                time.sleep(args.interval)
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if args.src:
                sock.bind((args.src, 0))
            for seq in range(args.count):
                if time.monotonic() > deadline:
                    break
                sock.sendto(_message(args, seq), (args.dst, args.port))
                sent += 1
                if args.interval:
                    time.sleep(args.interval)
    print(json.dumps({"sent": sent}), flush=True)


def recv(args: argparse.Namespace) -> None:
    sel = selectors.DefaultSelector()
    listeners = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            listener = socket.socket(family, kind)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind((host, args.port))
            if kind == socket.SOCK_STREAM:
                listener.listen(64)
            sel.register(listener, selectors.EVENT_READ, kind)
            listeners.append(listener)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    snapshot = False

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal snapshot
        snapshot = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    counts: dict[str, int] = {}
    tags: dict[str, int] = {}

    def count(data: bytes, source: str) -> None:
        counts[source] = counts.get(source, 0) + 1
        tag = data.split(b" ", 1)[0].decode(errors="replace")
        tags[tag] = tags.get(tag, 0) + 1

    print("ready", flush=True)
    deadline = time.monotonic() + args.duration
    while not stop and time.monotonic() < deadline:
        if snapshot:
            snapshot = False
            print(json.dumps({"by_source": counts, "by_tag": tags}), flush=True)
        for key, _ in sel.select(timeout=0.1):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            if key.data == socket.SOCK_DGRAM:
                data, addr = ready.recvfrom(65535)
                count(data, addr[0])
                continue
            conn, addr = ready.accept()
            with conn:
                conn.settimeout(2.0)
                chunks = []
                try:
                    while chunk := conn.recv(65535):
                        chunks.append(chunk)
                except OSError:
                    pass  # the peer went quiet (its data may have been dropped): count what arrived
                if chunks:
                    count(b"".join(chunks), addr[0])
    print(json.dumps({"by_source": counts, "by_tag": tags}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="hyperion-probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--src")
    s.add_argument("--dst", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--tcp", action="store_true", help="one TCP connection per message")
    s.add_argument("--count", type=int, default=10)
    s.add_argument("--interval", type=float, default=0.0)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--tag", default="t")
    s.add_argument("--payload", default="", help="text carried after the tag and sequence number")
    s.add_argument("--timeout", type=float, default=2.0, help="TCP connect/send timeout")
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
