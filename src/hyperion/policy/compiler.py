"""Compiles a validated Policy into the byte images of the fast path's maps.

Pure computation: no kernel access, so it is unit-tested without root. The
capacities come from the loaded object (injected), and a policy that does not
fit is refused here, before anything in the kernel changes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from hyperion.errors import CapacityError
from hyperion.fastpath.maps import CLASSES_MAP, DNS_LONG_MAP, DNS_SHORT_MAP, CompiledPolicy, MapImage
from hyperion.kernel.abi import Abi, packer
from hyperion.policy.model import Action, MalformedDnsAction, Policy, PolicyList, render_entry
from hyperion.policy.placement import is_xdp_dns_class, needs_slow_path, xdp_dns_classes

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Item = TypeVar("_Item", IPNetwork, IPAddress)

# Where each policy list lands: (YAML path, pinned map name).
ALLOW = (PolicyList.ALLOW_CIDRS.path, "hyp_allow4", "hyp_allow6")
DROP_CIDRS = (PolicyList.DROP_CIDRS.path, "hyp_bcidr4", "hyp_bcidr6")
DROP_IPS = (PolicyList.DROP_IPS.path, "hyp_bip4", "hyp_bip6")

# A name rule's action -> its enum hyp_dns_action label (the ABI's HYP_DNS_<LABEL>).
DNS_ACTIONS: dict[Action, str] = {
    "drop": "drop", "nxdomain": "nxdomain", "refuse": "refuse", "pass": "allow", "allow": "allow",
    "alert": "alert", "block_source": "slowpath",
}
MALFORMED_DNS_ACTIONS: dict[MalformedDnsAction, str] = {"drop": "drop", "pass": "allow", "alert": "alert"}
# Label counts from this many on share the last bit of hyp_settings.dns_*_labels.
DNS_LABEL_BITS = 63


def dns_key_name(name: str) -> bytes:
    """A name's key bytes: its labels in reverse order, each as length byte + bytes (the policy model
    has already lower-cased it), no root label: "www.evil.com" -> 03 com 04 evil 03 www."""
    labels = name.split(".")
    labels.reverse()
    # Built as text and encoded once: a third of the time of joining bytes, for million-rule policies.
    return "".join([chr(len(label)) + label for label in labels]).encode("ascii")


@dataclass(frozen=True)
class DnsImages:
    """The name rules' map images and the label-count bitmaps of hyp_settings."""

    short: MapImage
    long: MapImage
    exact_labels: int
    suffix_labels: int


