"""A test-side writer of the XDP DNS stage's maps (hyp_classes, hyp_dns_short, hyp_dns_long and
the slot's settings), written from the key format in DESIGN14 / bpf/include/hyperion_abi.h, not
from the product's compiler; and a reference matcher of the name-rule semantics built on dnspython.

Struct layouts come from the object's BTF (hyperion.kernel.abi), as the control plane reads them."""

from __future__ import annotations

import ctypes
import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi

SHORT_NAME = 32  # name bytes of the short key (HYP_CAP_DNS_SHORT_NAME)
LONG_NAME = 256


class Kind(enum.IntEnum):
    EXACT = 0
    SUFFIX = 1


class Action(enum.IntEnum):
    """enum hyp_dns_action"""

    NONE = 0
    DROP = 1
    NXDOMAIN = 2
    REFUSE = 3
    ALLOW = 4
    ALERT = 5
    SLOWPATH = 6


class ClassFlag(enum.IntFlag):
    SLOWPATH = 1
    DNS = 2


QTYPES_FLAG = 1  # HYP_DNS_F_QTYPES


@dataclass(frozen=True)
class Rule:
    """One name rule: `name` for an exact rule, the x of `*.x` for a suffix rule; qtype 0 = any."""

    kind: Kind
    name: str
    action: Action
    qtype: int = 0

    @property
    def dns_name(self) -> dns.name.Name:
        return dns.name.from_text(self.name)


def exact(name: str, action: Action, qtype: int = 0) -> Rule:
    return Rule(Kind.EXACT, name, action, qtype)


def suffix(name: str, action: Action, qtype: int = 0) -> Rule:
    return Rule(Kind.SUFFIX, name, action, qtype)


def key_name(name: dns.name.Name) -> bytes:
    """The key's name bytes: labels in reverse order, each as length + ASCII-lower-cased bytes, no root."""
    labels = [label for label in name.labels if label]
    return b"".join(bytes([len(label)]) + label.lower() for label in reversed(labels))


def label_count(name: dns.name.Name) -> int:
    return len([label for label in name.labels if label])


@dataclass
class Entry:
    rule_id: int
    action: Action
    flags: int = 0


def entries_of(rules: Sequence[Rule]) -> dict[tuple[Kind, bytes, int], Entry]:
    """(kind, key name, qtype) -> entry: the first rule of each triple, placeholders for names with
    only qtype-specific rules, HYP_DNS_F_QTYPES on the any-qtype entry of names with qtype rules."""
    entries: dict[tuple[Kind, bytes, int], Entry] = {}
    for rule_id, rule in enumerate(rules, start=1):
        key = (rule.kind, key_name(rule.dns_name), rule.qtype)
        entries.setdefault(key, Entry(rule_id, rule.action))
    for kind, name, qtype in list(entries):
        if qtype:
            entries.setdefault((kind, name, 0), Entry(0, Action.NONE)).flags |= QTYPES_FLAG
    return entries


def label_bits(rules: Iterable[Rule], kind: Kind) -> int:
    bits = 0
    for rule in rules:
        if rule.kind == kind:
            bits |= 1 << min(label_count(rule.dns_name), 63)
    return bits


@dataclass(frozen=True)
class DnsClass:
    protocol: int
    port: int
    flags: int
    on_failure_drop: bool = False
    class_id: int = 1


