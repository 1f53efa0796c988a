"""`hyperion-lab`: the lab's commands (sandbox, generate, bench, chaos), apart from the product's CLI.

The product (`hyperion`) never imports the lab; the lab drives the product from outside, as a user
would. Each command imports its module only when run, so `hyperion-lab sandbox` does not pay for
matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from hyperion.cli.main import dispatch

DEFAULT_SANDBOX = "hypsbx"


def _sandbox(args: argparse.Namespace) -> Any:
    from hyperion.lab.sandbox import Sandbox

    # GRO on: frames from `hyperion generate` reach the stack even with no XDP program attached.
    return Sandbox(prefix=args.name, topology=args.topology, rx_queues=args.queues, owned=False, gro=True,
                   wire_xdp=True)


def cmd_sandbox_up(args: argparse.Namespace) -> int:
    sb = _sandbox(args)
    was_up = sb.is_up()
    sb.up()
    info = sb.describe()
    if args.json:
        print(json.dumps({**info, "created": not was_up}, indent=2))
        return 0
    print(f"sandbox {sb.prefix} ({sb.topology}, {sb.rx_queues} queue{'s' if sb.rx_queues > 1 else ''}) "
          f"{'was already up' if was_up else 'is up'}")
    for role, node in info["nodes"].items():
        for ifname, addresses in node["interfaces"].items():
            print(f"  {role:<8} {node['netns']:<16} {ifname:<14} {', '.join(addresses)}")
    print(f"attach Hyperion in {sb.host_ns} to {sb.host_if}:\n"
          f"  nsenter --net=/run/netns/{sb.host_ns} -- hyperion run --iface {sb.host_if} --policy FILE\n"
          f"send from the client:\n"
          f"  hyperion generate --netns {sb.client_ns} --iface {sb.client_if} --dst {_attach_v6(info)} "
          f"--dst-mac {sb.mac(sb.host_ns, sb.host_if)} --src 2001:db8:ff00::/120 --count 100000\n"
          f"remove it: hyperion sandbox down --name {sb.prefix}")
    return 0


def _attach_v6(info: dict[str, Any]) -> str:
    """The IPv6 address of the interface Hyperion attaches to."""
    node = next(n for n in info["nodes"].values() if n["netns"] == info["attach"]["netns"])
    return str(node["interfaces"][info["attach"]["iface"]][1])


def cmd_sandbox_down(args: argparse.Namespace) -> int:
    from hyperion.lab.sandbox import NAME_PREFIX, Sandbox, cleanup_stale, list_sandboxes

    if args.stale:
        removed = cleanup_stale()
    elif args.all:
        removed = []
        for entry in list_sandboxes(NAME_PREFIX):
            Sandbox(prefix=entry["name"]).down()
            removed.append(entry["name"])
    else:
        present = [s for s in list_sandboxes(args.name) if s["name"] == args.name]
        Sandbox(prefix=args.name).down()
        removed = [args.name] if present else []
    print("removed: " + ", ".join(removed) if removed else "nothing to remove")
    return 0


def cmd_sandbox_status(args: argparse.Namespace) -> int:
    from hyperion.lab.sandbox import NAME_PREFIX, list_sandboxes

    entries = list_sandboxes(NAME_PREFIX, processes=True)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no sandboxes")
        return 0
    print(f"{'name':<14} {'status':<11} {'topology':<9} {'queues':>6}  namespaces (processes)")
    for e in entries:
        spaces = ", ".join(f"{ns} ({len(e['processes'].get(ns, []))})" for ns in e["namespaces"]) or "-"
        print(f"{e['name']:<14} {e['status']:<11} {e['topology'] or '-':<9} {e['rx_queues'] or '-':>6}  {spaces}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from hyperion.lab.generator import run_from_args

    print(json.dumps(run_from_args(args)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hyperion.lab.bench import run_from_args

    argv = ["hyperion-lab bench", "--out", str(args.out)] + (["--quick"] if args.quick else []) \
        + (["--only", args.only] if args.only else [])
    return run_from_args(args, " ".join(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperion-lab", description="Hyperion's lab: sandboxes, traffic, "
                                     "benchmarks and fault injection (never needed on a production box).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from hyperion.lab.sandbox import MAX_QUEUES, TOPOLOGIES

    p = sub.add_parser("sandbox", help="network-namespace sandboxes over veth (pair or gateway topology)")
    sandbox = p.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    up = sandbox.add_parser("up", help="create a sandbox (does nothing if it is already up)")
    up.add_argument("--name", default=DEFAULT_SANDBOX, help=f"name prefix, 'hyp' + up to 10 of a-z0-9 "
                                                            f"(default {DEFAULT_SANDBOX})")
    up.add_argument("--topology", choices=TOPOLOGIES, default="pair",
                    help="pair: client - host; gateway: client - gateway - server (default pair)")
    up.add_argument("--queues", type=int, default=1, help=f"RX/TX queues per veth (1..{MAX_QUEUES}, default 1)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_sandbox_up)
    down = sandbox.add_parser("down", help="remove a sandbox and everything in it")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--name", default=DEFAULT_SANDBOX, help=f"the sandbox (default {DEFAULT_SANDBOX})")
    which.add_argument("--stale", action="store_true", help="every sandbox whose owning process is gone")
    which.add_argument("--all", action="store_true", help="every sandbox (also those in use by running tests)")
    down.set_defaults(func=cmd_sandbox_down)
    status = sandbox.add_parser("status", help="list sandboxes: up, kept, stale (owner gone) or unrecorded")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_sandbox_status)

    from hyperion.lab.generator import add_arguments as generator_arguments

    p = sub.add_parser("generate", help="send live frames (UDP, TCP SYN, DNS; IPv4/IPv6; spread sources)")
    generator_arguments(p)
    p.set_defaults(func=cmd_generate)

    from hyperion.lab.bench import add_arguments as bench_arguments

    p = sub.add_parser("bench", help="run the benchmarks; results.json, REPORT.md and plots in --out")
    bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("chaos", help="inject a queue fault under steady traffic in a sandbox and measure the outcome")
    from hyperion.lab import chaos

    chaos.add_arguments(p)
    p.set_defaults(func=chaos.run_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv), prog="hyperion-lab")


if __name__ == "__main__":
    sys.exit(main())
