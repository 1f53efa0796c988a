"""The `hyperion` command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperion import __version__
from hyperion.compiler import PolicyCompiler
from hyperion.durations import format_duration, parse_duration
from hyperion.errors import HyperionError
from hyperion.fastpath import PIN_ROOT, FastPath, netns_inode
from hyperion.policy import load_policy

EXIT_ERROR = 2


def _attached_interfaces() -> list[str]:
    prefix = f"ns{netns_inode()}_"
    if not PIN_ROOT.is_dir():
        return []
    return sorted(p.name[len(prefix):] for p in PIN_ROOT.iterdir() if p.name.startswith(prefix))


def _iface(args: argparse.Namespace) -> str:
    """--iface, or the only interface Hyperion is attached to in this namespace."""
    if args.iface:
        return str(args.iface)
    attached = _attached_interfaces()
    if len(attached) == 1:
        return attached[0]
    if not attached:
        raise HyperionError("Hyperion is not attached to any interface in this network namespace; "
                            "give --iface")
    raise HyperionError(f"attached to several interfaces ({', '.join(attached)}); give --iface")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise HyperionError(f"{text!r} is not an IPv4 or IPv6 address") from None


def cmd_attach(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy) if args.policy else None
    with FastPath.attach(args.iface, args.mode) as fastpath:
        if policy is not None:
            compiled = PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy)
            generation = fastpath.apply(compiled)
            print(f"attached to {args.iface}; policy generation {generation}")
        else:
            print(f"attached to {args.iface}; no policy applied (everything passes)")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    iface = _iface(args)
    if FastPath.detach(iface):
        print(f"detached from {iface}")
        return 0
    print(f"Hyperion was not attached to {iface}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    with FastPath.open(_iface(args)) as fastpath:
        status = fastpath.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"interface        {status['interface']} ({status.get('attach_mode') or 'unknown'} mode)")
    print(f"program          id {status['program_id']}, {status['xlated_bytes']} B xlated, "
          f"{status['jited_bytes']} B jited, {status['verified_insns']} insns verified")
    print(f"policy           generation {status['policy_generation']}, mode {status['mode'] or 'none'}")
    print("maps")
    for name, fill in status["maps"].items():
        print(f"  {name:<14} {fill['entries']:>9} / {fill['capacity']}")
    print("counters")
    if not status["counters"]:
        print("  (no packets yet)")
    for c in status["counters"]:
        print(f"  {c['verdict']:<15} {c['reason']:<20} {c['packets']:>12} pkts {c['bytes']:>14} B")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hyperion.daemon import Daemon, DaemonOptions

    daemon = Daemon(DaemonOptions(
        ifname=args.iface, policy_path=Path(args.policy), attach_mode=args.mode,
        keep_on_exit=args.keep_on_exit,
    ))
    daemon.serve()
    return 0


def cmd_block_add(args: argparse.Namespace) -> int:
    address = _address(args.address)
    ttl = parse_duration(args.ttl) if args.ttl else None
    with FastPath.open(_iface(args)) as fastpath:
        fastpath.block_add(address, ttl)
    print(f"blocked {address}" + (f" for {format_duration(ttl)}" if ttl else " until removed"))
    return 0


def cmd_block_del(args: argparse.Namespace) -> int:
    address = _address(args.address)
    with FastPath.open(_iface(args)) as fastpath:
        removed = fastpath.block_delete(address)
    print(f"unblocked {address}" if removed else f"{address} was not blocked")
    return 0 if removed else 1


def cmd_block_list(args: argparse.Namespace) -> int:
    with FastPath.open(_iface(args)) as fastpath:
        blocks = fastpath.blocks()
    rows: list[dict[str, Any]] = [
        {"address": str(b.address), "expires_in": b.expires_in, "expired": b.expires_in is not None
         and b.expires_in <= 0, "rule_id": b.rule_id}
        for b in sorted(blocks, key=lambda b: (b.address.version, int(b.address)))
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        expiry = ("never" if row["expires_in"] is None else "expired" if row["expired"]
                  else f"in {format_duration(row['expires_in'])}")
        print(f"{row['address']:<40} expires {expiry}")
    if not rows:
        print("(no dynamic blocks)")
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    counts = ", ".join(f"{k}={v}" for k, v in policy.summary().items())
    print(f"{args.file}: valid ({policy.mode} mode; {counts})")
    return 0


def cmd_policy_apply(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    with FastPath.open(_iface(args)) as fastpath:
        generation = fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
    print(f"applied {args.file}: generation {generation}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperion", description="XDP network enforcement and telemetry dataplane.")
    parser.add_argument("--version", action="version", version=f"hyperion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def iface_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument("--iface", "-i", required=required,
                       help="interface (default: the only one attached in this network namespace)")

    def mode_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mode", choices=["native", "generic"], default="native",
                       help="XDP attach mode (default native; generic for drivers without XDP)")

    p = sub.add_parser("attach", help="attach the fast path to an interface (stays after exit)")
    iface_arg(p, required=True)
    mode_arg(p)
    p.add_argument("--policy", help="policy file to apply right away")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("detach", help="detach the fast path and remove its pinned state")
    iface_arg(p)
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("status", help="mode, program, policy generation, map fill, counters")
    iface_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("run", help="attach, apply the policy, run until SIGTERM (SIGHUP reloads)")
    iface_arg(p, required=True)
    p.add_argument("--policy", required=True, help="policy file (YAML)")
    mode_arg(p)
    p.add_argument("--keep-on-exit", action="store_true",
                   help="leave the fast path attached when the daemon stops")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("block", help="dynamic blocklist of source addresses")
    block = p.add_subparsers(dest="block_command", required=True, metavar="ACTION")
    b = block.add_parser("add", help="block a source address, optionally for a time")
    b.add_argument("address")
    b.add_argument("--ttl", help="duration such as 30s, 10m, 1h (default: until removed)")
    iface_arg(b)
    b.set_defaults(func=cmd_block_add)
    b = block.add_parser("del", help="remove a dynamic block")
    b.add_argument("address")
    iface_arg(b)
    b.set_defaults(func=cmd_block_del)
    b = block.add_parser("list", help="list dynamic blocks")
    iface_arg(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_block_list)

    p = sub.add_parser("policy", help="check or apply a policy file")
    pol = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    c = pol.add_parser("check", help="validate a policy file; exit 2 with the problems if invalid")
    c.add_argument("file")
    c.set_defaults(func=cmd_policy_check)
    c = pol.add_parser("apply", help="apply a policy file to an attached interface, atomically")
    c.add_argument("file")
    iface_arg(c)
    c.set_defaults(func=cmd_policy_apply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except HyperionError as exc:
        print(f"hyperion: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # duration and similar argument parsing
        print(f"hyperion: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
