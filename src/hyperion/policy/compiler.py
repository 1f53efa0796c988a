"""Compiles a validated Policy into the byte images of the fast path's maps.

Pure computation: no kernel access, so it is unit-tested without root. The
capacities come from the loaded object (injected), and a policy that does not
fit is refused here, before anything in the kernel changes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from hyperion.errors import CapacityError
from hyperion.fastpath.maps import CLASSES_MAP, CompiledPolicy, MapImage
from hyperion.kernel.abi import Abi, packer
from hyperion.policy.model import Policy, PolicyList, render_entry

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Item = TypeVar("_Item", IPNetwork, IPAddress)

# Where each policy list lands: (YAML path, pinned map name).
ALLOW = (PolicyList.ALLOW_CIDRS.path, "hyp_allow4", "hyp_allow6")
DROP_CIDRS = (PolicyList.DROP_CIDRS.path, "hyp_bcidr4", "hyp_bcidr6")
DROP_IPS = (PolicyList.DROP_IPS.path, "hyp_bip4", "hyp_bip6")


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

    def compile(self, policy: Policy) -> CompiledPolicy:
        fast = policy.fast_path
        images: dict[str, MapImage] = {}
        images.update(self._networks(ALLOW, fast.allow_cidrs))
        images.update(self._networks(DROP_CIDRS, fast.drop_cidrs))
        images.update(self._addresses(DROP_IPS, fast.drop_ips))
        keys, values = [], []
        for class_id, cls in enumerate(fast.redirect_ports, start=1):
            keys.append(self._class_key.pack(cls.port, cls.protocol))
            values.append(self._class_value.pack(class_id, self.abi.fallbacks[cls.on_failure]))
        images[CLASSES_MAP] = MapImage(
            CLASSES_MAP, b"".join(keys), b"".join(values), len(keys), PolicyList.REDIRECT_PORTS.path
        )
        for image in images.values():
            capacity = self.capacities.get(image.name)
            if capacity is not None and image.count > capacity:
                raise CapacityError(
                    f"{image.source}: {image.count} entries for map {image.name}, "
                    f"which holds at most {capacity}; nothing was changed"
                )
        return CompiledPolicy(mode=self.abi.modes[policy.mode], images=images)

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
