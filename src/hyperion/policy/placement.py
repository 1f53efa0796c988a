"""Where each rule of a policy runs: in the XDP program, or in the AF_XDP slow path.

The compiler places rules (hyperion.policy.compiler builds the maps from this), and `hyperion
policy check` and `status` report it. Exact and "*.suffix" name rules whose action the program
carries out run in XDP for the DNS classes; block_source name rules, regex rules and payload
signatures need user space. Over TCP the program judges a whole query at the connection's stream
position and hands the rest of the connection to the slow path, which reassembles it: a tcp DNS
class always keeps the slow path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from hyperion.policy.model import Action, DnsRule, Policy, PolicyList, RedirectClass, render_entry
from hyperion.protocols import IpProtocol, protocol_name

UDP: Final = int(IpProtocol.UDP)
TCP: Final = int(IpProtocol.TCP)


class Tier(StrEnum):
    """Where a rule runs."""

    XDP = "xdp"
    SLOW_PATH = "slow path"


# Name-rule actions the XDP program carries out itself; block_source needs the slow path's
# safeguards (never_block, rate limit), so the program hands such queries over.
XDP_DNS_ACTIONS: Final[frozenset[Action]] = frozenset({"drop", "nxdomain", "refuse", "pass", "allow", "alert"})


@dataclass(frozen=True)
class Placement:
    """One rule, where it runs."""

    list: PolicyList
    index: int  # 0-based position in its list
    text: str   # render_entry of the rule
    tier: Tier

    @property
    def path(self) -> str:
        return f"{self.list.path}[{self.index}]"


def is_xdp_dns_class(policy: Policy, cls: RedirectClass) -> bool:
    """A UDP or TCP class on a DNS port: the program judges its queries by the name rules (unless
    slow_path.dns_name_rules puts them all in the slow path). A tcp class only when no rule must see
    every query of it (tcp_needs_every_query)."""
    slow = policy.slow_path
    if slow.dns_name_rules != "xdp" or cls.port not in slow.dns_ports:
        return False
    if cls.protocol == TCP:
        return not tcp_needs_every_query(policy, cls)
    return cls.protocol == UDP


def tcp_needs_every_query(policy: Policy, cls: RedirectClass) -> bool:
    """Whether regex DNS rules or signatures of the class must see each of its queries. Over TCP the
    program delivers a whole query that no name rule decided (it cannot hand one message of a
    stream it keeps judging to the slow path), so such a tcp class is redirected whole instead, and
    the slow path judges every query of it."""
    slow = policy.slow_path
    return any(rule.regex is not None for rule in slow.dns_rules) or any(
        (s.class_.protocol, s.class_.port) == (cls.protocol, cls.port) for s in slow.signatures)


def xdp_dns_classes(policy: Policy) -> tuple[RedirectClass, ...]:
    return tuple(c for c in policy.fast_path.redirect_ports if is_xdp_dns_class(policy, c))


def runs_in_xdp(rule: DnsRule) -> bool:
    """A name rule with an action the program carries out (given a UDP DNS class to see it)."""
    return rule.match is not None and rule.action in XDP_DNS_ACTIONS


def dns_rule_tier(policy: Policy, rule: DnsRule) -> Tier:
    return Tier.XDP if runs_in_xdp(rule) and xdp_dns_classes(policy) else Tier.SLOW_PATH


def needs_slow_path(policy: Policy, cls: RedirectClass) -> bool:
    """Whether the class's packets that the program did not decide go to the slow path: always for a
    non-DNS class and a tcp class (the slow path reassembles what XDP cannot judge: partial and
    pipelined queries); for a UDP DNS class only when the slow path has something to do for it
    (regex or block_source DNS rules, or signatures of the class)."""
    if not is_xdp_dns_class(policy, cls) or cls.protocol == TCP:
        return True
    slow = policy.slow_path
    if any(not runs_in_xdp(rule) for rule in slow.dns_rules):
        return True
    return any((s.class_.protocol, s.class_.port) == (cls.protocol, cls.port) for s in slow.signatures)


def dns_class_placement(policy: Policy, cls: RedirectClass) -> str:
    """What happens to a DNS class's queries, for the placement report."""
    if is_xdp_dns_class(policy, cls):
        if cls.protocol == TCP:
            return "xdp for whole queries at the stream position, then the slow path"
        return "xdp, then the slow path" if needs_slow_path(policy, cls) else "xdp only (nothing redirected)"
    if policy.slow_path.dns_name_rules != "xdp":
        return "slow path (dns_name_rules: slow_path)"
    if cls.protocol == TCP:
        return "slow path (regex rules and the class's signatures must see every query: redirected whole)"
    return "slow path"


def placements(policy: Policy) -> list[Placement]:
    """Every DNS rule and signature, in policy order, with its tier."""
    xdp = bool(xdp_dns_classes(policy))
    rows = [Placement(PolicyList.DNS_RULES, i, render_entry(rule),
                      Tier.XDP if xdp and runs_in_xdp(rule) else Tier.SLOW_PATH)
            for i, rule in enumerate(policy.slow_path.dns_rules)]
    rows += [Placement(PolicyList.SIGNATURES, i, render_entry(sig), Tier.SLOW_PATH)
             for i, sig in enumerate(policy.slow_path.signatures)]
    return rows


def placement_report(policy: Policy, per_rule: bool = True) -> list[str]:
    """Lines for `policy check` and `status`: counts per tier, the DNS classes, then (per_rule) one
    line per rule."""
    rows = placements(policy)
    if not rows:
        return []
    counts = {tier: sum(1 for r in rows if r.tier is tier) for tier in Tier}
    lines = ["placement: " + ", ".join(f"{counts[tier]} in {tier}" for tier in Tier)]
    for cls in policy.dns_classes():
        lines.append(f"  DNS class {protocol_name(cls.protocol)}/{cls.port}: {dns_class_placement(policy, cls)}")
    if per_rule:
        width = max(len(r.path) for r in rows)
        lines += [f"  {r.tier.value:<9} {r.path:<{width}} {r.text}" for r in rows]
    return lines
