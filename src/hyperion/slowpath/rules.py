"""The policy's slow_path section compiled into the native engine's Rules, and the rule spec that
workers rebuild them from."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
from typing import Any, Final

from hyperion import _slowpath
from hyperion.errors import PolicyError
from hyperion.policy import model
from hyperion.policy.model import Action, FastPathSection, Policy, RedirectClass, SlowPathSection
from hyperion.policy.neverblock import HostFacts, effective_never_block
from hyperion.policy.placement import xdp_dns_classes
from hyperion.protocols import IpProtocol
from hyperion.slowpath.protocol import RuleSpec

log = logging.getLogger("hyperion.slowpath")


def native_action(action: str) -> int:
    """A policy action's native constant: the action's name in capitals (_slowpath.BLOCK_SOURCE)."""
    value: int = getattr(_slowpath, action.upper())
    return value


# Other names of a native action: `allow` is _slowpath.ALLOW, the same action as `pass`.
ALIASES: Final[frozenset[str]] = frozenset({"allow"})


# An action the extension lacks fails here, at import, not at the first packet.
ACTIONS: dict[Action, int] = {action: native_action(action) for action in model.ACTIONS}


# Native action -> its name (an alias's native action is named by its main name: "pass").
ACTION_NAMES: dict[int, Action] = {v: k for k, v in ACTIONS.items() if k not in ALIASES}


FRAGMENT_POLICIES: Final[dict[model.DnsFragmentPolicy, int]] = {"drop": _slowpath.FRAG_DROP,
                                                                 "judge": _slowpath.FRAG_JUDGE}


STOPPING_ACTIONS = model.STOPPING_ACTIONS


# Name rules (match:) the workers apply: the XDP program judges the others, and redirects a query
# only when its most specific name rule has one of these actions, or no name rule matches it.
SLOW_PATH_NAME_ACTIONS: Final[frozenset[str]] = frozenset({"block_source"})


@dataclass(frozen=True)
class CompiledRules:
    rules: Any                  # _slowpath.Rules of the whole slow_path section (replay, inspect)
    labels: list[str]           # rule index -> "slow_path.dns_rules[0] match=evil.com action=drop"
    actions: list[str]          # rule index -> action name
    # The Rules constructor's arguments: what a worker process builds its own Rules from, so it
    # needs neither the policy model nor its validation. Only what runs in the slow path: every
    # rule keeps its index (so a worker's hits line up with labels), but names holds only the
    # SLOW_PATH_NAME_ACTIONS name rules; regexes and signatures are all there (the same databases).
    spec: RuleSpec = field(default_factory=RuleSpec)


def _literal_pattern(literal: str) -> str:
    """A literal as a Hyperscan pattern: every byte escaped, so nothing in it is syntax."""
    return "".join(f"\\x{b:02x}" for b in literal.encode())


def compile_rules(policy: Policy, never_block: Iterable[IPv4Network | IPv6Network] | None = None) -> CompiledRules:
    """slow_path -> Rules. Hyperscan refusals become PolicyErrors naming the rule.

    never_block: the effective list (hyperion.neverblock; the daemon adds the host's facts); by
    default the policy's own entries and, unless never_block_defaults is false, its allow_cidrs."""
    if never_block is None:
        never_block = effective_never_block(policy, HostFacts())
    return compile_slow_path_rules(policy.slow_path, policy.fast_path.redirect_ports, never_block)


def never_block_ranges(networks: Iterable[IPv4Network | IPv6Network]) -> list[list[Any]]:
    """Networks -> sorted, disjoint [version, first, last] ranges (addresses in hex), for the workers."""
    ranges: list[list[Any]] = []
    networks = list(networks)
    for version in (4, 6):
        family = [n for n in networks if n.version == version]
        merged = sorted(collapse_addresses(family))  # type: ignore[type-var]
        for net in merged:
            first, last = int(net.network_address), int(net.broadcast_address)
            # Adjacent networks of different sizes stay separate after collapsing: join them.
            if ranges and ranges[-1][0] == version and int(ranges[-1][2], 16) + 1 >= first:
                ranges[-1][2] = f"{max(last, int(ranges[-1][2], 16)):0{net.max_prefixlen // 4}x}"
                continue
            ranges.append([version, f"{first:0{net.max_prefixlen // 4}x}", f"{last:0{net.max_prefixlen // 4}x}"])
    return ranges


def dns_classes(slow: SlowPathSection, redirect_ports: Iterable[RedirectClass]) -> list[tuple[int, int]]:
    """(protocol, port) of the DNS classes: the redirect classes whose port is in slow_path.dns_ports."""
    ports = frozenset(slow.dns_ports)
    return [(c.protocol, c.port) for c in redirect_ports if c.port in ports]


def names_judged_in_xdp(slow: SlowPathSection, redirect_ports: Iterable[RedirectClass]) -> bool:
    """Whether the XDP program judges the name rules: then workers see only the queries it hands
    over, and need only the name rules it cannot carry out."""
    policy = Policy.model_construct(fast_path=FastPathSection.model_construct(redirect_ports=tuple(redirect_ports)),
                                    slow_path=slow)
    return bool(xdp_dns_classes(policy))


def compile_slow_path_rules(slow: SlowPathSection, redirect_ports: Iterable[RedirectClass],
                            never_block: Iterable[IPv4Network | IPv6Network] | None = None) -> CompiledRules:
    """slow_path -> Rules, parsing as DNS the DNS classes among redirect_ports (fast_path's)."""
    rules: list[tuple[int, int, float]] = []
    labels: list[str] = []
    actions: list[str] = []
    names: list[tuple[int, int, str]] = []
    dns_regex: list[tuple[int, str]] = []
    for i, rule in enumerate(slow.dns_rules):
        index = len(rules)
        rules.append((native_action(rule.action), rule.qtype or 0, rule.ttl_seconds or 0.0))
        labels.append(f"slow_path.dns_rules[{i}] {rule.describe()}")
        actions.append(rule.action)
        if rule.match is not None:
            if rule.match.startswith("*."):
                names.append((index, _slowpath.SUFFIX, rule.match[2:]))
            else:
                names.append((index, _slowpath.EXACT, rule.match))
        elif rule.regex is not None:
            dns_regex.append((index, rule.regex))  # Hyperscan syntax, (?i) included: nothing to translate
    by_class: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for i, sig in enumerate(slow.signatures):
        index = len(rules)
        rules.append((native_action(sig.action), 0, sig.ttl_seconds or 0.0))
        labels.append(f"slow_path.signatures[{i}] {sig.describe()}")
        actions.append(sig.action)
        pattern = _literal_pattern(sig.literal) if sig.literal is not None else sig.regex or ""
        by_class.setdefault((sig.class_.protocol, sig.class_.port), []).append((index, pattern))
    classes = [(protocol, port, patterns) for (protocol, port), patterns in by_class.items()]
    networks = list(slow.never_block if never_block is None else never_block)
    limits = [r.max_blocks_per_second or 0 for r in slow.dns_rules] + [
        s.max_blocks_per_second or 0 for s in slow.signatures]
    try:
        spec = RuleSpec(rules, names, dns_regex, classes, native_action(slow.malformed_dns_action),
                        [(version, first, last) for version, first, last in never_block_ranges(networks)], limits,
                        dns_classes(slow, redirect_ports), FRAGMENT_POLICIES[slow.dns_fragments])
        compiled = spec.build()
    except ValueError as exc:
        raise PolicyError(f"slow_path: {_name_failing_rule(str(exc), dns_regex, by_class, labels)}") from None
    # A TCP DNS class's queries split over segments or pipelined are judged only by the workers,
    # which reassemble the stream (DESIGN14B): they need every name rule then. For UDP that changes
    # nothing: the workers see only queries the program handed over, whose best name match the
    # workers find again.
    tcp_dns = any(protocol == IpProtocol.TCP for protocol, _ in spec.dns_classes)
    worker_names = [entry for entry in names if actions[entry[0]] in SLOW_PATH_NAME_ACTIONS] \
        if names_judged_in_xdp(slow, redirect_ports) and not tcp_dns else names
    return CompiledRules(compiled, labels, actions, replace(spec, names=worker_names))


def _name_failing_rule(message: str, dns_regex: list[tuple[int, str]],
                       by_class: dict[tuple[int, int], list[tuple[int, str]]], labels: list[str]) -> str:
    """Hyperscan names the failing pattern by its position in one database; map it to the rule."""
    found = re.match(r"(DNS regex|signatures of (\d+)/(\d+)): pattern (-?\d+): (.*)", message)
    if not found:
        return message
    position = int(found[4])
    patterns = dns_regex if found[2] is None else by_class.get((int(found[2]), int(found[3])), [])
    if 0 <= position < len(patterns):
        return f"{labels[patterns[position][0]]}: Hyperscan cannot compile it: {found[5]}"
    return message