@dataclass
class DnsMaps:
    """Writes whole generations into the inactive slot and switches to them, like the control plane."""

    fastpath: FastPath
    inner: dict[str, libbpf.MapFd] = field(default_factory=dict)
    _generation: int = 0

    @property
    def abi(self) -> Abi:
        return self.fastpath.abi

    def close(self) -> None:
        for fd in self.inner.values():
            fd.close()
        self.inner.clear()

    def _new_inner(self, name: str) -> libbpf.MapFd:
        t = self.fastpath.templates[name]
        fd = libbpf.map_create(t.map_type, f"{name}_t"[:15], t.key_size, t.value_size, t.max_entries, t.flags)
        return libbpf.MapFd(fd, t.key_size, t.value_size, name)

    def dns_key(self, kind: Kind, name: bytes, qtype: int) -> tuple[str, bytes]:
        """The map and packed key of (kind, key name bytes, qtype)."""
        struct_name, map_name, size = (("hyp_dns_key_short", "hyp_dns_short", SHORT_NAME) if len(name) <= SHORT_NAME
                                       else ("hyp_dns_key", "hyp_dns_long", LONG_NAME))
        key = self.abi.btf.struct(struct_name)()
        key.qtype = qtype
        key.kind = int(kind)
        ctypes.memmove(key.name, name.ljust(size, b"\0"), size)
        return map_name, bytes(key)

    def dns_value(self, entry: Entry) -> bytes:
        value = self.abi.btf.struct("hyp_dns_rule")()
        value.rule_id = entry.rule_id
        value.action = int(entry.action)
        value.flags = entry.flags
        return bytes(value)

    def install(self, classes: Sequence[DnsClass], rules: Sequence[Rule] = (), *, monitor: bool = False,
                malformed: Action = Action.DROP, fragments: int = 0,
                raw_entries: dict[tuple[Kind, bytes, int], Entry] | None = None) -> None:
        """A new generation with these classes and rules (or raw entries), then the switch."""
        adapter = self.fastpath.adapter
        config = adapter.config()
        target = (config.active_slot & 1) ^ 1
        images: dict[str, tuple[list[bytes], list[bytes]]] = {name: ([], []) for name in self.abi.policy_maps.values()}
        for cls in classes:
            key = self.abi.ClassKey()
            key.port, key.protocol = cls.port, cls.protocol
            value = self.abi.ClassValue()
            value.class_id, value.on_failure, value.flags = cls.class_id, int(cls.on_failure_drop), cls.flags
            images["hyp_classes"][0].append(bytes(key))
            images["hyp_classes"][1].append(bytes(value))
        for (kind, name, qtype), entry in (raw_entries if raw_entries is not None else entries_of(rules)).items():
            map_name, key_bytes = self.dns_key(kind, name, qtype)
            images[map_name][0].append(key_bytes)
            images[map_name][1].append(self.dns_value(entry))
        entries = (ctypes.c_uint32 * len(self.abi.policy_maps))()
        for index, name in self.abi.policy_maps.items():
            keys, values = images[name]
            inner = self._new_inner(name)
            inner.update_batch(b"".join(keys), b"".join(values), len(keys))
            self.fastpath.maps[name].update(index_bytes(target), index_bytes(inner.fd))
            old = self.inner.pop(f"{name}/{target}", None)
            if old is not None:
                old.close()
            self.inner[f"{name}/{target}"] = inner
            entries[index] = len(keys)
        self._generation += 1
        settings = self.abi.Settings(mode=1 if monitor else 0, generation=self._generation,
                                     applied_at_ns=time.time_ns(), entries=entries)
        settings.dns_exact_labels = label_bits(rules, Kind.EXACT)
        settings.dns_suffix_labels = label_bits(rules, Kind.SUFFIX)
        settings.dns_malformed = int(malformed)
        settings.dns_fragments = fragments  # enum hyp_dns_fragment_policy: 0 drop, 1 judge
        adapter.write_settings(target, settings)
        config.active_slot = target
        adapter.write_config(config)

    def set_label_bits(self, exact_bits: int, suffix_bits: int) -> None:
        """Overrides the active slot's label bitmaps."""
        adapter = self.fastpath.adapter
        slot = adapter.config().active_slot
        settings = adapter.settings(slot)
        settings.dns_exact_labels, settings.dns_suffix_labels = exact_bits, suffix_bits
        adapter.write_settings(slot, settings)

    def active_map(self, name: str) -> libbpf.MapFd:
        return self.inner[f"{name}/{self.fastpath.adapter.config().active_slot}"]

    def hits(self, rule: Rule) -> int:
        """The hits of the entry that a rule installed, in the active generation."""
        map_name, key = self.dns_key(rule.kind, key_name(rule.dns_name), rule.qtype)
        raw = self.active_map(map_name).lookup(key)
        assert raw is not None, f"no entry for {rule}"
        return int(self.abi.btf.struct("hyp_dns_rule").from_buffer_copy(raw).hits)


def index_bytes(value: int) -> bytes:
    return int(value).to_bytes(4, "little")


def reference_match(rules: Sequence[Rule], qname: dns.name.Name, qtype: int) -> tuple[int, Action] | None:
    """The deciding rule (1-based id, action) by the semantics of DESIGN14, from dnspython's name
    relations: the exact rule on the whole name first, then `*.x` for strict superdomains x by
    decreasing length; on one (kind, name) a rule for the query's qtype before an any-qtype rule;
    the first in the policy among identical ones; a name with only other qtypes' rules falls through."""
    candidates: list[tuple[int, int, int, Rule]] = []  # (specificity, qtype rank, position, rule)
    for position, rule in enumerate(rules):
        target = rule.dns_name
        if rule.kind == Kind.EXACT:
            if qname != target:
                continue
            specificity = 1000  # above any suffix
        else:
            if not (qname.is_subdomain(target) and qname != target):
                continue
            specificity = len(target.labels)
        if rule.qtype not in (0, qtype):
            continue
        candidates.append((specificity, 1 if rule.qtype == qtype and qtype else 0, -position, rule))
    if not candidates:
        return None
    best = max(candidates, key=lambda c: (c[0], c[1], c[2]))
    return -best[2] + 1, best[3].action


A = dns.rdatatype.A


def query(name: str | dns.name.Name, qtype: int = A, *, rd: bool = True, edns: bool = False) -> bytes:
    msg = dns.message.make_query(name, qtype, use_edns=0 if edns else None)
    msg.id = 0x4242
    if not rd:
        msg.flags &= ~dns.flags.RD
    return msg.to_wire()


def delta(before: dict[tuple[str, str], tuple[int, int]],
          after: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], tuple[int, int]]:
    out = {}
    for key, (packets, total) in after.items():
        old_packets, old_total = before.get(key, (0, 0))
        if packets != old_packets:
            out[key] = (packets - old_packets, total - old_total)
    return out


# A UDP DNS class whose name rules all run in XDP: nothing is redirected.
DNS_ONLY = DnsClass(17, 53, ClassFlag.DNS, on_failure_drop=True)
