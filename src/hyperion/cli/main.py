"""The `hyperion` command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from hyperion import __version__
from hyperion.cli.top import Snapshot, run_top
from hyperion.daemon.daemon import DEFAULT_EVENTS_PER_SEC, DEFAULT_METRICS_ADDR
from hyperion.daemon.metrics import class_label
from hyperion.daemon.owner import InterfaceBusyError, InterfaceLock, Owner, OwnerRole
from hyperion.durations import format_duration, parse_duration
from hyperion.errors import HyperionError
from hyperion.fastpath.loader import PIN_ROOT, object_capacities
from hyperion.fastpath.program import FastPath
from hyperion.kernel.abi import load_abi
from hyperion.kernel.netdev import ifindex_of, netns_inode
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.diff import policy_diff
from hyperion.policy.loading import load_policy, parse_policy, read_policy
from hyperion.policy.model import Policy
from hyperion.policy.neverblock import Provenance, discover_host_facts, never_block_sources
from hyperion.policy.placement import placement_report
from hyperion.slowpath.confinement import DEFAULT_WORKER_USER
from hyperion.slowpath.supervisor import SlowPathOptions
from hyperion.slowpath.telemetry import QueueStatus
from hyperion.slowpath.watchdog import DEFAULT_DEADLINE

if TYPE_CHECKING:  # the control socket's module is imported only by the commands that use it
    from hyperion.daemon.control import ControlReply, ControlRequest

EXIT_ERROR = 2
# A one-shot writer waits this long for another one-shot writer to finish with the interface.
CLI_WAIT_SECONDS = 10.0


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


def _writer(ifname: str, command: str) -> InterfaceLock | Owner:
    """The interface held for this one-shot write, or the daemon that owns it (the caller
    forwards the write to it or refuses)."""
    try:
        return InterfaceLock.acquire(ifname, OwnerRole.CLI, f"hyperion {command}", wait=CLI_WAIT_SECONDS)
    except InterfaceBusyError as exc:
        if exc.owner is not None and exc.owner.role is OwnerRole.DAEMON:
            return exc.owner
        raise


def _exclusive(ifname: str, command: str) -> InterfaceLock:
    """Holds the interface for a write a running daemon does not take over: refused while one runs."""
    held = _writer(ifname, command)
    if isinstance(held, Owner):
        raise HyperionError(f"{command}: refused: {ifname} is owned by {held.command} (pid {held.pid}); "
                            f"stop that daemon first (SIGTERM), which detaches unless it runs with --keep-on-exit")
    return held


def _forward(ifname: str, owner: Owner, message: ControlRequest, timeout: float = 15.0) -> ControlReply:
    from hyperion.daemon import control

    try:
        return control.request(ifname, message, timeout=timeout)
    except control.ControlError as exc:
        raise HyperionError(f"{owner.command} (pid {owner.pid}), which owns {ifname}: {exc}") from None


def cmd_attach(args: argparse.Namespace) -> int:
    compiled, text = None, ""
    if args.policy:
        # Validated and compiled (capacities checked) before anything is attached.
        policy, text = read_policy(args.policy)
        abi = load_abi()
        compiled = PolicyCompiler(abi, object_capacities(abi.object_path)).compile(policy)
    ifindex_of(args.iface)  # a clear error for a missing interface before anything else
    applied: list[int] = []

    def fill(fastpath: FastPath) -> None:
        assert compiled is not None
        applied.append(fastpath.apply(compiled))
        fastpath.record_applied_policy(text)

    # The policy goes into the maps before the program is attached: no packet is judged without it.
    with _exclusive(args.iface, "attach"), \
            FastPath.attach(args.iface, args.mode, before_link=fill if compiled is not None else None) as fastpath:
        if compiled is not None:
            if not applied:  # an attachment already pinned there: it keeps enforcing until this applies
                fill(fastpath)
            print(f"attached to {args.iface}; policy generation {applied[0]}")
        else:
            print(f"attached to {args.iface}; no policy applied (everything passes)")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    iface = _iface(args)
    with _exclusive(iface, "detach"):
        detached = FastPath.detach(iface)
    if detached:
        print(f"detached from {iface}")
        return 0
    print(f"Hyperion was not attached to {iface}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    with FastPath.open(_iface(args)) as fastpath:
        status = fastpath.status()
        applied = fastpath.applied_policy_text() if not args.json else None
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"interface        {status['interface']} ({status.get('attach_mode') or 'unknown'} mode)")
    print(f"program          id {status['program_id']}, {status['xlated_bytes']} B xlated, "
          f"{status['jited_bytes']} B jited, {status['verified_insns']} insns verified")
    print(f"policy           generation {status['policy_generation']}, mode {status['mode'] or 'none'}")
    for line in _applied_placement(applied):
        print(f"  {line}")
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
    from functools import partial

    from hyperion.daemon.daemon import Daemon, DaemonOptions
    from hyperion.daemon.privileges import daemon_capabilities, drop_privileges
    from hyperion.slowpath.confinement import WORKER_SWITCH_CAPABILITIES, resolve_worker_user

    metrics_addr = None if args.no_metrics else args.metrics_addr
    # Workers are confined unless the daemon keeps its privileges (debugging) or runs none.
    worker_user = None if args.keep_privileges or args.no_slowpath else args.worker_user
    if worker_user is not None:
        resolve_worker_user(worker_user)  # a bad --worker-user is refused before anything attaches
    privilege_drop = None if args.keep_privileges else partial(
        drop_privileges, daemon_capabilities(metrics_addr, confined_workers=worker_user is not None),
        permitted_only=WORKER_SWITCH_CAPABILITIES if worker_user is not None else ())
    daemon = Daemon(DaemonOptions(
        ifname=args.iface, policy_path=Path(args.policy), attach_mode=args.mode,
        keep_on_exit=args.keep_on_exit, metrics_addr=metrics_addr, privilege_drop=privilege_drop,
        events_path=args.events, events_per_sec=args.events_rate, watch_policy=not args.no_watch,
        slowpath=not args.no_slowpath,
        slowpath_options=SlowPathOptions(
            delivery=args.delivery,
            zerocopy=args.zerocopy, cpus=_cpus(args.cpus), deadline=args.watchdog_deadline,
            max_queue_restarts=args.max_queue_restarts, escalate=args.escalate,
            worker_module=args.worker_module, worker_user=worker_user),
    ))
    daemon.serve()
    return 0


def _seconds(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return seconds


def cmd_queues(args: argparse.Namespace) -> int:
    from hyperion.daemon import control

    ifname = _iface(args)
    if args.action in ("restart", "withdraw") and args.queue is None:
        raise HyperionError(f"queues {args.action}: give --queue")
    if args.action != "show":
        answer = control.request(ifname, {"cmd": args.action, "queue": args.queue})
        answer.pop("ok", None)
        print(json.dumps(answer) if args.json else f"{args.action}: {answer}")
        return 0
    # The daemon's full rows, or the few fields the fast path's maps hold.
    queues: list[QueueStatus] | list[dict[str, Any]]
    try:
        answer = control.request(ifname, {"cmd": "queues"})
        queues, source = answer["queues"], "daemon"
    except control.ControlError:
        # No daemon: what the fast path itself knows (states survive in the pinned map).
        with FastPath.open(ifname) as fastpath:
            counters = fastpath.queue_counters()
            rows: list[dict[str, Any]] = [
                {"queue": q, "state": st["state"], "reason": st["reason"], "restarts": st["restarts"],
                 "redirect": {"bpf_state": st["state"], **counters.get(q, {})}}
                for q, st in sorted(fastpath.queue_states().items())]
            queues = rows
        source = "fast path (no daemon running)"
    if args.json:
        print(json.dumps({"interface": ifname, "source": source, "queues": queues}, indent=2))
        return 0
    print(f"{ifname}: queues as seen by the {source}")
    if not queues:
        print("  (no managed queues)")
    for q in queues:
        print(f"queue {q['queue']}: {q['state'].upper()} ({q['reason']}), restarts {q.get('restarts', 0)}")
        for plane in ("steering", "redirect", "descriptors", "driver", "convergence"):
            if q.get(plane) is not None:
                value = q[plane]
                text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
                print(f"  {plane:<12} {text}")
        for t in q.get("transitions", [])[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(t["time"]))
            detected = "" if t["detection_seconds"] is None else f" detected in {t['detection_seconds'] * 1000:.0f} ms"
            print(f"  {when} {t['from_state']} -> {t['to_state']} ({t['reason']}){detected} {t['detail']}")
    return 0


def _cpus(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise HyperionError(f"--cpus {text!r}: expected a comma-separated list of CPU numbers") from None


def snapshot_of(fastpath: FastPath) -> Snapshot:
    status_settings = fastpath.settings()
    modes = {v: k for k, v in fastpath.abi.modes.items()}
    return Snapshot(
        taken_at=time.monotonic(),
        interface=fastpath.ifname or "",
        mode=modes.get(status_settings.mode) if status_settings.generation else None,
        policy_generation=int(status_settings.generation),
        counters=fastpath.counters(),
        classes={class_label(p, port): c for (p, port), c in fastpath.class_counters().items()},
        queues=fastpath.queue_counters(),
        maps=fastpath.map_fill(),
        events=fastpath.event_stats(),
    )


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise HyperionError("--interval must be positive")
    with FastPath.open(_iface(args)) as fastpath:
        return run_top(lambda: snapshot_of(fastpath), interval=args.interval, once=args.once)


def cmd_policy_diff(args: argparse.Namespace) -> int:
    if args.new is None:
        with FastPath.open(_iface(args)) as fastpath:
            running = fastpath.applied_policy_text()
        if running is None:
            raise HyperionError("no record of the running policy's text; give two files")
        old, old_name = parse_policy(running, "running policy"), "running policy"
        new, new_name = load_policy(args.old), args.old
    else:
        old, old_name = load_policy(args.old), args.old
        new, new_name = load_policy(args.new), args.new
    changes = policy_diff(old, new)
    lines = []
    if old.mode != new.mode:
        lines.append(f"~ mode: {old.mode} -> {new.mode}")
    if old.slow_path.malformed_dns_action != new.slow_path.malformed_dns_action:
        lines.append(f"~ slow_path.malformed_dns_action: {old.slow_path.malformed_dns_action} -> "
                     f"{new.slow_path.malformed_dns_action}")
    if old.slow_path.never_block_defaults != new.slow_path.never_block_defaults:
        lines.append(f"~ slow_path.never_block_defaults: {str(old.slow_path.never_block_defaults).lower()} -> "
                     f"{str(new.slow_path.never_block_defaults).lower()}")
    lines += [f"- slow_path.never_block: {n}" for n in old.slow_path.never_block if n not in new.slow_path.never_block]
    lines += [f"+ slow_path.never_block: {n}" for n in new.slow_path.never_block if n not in old.slow_path.never_block]
    for section, change in changes.items():
        lines += [f"- {section.path}: {entry}" for entry in change["removed"]]
        lines += [f"+ {section.path}: {entry}" for entry in change["added"]]
    print(f"--- {old_name}\n+++ {new_name}")
    print("\n".join(lines) if lines else "(no changes)")
    return 0


def _never_block_hit(fastpath: FastPath, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                     ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Provenance] | None:
    """Where address is in the running policy's effective never_block (the host's facts as of now)."""
    text = fastpath.applied_policy_text()
    try:
        policy = parse_policy(text, "running policy") if text is not None else Policy()
    except HyperionError:
        policy = Policy()  # the defaults still protect this host
    return next(((network, why) for network, why in never_block_sources(policy, discover_host_facts())
                 if network.version == address.version and address in network), None)


def cmd_block_add(args: argparse.Namespace) -> int:
    address = _address(args.address)
    ttl = parse_duration(args.ttl) if args.ttl else None
    ifname = _iface(args)
    with FastPath.open(ifname) as fastpath:
        # The operator may mean it, but a typo here can cut the host off its gateway or resolver.
        hit = _never_block_hit(fastpath, address)
    if hit is not None:
        what = f"{address} is in never_block ({hit[0]}, {hit[1].value})"
        if not args.force:
            raise HyperionError(f"{what}; refusing to block it (use --force to block it anyway)")
        print(f"hyperion: warning: {what}; blocking it anyway (--force)", file=sys.stderr)
    held = _writer(ifname, "block add")
    if isinstance(held, Owner):
        _forward(ifname, held, {"cmd": "block_add", "address": str(address), "ttl": ttl})
    else:
        with held, FastPath.open(ifname) as fastpath:
            fastpath.block_add(address, ttl)
    print(f"blocked {address}" + (f" for {format_duration(ttl)}" if ttl else " until removed") + _via(held))
    return 0


def cmd_block_del(args: argparse.Namespace) -> int:
    address = _address(args.address)
    ifname = _iface(args)
    held = _writer(ifname, "block del")
    if isinstance(held, Owner):
        removed = bool(_forward(ifname, held, {"cmd": "block_del", "address": str(address)})["removed"])
    else:
        with held, FastPath.open(ifname) as fastpath:
            removed = fastpath.block_delete(address)
    print((f"unblocked {address}" if removed else f"{address} was not blocked") + _via(held))
    return 0 if removed else 1


def _via(held: InterfaceLock | Owner) -> str:
    return f" (through the daemon, pid {held.pid})" if isinstance(held, Owner) else ""


class BlockRow(TypedDict):
    """One dynamic block, as `hyperion block list --json` prints it."""
    address: str
    expires_in: float | None  # seconds; None: until removed
    expired: bool
    rule_id: int


def cmd_block_list(args: argparse.Namespace) -> int:
    with FastPath.open(_iface(args)) as fastpath:
        blocks = fastpath.blocks()
    rows: list[BlockRow] = [
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


def _applied_placement(text: str | None) -> list[str]:
    """Where the applied policy's rules run (counts per tier and the DNS classes), from the text the
    last apply recorded; nothing when there is none or it no longer parses."""
    if text is None:
        return []
    try:
        policy = parse_policy(text, "applied policy")
    except HyperionError:
        return []
    return placement_report(policy, per_rule=False)


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    counts = ", ".join(f"{k}={v}" for k, v in policy.summary().items())
    print(f"{args.file}: valid ({policy.mode} mode; {counts})")
    # Where each DNS rule and signature runs: XDP or the slow path.
    for line in placement_report(policy, per_rule=not args.counts_only):
        print(line)
    return 0


def cmd_policy_apply(args: argparse.Namespace) -> int:
    policy, text = read_policy(args.file)
    ifname = _iface(args)
    held = _writer(ifname, "policy apply")
    if isinstance(held, Owner):
        # The daemon reads the file itself and applies it on its main thread, between reloads.
        answer = _forward(ifname, held, {"cmd": "policy_apply", "path": str(Path(args.file).resolve())},
                          timeout=150.0)
        generation = int(answer["generation"])
    else:
        with held, FastPath.open(ifname) as fastpath:
            generation = fastpath.apply(PolicyCompiler(fastpath.abi, fastpath.capacities()).compile(policy))
            fastpath.record_applied_policy(text)
    print(f"applied {args.file}: generation {generation}" + _via(held))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from hyperion.replay import Replayer, as_json, check_capture, summarize

    capture = check_capture(args.capture)
    verdicts = []
    with Replayer(load_policy(args.policy)) as replayer:
        for verdict in replayer.replay(capture):
            verdicts.append(verdict)
            if args.json:
                print(json.dumps(as_json(verdict)))
            elif not args.summary_only:
                print(f"{verdict.index:>6}  {verdict.verdict:<14} {verdict.stage:<17} {verdict.reason:<18} "
                      f"{verdict.rule or ''}")
    if not args.json:
        print(f"\n{len(verdicts)} packets from {capture}")
        print(f"{'verdict':<14} {'stage':<17} {'reason':<18} {'packets':>8}")
        for (outcome, stage, reason), n in sorted(summarize(verdicts).items(), key=lambda kv: -kv[1]):
            print(f"{outcome:<14} {stage:<17} {reason:<18} {n:>8}")
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
    p.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR,
                   help=f"where /metrics listens (default {DEFAULT_METRICS_ADDR}; beyond loopback is your choice)")
    p.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    p.add_argument("--events", metavar="FILE", help="write sampled drop events as JSON lines to FILE ('-': stdout)")
    p.add_argument("--events-rate", type=int, default=DEFAULT_EVENTS_PER_SEC,
                   help=f"drop events per second per CPU at most (default {DEFAULT_EVENTS_PER_SEC})")
    p.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only, not on file changes")
    p.add_argument("--no-slowpath", action="store_true",
                   help="no AF_XDP workers: redirect classes take their on_failure fallback")
    p.add_argument("--delivery", choices=["wire", "tun"], default="wire",
                   help="how what the slow path passes reaches the stack: wire (default; it re-enters through "
                        "--iface, as received there) or tun (a TUN device; always with --mode generic)")
    p.add_argument("--zerocopy", choices=["auto", "on", "off"], default="off",
                   help="AF_XDP zero-copy (default off: copy mode works on every driver)")
    p.add_argument("--cpus", help="pin queue workers to these CPUs, e.g. 0,1 (worker i -> i-th CPU, cycling)")
    p.add_argument("--watchdog-deadline", type=_seconds, default=DEFAULT_DEADLINE, metavar="DURATION",
                   help="detect a dead, stalled or starved worker within this (default 200ms)")
    p.add_argument("--max-queue-restarts", type=int, default=3, metavar="N",
                   help="failed queue-local recoveries in a row before escalating (default 3)")
    p.add_argument("--escalate", choices=["none", "interface"], default="none",
                   help="after N failures: none (queue stays fenced: 'failed') or interface "
                        "(link down/up, interrupts all traffic)")
    p.add_argument("--keep-privileges", action="store_true",
                   help="keep every capability, in the daemon and its workers (default: once attached, keep "
                        "only CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_KILL; workers "
                        "confined; see docs/security.md)")
    p.add_argument("--worker-user", default=DEFAULT_WORKER_USER, metavar="USER",
                   help="once its socket is bound, each AF_XDP worker runs as this user (name, UID or UID:GID; "
                        f"default {DEFAULT_WORKER_USER}; a dedicated user is better) with no capabilities and a "
                        "seccomp allowlist")
    # No option: the workers' entry point is the product's; only a caller of dispatch() (the lab's
    # chaos daemon) sets another.
    p.set_defaults(func=cmd_run, worker_module=SlowPathOptions.worker_module)

    p = sub.add_parser("queues", help="lifecycle of the AF_XDP queues (planes, state, transitions) and actions")
    p.add_argument("action", nargs="?", choices=["show", "restart", "withdraw", "restore"], default="show",
                   help="show (default); restart a queue with a fresh worker, socket and UMEM; withdraw a "
                        "queue (and those above it) from steering; restore all channels")
    p.add_argument("--queue", "-q", type=int, help="queue for restart/withdraw")
    iface_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_queues)

    p = sub.add_parser("top", help="live rates per verdict/reason, queue and class of a running fast path")
    iface_arg(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("replay", help="run a capture through the real fast path and slow path (offline)")
    p.add_argument("capture", help="pcap or pcapng file (Ethernet)")
    p.add_argument("--policy", required=True, help="policy file to judge it by")
    p.add_argument("--json", action="store_true", help="one JSON object per packet, no summary")
    p.add_argument("--summary-only", action="store_true", help="only the summary table")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("block", help="dynamic blocklist of source addresses")
    block = p.add_subparsers(dest="block_command", required=True, metavar="ACTION")
    b = block.add_parser("add", help="block a source address, optionally for a time")
    b.add_argument("address")
    b.add_argument("--ttl", help="duration such as 30s, 10m, 1h (default: until removed)")
    b.add_argument("--force", action="store_true",
                   help="block it even if it is in never_block (this host's addresses, gateways, resolvers, "
                        "allow_cidrs, slow_path.never_block)")
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
    c = pol.add_parser("check", help="validate a policy file and say where each rule runs (xdp or slow path); "
                       "exit 2 with the problems if invalid")
    c.add_argument("file")
    c.add_argument("--counts-only", action="store_true",
                   help="rules per tier only, not a line per rule (for policies of a million rules)")
    c.set_defaults(func=cmd_policy_check)
    c = pol.add_parser("diff", help="what a reload would add and remove (OLD NEW, or running -> FILE)")
    c.add_argument("old", metavar="OLD_OR_NEW")
    c.add_argument("new", nargs="?", metavar="NEW")
    iface_arg(c)
    c.set_defaults(func=cmd_policy_diff)
    c = pol.add_parser("apply", help="apply a policy file to an attached interface, atomically")
    c.add_argument("file")
    iface_arg(c)
    c.set_defaults(func=cmd_policy_apply)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace, prog: str = "hyperion") -> int:
    """Runs parsed arguments (build_parser) as `hyperion` would; errors are printed as PROG: error: ..."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except HyperionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as exc:  # the pins, bpffs and /run/hyperion are root's (docs/security.md)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}permission denied; Hyperion's pinned state and maps need root "
              "(CAP_BPF and CAP_NET_ADMIN)", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # duration and similar argument parsing
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