class PolicyCompiler:
    def __init__(self, abi: Abi, capacities: Mapping[str, int]) -> None:
        self.abi = abi
        self.capacities = capacities
        self._lpm4 = packer(abi.LpmV4Key)
        self._lpm6 = packer(abi.LpmV6Key)
        self._ip4 = packer(abi.IpV4Key)
        self._ip6 = packer(abi.IpV6Key)
        self._rule = packer(abi.RuleValue)
        self._class_key = packer(abi.ClassKey)
        self._class_value = packer(abi.ClassValue)
        self._dns_short = packer(abi.DnsKeyShort)
        self._dns_long = packer(abi.DnsKey)
        self._dns_rule = packer(abi.DnsRule)
        self._short_name = abi.capacity["dns_short_name"]

    def compile(self, policy: Policy) -> CompiledPolicy:
        fast = policy.fast_path
        images: dict[str, MapImage] = {}
        images.update(self._networks(ALLOW, fast.allow_cidrs))
        images.update(self._networks(DROP_CIDRS, fast.drop_cidrs))
        images.update(self._addresses(DROP_IPS, fast.drop_ips))
        keys, values = [], []
        slowpath, dns = self.abi.class_flags["slowpath"], self.abi.class_flags["dns"]
        for class_id, cls in enumerate(fast.redirect_ports, start=1):
            flags = (dns if is_xdp_dns_class(policy, cls) else 0) | (slowpath if needs_slow_path(policy, cls) else 0)
            keys.append(self._class_key.pack(cls.port, cls.protocol))
            values.append(self._class_value.pack(class_id, self.abi.fallbacks[cls.on_failure], flags))
        images[CLASSES_MAP] = MapImage(
            CLASSES_MAP, b"".join(keys), b"".join(values), len(keys), PolicyList.REDIRECT_PORTS.path
        )
        names = self.dns_images(policy)
        images[DNS_SHORT_MAP] = names.short
        images[DNS_LONG_MAP] = names.long
        for image in images.values():
            capacity = self.capacities.get(image.name)
            if capacity is not None and image.count > capacity:
                raise CapacityError(
                    f"{image.source}: {image.count} entries for map {image.name}, "
                    f"which holds at most {capacity}; nothing was changed"
                )
        return CompiledPolicy(mode=self.abi.modes[policy.mode], images=images,
                              dns_exact_labels=names.exact_labels, dns_suffix_labels=names.suffix_labels,
                              dns_malformed=self.abi.dns_actions[
                                  MALFORMED_DNS_ACTIONS[policy.slow_path.malformed_dns_action]],
                              dns_fragments=self.abi.dns_fragment_policies[policy.slow_path.dns_fragments])

    def dns_images(self, policy: Policy) -> DnsImages:
        """The name rules that run in XDP (and the block_source ones, which XDP hands to the slow path),
        as hyp_dns_short / hyp_dns_long entries (DESIGN: "Kernel data"). Empty when no DNS class
        would look them up. Among identical (kind, name, qtype) the first rule wins; every (kind, name)
        with qtype rules has a qtype-0 entry flagged HYP_DNS_F_QTYPES, a placeholder (HYP_DNS_NONE,
        rule 0) when no any-qtype rule is there."""
        source = PolicyList.DNS_RULES.path
        if not xdp_dns_classes(policy):
            return DnsImages(MapImage(DNS_SHORT_MAP, b"", b"", 0, source),
                             MapImage(DNS_LONG_MAP, b"", b"", 0, source), 0, 0)
        abi = self.abi
        exact, suffix = abi.dns_kinds["exact"], abi.dns_kinds["suffix"]
        actions = {action: abi.dns_actions[label] for action, label in DNS_ACTIONS.items()}
        pack_short, pack_long, pack_value = self._dns_short.pack, self._dns_long.pack, self._dns_rule.pack
        limit = self._short_name
        # packed key -> (rule id, action, short map?), in policy order; the first rule of a key wins.
        # Keys are packed once, here: this loop is most of the time of a million-rule policy.
        entries: dict[bytes, tuple[int, int, bool]] = {}
        qtyped: dict[bytes, bool] = {}  # the qtype-0 keys of (kind, name)s that have qtype rules
        exact_counts: set[int] = set()
        suffix_counts: set[int] = set()
        for rule_id, rule in enumerate(policy.slow_path.dns_rules, start=1):
            match = rule.match
            if match is None:  # regex: the slow path's
                continue
            if match.startswith("*."):
                kind, match = suffix, match[2:]
                suffix_counts.add(match.count(".") + 1)
            else:
                kind = exact
                exact_counts.add(match.count(".") + 1)
            name = dns_key_name(match)
            short = len(name) <= limit
            pack = pack_short if short else pack_long
            qtype = rule.qtype or 0
            key = pack(qtype, kind, name)
            if key not in entries:
                entries[key] = (rule_id, actions[rule.action], short)
            if qtype:
                qtyped[pack(0, kind, name)] = short
        flag = abi.dns_rule_flags["qtypes"]
        none = abi.dns_actions["none"]
        for key, short in qtyped.items():
            if key not in entries:
                entries[key] = (0, none, short)
        short_keys, short_values, long_keys, long_values = [], [], [], []
        for key, (rule_id, action, short) in entries.items():
            value = pack_value(rule_id, action, flag if key in qtyped else 0, 0)
            if short:
                short_keys.append(key)
                short_values.append(value)
            else:
                long_keys.append(key)
                long_values.append(value)
        exact_labels = sum(1 << n for n in {min(c, DNS_LABEL_BITS) for c in exact_counts})
        suffix_labels = sum(1 << n for n in {min(c, DNS_LABEL_BITS) for c in suffix_counts})
        return DnsImages(
            MapImage(DNS_SHORT_MAP, b"".join(short_keys), b"".join(short_values), len(short_keys), source),
            MapImage(DNS_LONG_MAP, b"".join(long_keys), b"".join(long_values), len(long_keys), source),
            exact_labels, suffix_labels)

    def _networks(self, target: tuple[str, str, str], networks: Iterable[IPNetwork]) -> dict[str, MapImage]:
        return self._by_family(
            target,
            networks,
            lambda n: self._lpm4.pack(n.prefixlen, n.network_address.packed),
            lambda n: self._lpm6.pack(n.prefixlen, n.network_address.packed),
        )

    def _addresses(self, target: tuple[str, str, str], addresses: Iterable[IPAddress]) -> dict[str, MapImage]:
        return self._by_family(
            target, addresses, lambda a: self._ip4.pack(a.packed), lambda a: self._ip6.pack(a.packed)
        )

    def _by_family(
        self,
        target: tuple[str, str, str],
        items: Iterable[_Item],
        key4: Callable[[_Item], bytes],
        key6: Callable[[_Item], bytes],
    ) -> dict[str, MapImage]:
        """Splits a policy list into its IPv4 and IPv6 maps; rule ids are list positions."""
        source, name4, name6 = target
        keys: dict[int, list[bytes]] = {4: [], 6: []}
        values: dict[int, list[bytes]] = {4: [], 6: []}
        # The policy model has already removed duplicates: one key per address or prefix.
        for rule_id, item in enumerate(items, start=1):
            keys[item.version].append(key4(item) if item.version == 4 else key6(item))
            values[item.version].append(self._rule.pack(rule_id))
        return {
            name: MapImage(name, b"".join(keys[version]), b"".join(values[version]), len(keys[version]), source)
            for version, name in ((4, name4), (6, name6))
        }


# reason -> the policy list whose 1-based positions are the rule ids the program reports.
RULE_LISTS: dict[str, PolicyList] = {
    "allowlist": PolicyList.ALLOW_CIDRS,
    "blocklist_cidr": PolicyList.DROP_CIDRS,
    "blocklist_ip": PolicyList.DROP_IPS,
    "redirect_class": PolicyList.REDIRECT_PORTS,
    "redirect_failed": PolicyList.REDIRECT_PORTS,
    # The DNS stage reports the name rule that decided (hyp_dns_rule.rule_id).
    **dict.fromkeys(("dns_drop", "dns_nxdomain", "dns_refused", "dns_unanswerable", "dns_allow", "dns_alert"),
                    PolicyList.DNS_RULES),
}


def fast_path_rule_name(policy: Policy, reason: str, rule_id: int) -> str | None:
    """'fast_path.drop_ips[0] 198.51.100.42' for a (reason, rule id) the program reported."""
    target = RULE_LISTS.get(reason)
    if target is None:
        return None
    items = target.entries(policy)
    if not 0 < rule_id <= len(items):
        return None
    return f"{target.path}[{rule_id - 1}] {render_entry(items[rule_id - 1])}"
