"""Sources `block_source` must never insert: the policy's never_block list plus the host's own facts.

A DNS query or a UDP datagram can carry any source address, so a block_source rule is a way for
anyone to block an address of their choosing. The addresses whose blocking hurts most (the host
itself, its gateways, its resolvers, the operator's allowlisted management networks) are protected
by default; the daemon discovers them at start and at every reload, in its own network namespace:

- addresses: every address of every interface (`ip -j addr show`);
- gateways: the next hops of every route, IPv4 and IPv6, all tables (`ip -j -4/-6 route show table all`),
  multipath next hops and `via inet6` included;
- resolvers: the `nameserver` lines of /etc/resolv.conf;
- fast_path.allow_cidrs.

`slow_path.never_block_defaults: false` leaves only `slow_path.never_block`. Discovery never fails the
daemon: a fact it cannot read is logged and left out (the policy's own list still applies).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from hyperion.policy.model import Policy, PolicyList

log = logging.getLogger("hyperion.neverblock")

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
RESOLV_CONF = Path("/etc/resolv.conf")


class Provenance(Enum):
    """Why an address is in the effective never_block list (named in `hyperion block add`'s refusal)."""

    POLICY = "slow_path.never_block"
    ADDRESS = "an address of this host"
    GATEWAY = "a gateway of this host"
    RESOLVER = "a resolver of this host (/etc/resolv.conf)"
    ALLOWLIST = PolicyList.ALLOW_CIDRS.path


@dataclass(frozen=True)
class HostFacts:
    addresses: tuple[Address, ...] = ()
    gateways: tuple[Address, ...] = ()
    resolvers: tuple[Address, ...] = ()


def _address(text: object) -> Address | None:
    if not isinstance(text, str):
        return None
    try:
        return ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the zone is not part of the source
    except ValueError:
        return None


def _json_list(text: str) -> list[Any]:
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _unique(items: Iterable[Address | None]) -> list[Address]:
    return [a for a in dict.fromkeys(items) if a is not None]


def addresses_from_ip_addr(text: str) -> list[Address]:
    """Every `local` address in `ip -j addr show` output."""
    return _unique(_address(info.get("local")) for link in _json_list(text)
                   for info in link.get("addr_info", []) if isinstance(info, dict))


def gateways_from_ip_route(text: str) -> list[Address]:
    """Next hops in `ip -j route` output: `gateway`, `via` (another family), and multipath `nexthops`."""
    found: list[Address | None] = []
    for route in _json_list(text):
        hops = [route] + [h for h in route.get("nexthops", []) if isinstance(h, dict)]
        for hop in hops:
            found.append(_address(hop.get("gateway")))
            via = hop.get("via")
            if isinstance(via, dict):
                found.append(_address(via.get("host")))
    return _unique(found)


def resolvers_from_resolv_conf(text: str) -> list[Address]:
    """`nameserver ADDRESS` lines, as the resolver reads them (the first word after the keyword)."""
    found: list[Address | None] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(_address(words[1]))
    return _unique(found)


def _run_ip(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if proc.returncode:
        raise OSError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def discover_host_facts(run: Callable[[list[str]], str] = _run_ip, resolv_conf: Path = RESOLV_CONF) -> HostFacts:
    """The host's addresses, gateways and resolvers in this network namespace."""
    def ask(argv: list[str]) -> str:
        try:
            return run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("never_block defaults: %s failed (%s); left out", " ".join(argv), exc)
            return ""

    addresses = addresses_from_ip_addr(ask(["ip", "-j", "addr", "show"]))
    gateways = _unique([*gateways_from_ip_route(ask(["ip", "-j", "-4", "route", "show", "table", "all"])),
                        *gateways_from_ip_route(ask(["ip", "-j", "-6", "route", "show", "table", "all"]))])
    try:
        resolvers = resolvers_from_resolv_conf(resolv_conf.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        log.warning("never_block defaults: cannot read %s (%s); no resolvers", resolv_conf, exc.strerror)
        resolvers = []
    return HostFacts(tuple(addresses), tuple(gateways), tuple(resolvers))


def never_block_sources(policy: Policy, facts: HostFacts) -> list[tuple[Network, Provenance]]:
    """Each entry of the effective list with why it is there, the policy's own first."""
    slow = policy.slow_path
    entries: list[tuple[Network, Provenance]] = [(n, Provenance.POLICY) for n in slow.never_block]
    if slow.never_block_defaults:
        for addresses, why in ((facts.addresses, Provenance.ADDRESS), (facts.gateways, Provenance.GATEWAY),
                               (facts.resolvers, Provenance.RESOLVER)):
            entries += [(ip_network(a), why) for a in addresses]
        entries += [(n, Provenance.ALLOWLIST) for n in policy.fast_path.allow_cidrs]
    return entries


def effective_never_block(policy: Policy, facts: HostFacts) -> tuple[Network, ...]:
    """The networks the slow path's workers must never insert into the dynamic blocklist."""
    return tuple(dict.fromkeys(n for n, _ in never_block_sources(policy, facts)))


def never_block_entry(address: Address, networks: Iterable[Network]) -> Network | None:
    """The first network that contains address, if any."""
    return next((n for n in networks if n.version == address.version and address in n), None)
