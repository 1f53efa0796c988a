"""The dynamic blocklist: sources blocked for a while (hyp_dyn4/hyp_dyn6, LRU hashes keyed by address).

Entries carry their expiry on CLOCK_BOOTTIME (what the program compares with
bpf_ktime_get_boot_ns()); the program ignores expired ones and sweep_expired()
deletes them. A full table evicts its least recently used entries to make room;
the kernel does not count that, so add_many() does, into a file beside the pins
that every process adds to.
"""

from __future__ import annotations

import fcntl
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyperion.fastpath.maps import DYN4_MAP, DYN6_MAP, MapAdapter
from hyperion.kernel import libbpf
from hyperion.kernel.abi import packer
from hyperion.kernel.netdev import boottime_ns

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# In the interface's state directory: the total of dynamic blocks evicted by a full table.
DYN_EVICTIONS = "dynamic-block-evictions"


@dataclass(frozen=True)
class DynamicBlock:
    address: IPAddress
    expires_in: float | None  # seconds; None = never; <= 0 = expired
    rule_id: int


def dyn_map_name(address: IPAddress) -> str:
    return DYN4_MAP if address.version == 4 else DYN6_MAP


class DynamicBlocklist:
    """Adds, lists, removes and sweeps dynamic blocks; counts the evictions of full tables.

    evictions_path: the shared total (None: counted in this object, for a detached program)."""

    def __init__(self, maps: MapAdapter, evictions_path: Path | None) -> None:
        self._maps = maps
        self._value = packer(maps.abi.DynBlock)
        self._evictions_path = evictions_path
        self._evictions = 0

    def _map(self, address: IPAddress) -> libbpf.MapFd:
        return self._maps.maps[dyn_map_name(address)]

    def add(self, address: IPAddress, ttl_seconds: float | None, rule_id: int = 0) -> None:
        self.add_many([address], ttl_seconds, rule_id)

    def add_many(self, addresses: Iterable[IPAddress], ttl_seconds: float | None, rule_id: int = 0) -> int:
        """Blocks sources; returns how many older blocks the full LRU tables evicted to make room,
        which is also added to evictions(). The kernel does not count evictions:
        they are the table's entries before, plus the new keys, minus its entries after (exact
        when nothing else writes the table meanwhile; the slow path's workers write it directly)."""
        expires = 0 if ttl_seconds is None else boottime_ns() + int(ttl_seconds * 1e9)
        value = self._value.pack(expires, rule_id)
        by_map: dict[str, dict[bytes, None]] = {}
        for address in addresses:
            by_map.setdefault(dyn_map_name(address), {})[address.packed] = None
        evicted = 0
        for name, keys in by_map.items():
            dyn = self._maps.maps[name]
            before = self.count(name)
            new = 0
            for key in keys:
                new += dyn.lookup(key) is None
                dyn.update(key, value)
            evicted += max(0, before + new - self.count(name))
        if evicted:
            self._add_evictions(evicted)
        return evicted

    def count(self, name: str) -> int:
        """Entries in hyp_dyn4 or hyp_dyn6 (expired ones included)."""
        return self._maps.entry_count(name)

    def evictions(self) -> int:
        """Blocks evicted by a full table when blocks were added through add(_many) (the CLI's
        `block add` included): kept beside the pins, so every process adds to one total."""
        path = self._evictions_path
        if path is None:
            return self._evictions
        try:
            return int(path.read_text() or 0)
        except FileNotFoundError:
            return 0

    def _add_evictions(self, count: int) -> None:
        path = self._evictions_path
        if path is None:
            self._evictions += count
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path, "a+", encoding="ascii") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one read-modify-write at a time across processes
            f.seek(0)
            total = int(f.read() or 0) + count
            f.seek(0)
            f.truncate()
            f.write(str(total))

    def delete(self, address: IPAddress) -> bool:
        return self._map(address).delete(address.packed)

    def blocks(self) -> list[DynamicBlock]:
        now = boottime_ns()
        found = []
        for name, factory in ((DYN4_MAP, ipaddress.IPv4Address), (DYN6_MAP, ipaddress.IPv6Address)):
            dyn = self._maps.maps[name]
            for key in list(dyn.iter_keys()):
                raw = dyn.lookup(key)
                if raw is None:
                    continue
                expires, rule_id = self._value.unpack(raw)
                expires_in = None if expires == 0 else (expires - now) / 1e9
                found.append(DynamicBlock(factory(key), expires_in, rule_id))
        return found

    def sweep_expired(self) -> int:
        """Deletes expired dynamic blocks (the program already ignores them); returns how many."""
        removed = 0
        for block in self.blocks():
            if block.expires_in is not None and block.expires_in <= 0 and self.delete(block.address):
                removed += 1
        return removed
