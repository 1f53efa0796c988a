"""The map adapter: typed access to the fast path's maps, in the ABI's layouts.

Lookups and updates of the single-entry maps (config, settings, queue state),
per-CPU counter reads summed over the possible CPUs, the inner maps of a policy
generation built from their templates, and the generation swap itself. Which
generation to write and when to flip is FastPath's decision; this module only
knows how the maps are laid out.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from hyperion.errors import BpfError
from hyperion.fastpath.loader import InnerTemplate
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi, packer

CLASSES_MAP = "hyp_classes"  # the redirect classes' map, written with every policy
DNS_SHORT_MAP = "hyp_dns_short"  # name rules whose key name fits HYP_CAP_DNS_SHORT_NAME bytes
DNS_LONG_MAP = "hyp_dns_long"
DNS_MAPS = (DNS_SHORT_MAP, DNS_LONG_MAP)
# Inner maps created with max_entries = their entry count (at least 1) instead of the template's
# capacity: a hash map's bucket array follows max_entries (16 B a bucket), so a template-sized DNS
# map would take 32 MiB per map and slot however few rules it holds. The kernel does not compare
# max_entries of hash inner maps with the template (bpf_map_meta_equal), only of arrays.
SIZED_BY_CONTENT = frozenset(DNS_MAPS)
# Entries per BPF_MAP_LOOKUP_BATCH call when reading the hits of a DNS map.
_HITS_BATCH = 8192


@dataclass(frozen=True)
class MapImage:
    """Packed keys and values for one policy map, ready for a batch update."""

    name: str
    keys: bytes
    values: bytes
    count: int
    source: str  # the policy field it came from, for error messages

    def entries(self, key_size: int, value_size: int) -> Iterable[tuple[bytes, bytes]]:
        for i in range(self.count):
            yield (
                self.keys[i * key_size:(i + 1) * key_size],
                self.values[i * value_size:(i + 1) * value_size],
            )


@dataclass(frozen=True)
class CompiledPolicy:
    """What the fast path takes from the policy layer (hyperion.policy.compiler builds it): the
    mode and one image per policy map, applied in the inactive slot and switched in at once."""

    mode: int
    images: dict[str, MapImage]
    # hyp_settings' DNS fields: label-count bitmaps of the name rules, and the malformed-query action.
    dns_exact_labels: int = 0
    dns_suffix_labels: int = 0
    dns_malformed: int = 0
    dns_fragments: int = 0  # enum hyp_dns_fragment_policy

    def entry_counts(self) -> dict[str, int]:
        return {name: image.count for name, image in self.images.items()}

CONFIG_MAP = "hyp_config"
SETTINGS_MAP = "hyp_settings"
COUNTERS_MAP = "hyp_counters"
QUEUE_STATS_MAP = "hyp_queue_stats"
QUEUE_STATE_MAP = "hyp_queue_state"
CLASS_STATS_MAP = "hyp_class_stats"
EVENT_STATE_MAP = "hyp_event_state"
DYN4_MAP = "hyp_dyn4"
DYN6_MAP = "hyp_dyn6"
DYN_MAPS = (DYN4_MAP, DYN6_MAP)
EVENT_OUTCOMES = ("emitted", "suppressed", "ring_full")


class QueueStateInfo(TypedDict):
    """One rx queue's lifecycle state as the program sees it (hyp_queue_state), labels from the ABI."""

    state: str
    reason: str
    since_ns: int
    worker_pid: int
    restarts: int


def _u32(value: int) -> bytes:
    return int(value).to_bytes(4, "little")


def percpu_stride(struct_cls: Any) -> int:
    """Bytes of one CPU's value in a per-CPU map's lookup buffer: the kernel rounds each up to 8."""
    return (ctypes.sizeof(struct_cls) + 7) & ~7


def _batches(inner: libbpf.MapFd, value_size: int) -> Iterable[bytes]:
    """A hash map's values, _HITS_BATCH entries per BPF_MAP_LOOKUP_BATCH call (keys read and dropped),
    so a million-entry map is read without a buffer for all its keys."""
    lib = libbpf.lib()
    keys = ctypes.create_string_buffer(inner.key_size * _HITS_BATCH)
    values = ctypes.create_string_buffer(value_size * _HITS_BATCH)
    token_in = ctypes.create_string_buffer(max(8, inner.key_size))
    token_out = ctypes.create_string_buffer(max(8, inner.key_size))
    opts = libbpf.BpfMapBatchOpts(sz=ctypes.sizeof(libbpf.BpfMapBatchOpts))
    first = True
    while True:
        count = ctypes.c_uint32(_HITS_BATCH)
        rc = lib.bpf_map_lookup_batch(inner.fd, None if first else token_in, token_out, keys, values,
                                      ctypes.byref(count), ctypes.byref(opts))
        if rc < 0 and -rc != 2:  # ENOENT: the last batch (count says how many came with it)
            raise BpfError(f"batch lookup in map {inner.name}: {os.strerror(-rc)} (errno {-rc})", -rc)
        if count.value:
            yield values.raw[:count.value * value_size]
        if rc < 0:
            return
        ctypes.memmove(token_in, token_out, len(token_out))
        first = False


class MapAdapter:
    """The fast path's maps by name, read and written in the ABI's layouts."""

    def __init__(self, abi: Abi, maps: dict[str, libbpf.MapFd], templates: Mapping[str, InnerTemplate],
                 ncpus: int | None = None) -> None:
        self.abi = abi
        self.maps = maps
        self.templates = templates
        self.ncpus = libbpf.num_possible_cpus() if ncpus is None else ncpus
        self._class_key = packer(abi.ClassKey)
        # The DNS inner maps this adapter installed, by (map, slot), kept open to read their hits: a map
        # by id (BPF_MAP_GET_FD_BY_ID) needs CAP_SYS_ADMIN, which the daemon no longer has by then.
        self._dns_inner: dict[tuple[str, int], libbpf.MapFd] = {}

    @classmethod
    def from_fds(cls, abi: Abi, map_fds: Mapping[str, int], templates: Mapping[str, InnerTemplate]) -> MapAdapter:
        return cls(abi, {name: libbpf.MapFd.from_fd(fd) for name, fd in map_fds.items()}, templates)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        for inner in self._dns_inner.values():
            inner.close()
        self._dns_inner.clear()

    def max_entries(self, name: str) -> int:
        """The kernel's capacity of a map (of the outer map for a generation map: use templates)."""
        return int(libbpf.map_info(self.maps[name].fd).max_entries)

    def capacities(self) -> dict[str, int]:
        """Capacities of the policy maps (their inner maps), from the object."""
        return {name: t.max_entries for name, t in self.templates.items()}

    # ---- config and settings ------------------------------------------------------------

    def config(self) -> Any:
        raw = self.maps[CONFIG_MAP].lookup(bytes(4))
        return self.abi.Config.from_buffer_copy(raw or bytes(ctypes.sizeof(self.abi.Config)))

    def write_config(self, config: Any) -> None:
        """One 4-byte-keyed write every CPU sees at once (the flip of the active slot)."""
        self.maps[CONFIG_MAP].update(bytes(4), bytes(config))

    def settings(self, slot: int | None = None) -> Any:
        if slot is None:
            slot = self.config().active_slot
        raw = self.maps[SETTINGS_MAP].lookup(_u32(slot))
        return self.abi.Settings.from_buffer_copy(raw or bytes(ctypes.sizeof(self.abi.Settings)))

    def write_settings(self, slot: int, settings: Any) -> None:
        self.maps[SETTINGS_MAP].update(_u32(slot), bytes(settings))

    def set_event_rate(self, events_per_sec: int) -> None:
        """Per-CPU budget of drop events per second (0 disables events)."""
        config = self.config()
        config.events_per_sec = events_per_sec
        self.write_config(config)

    # ---- policy generations -------------------------------------------------------------

    def build_inner(self, name: str, image: MapImage) -> libbpf.MapFd:
        """A new inner map for the generation map `name`, shaped by its template, filled with image."""
        t = self.templates[name]
        max_entries = max(image.count, 1) if name in SIZED_BY_CONTENT else t.max_entries
        fd = libbpf.map_create(t.map_type, f"{name}_g"[:15], t.key_size, t.value_size, max_entries, t.flags)
        inner = libbpf.MapFd(fd, t.key_size, t.value_size, name)
        try:
            if t.map_type == libbpf.BPF_MAP_TYPE_LPM_TRIE:
                # LPM tries have no batch update.
                for key, value in image.entries(t.key_size, t.value_size):
                    inner.update(key, value)
            else:
                inner.update_batch(image.keys, image.values, image.count)
        except BaseException:
            inner.close()
            raise
        return inner

    def install_generation(self, slot: int, images: Mapping[str, MapImage]) -> ctypes.Array[ctypes.c_uint32]:
        """Builds every policy map's inner map and puts it in `slot` of its outer map; returns the entry
        counts by policy-map index (hyp_settings.entries). The outer map keeps its own reference, so
        the inner fd is closed here, except a DNS map's, kept for dns_hits (the one it replaces closed)."""
        entries = (ctypes.c_uint32 * len(self.abi.policy_maps))()
        for index, name in self.abi.policy_maps.items():
            image = images[name]
            inner = self.build_inner(name, image)
            keep = False
            try:
                self.maps[name].update(_u32(slot), _u32(inner.fd))
                if name in DNS_MAPS:
                    replaced = self._dns_inner.pop((name, slot), None)
                    if replaced is not None:
                        replaced.close()
                    self._dns_inner[(name, slot)] = inner
                    keep = True
            finally:
                if not keep:
                    inner.close()
            entries[index] = image.count
        return entries

    def inner_map(self, name: str, slot: int) -> libbpf.MapFd | None:
        """The inner map in `slot` of the generation map `name` (a new fd: close it), None if empty."""
        raw = self.maps[name].lookup(_u32(slot))  # user space reads a map-in-map slot as the inner map's id
        if raw is None:
            return None
        map_id = int.from_bytes(raw[:4], "little")
        fd = libbpf.check(libbpf.lib().bpf_map_get_fd_by_id(map_id), f"inner map {map_id} of {name}[{slot}]")
        t = self.templates[name]
        return libbpf.MapFd(fd, t.key_size, t.value_size, f"{name}[{slot}]")

    def dns_hits(self, slot: int) -> dict[int, int]:
        """rule id (1-based dns_rules position) -> queries it decided, from the DNS maps this adapter
        installed in `slot` (a generation installed by another process: {}, its rules are not known
        here); rules without hits (and the placeholders, rule 0) are left out."""
        hits: dict[int, int] = {}
        rule = packer(self.abi.DnsRule)
        # The packer's fields: what it unpacks, reserved* and padding left out.
        names = [field[0] for field in self.abi.DnsRule._fields_ if not field[0].startswith(("_", "reserved", "pad"))]
        rule_at, hits_at = names.index("rule_id"), names.index("hits")
        for name in DNS_MAPS:
            inner = self._dns_inner.get((name, slot))
            if inner is None:
                continue
            for values in _batches(inner, rule.size):
                for value in rule.iter_unpack(values):
                    if value[hits_at] and value[rule_at]:
                        hits[value[rule_at]] = hits.get(value[rule_at], 0) + value[hits_at]
        return hits

    def class_keys(self, image: MapImage) -> list[bytes]:
        """The hyp_class_stats keys of the classes in a compiled hyp_classes image."""
        return [key for key, _ in image.entries(self._class_key.size, ctypes.sizeof(self.abi.ClassValue))]

    def register_class_counters(self, keys: Iterable[bytes]) -> None:
        """Creates zeroed counters for new classes; existing ones keep counting across reloads."""
        stats = self.maps[CLASS_STATS_MAP]
        zero = bytes(percpu_stride(self.abi.ClassCounter) * self.ncpus)
        for key in keys:
            try:
                stats.update(key, zero, libbpf.BPF_NOEXIST)
            except BpfError as exc:
                if exc.errno != 17:  # EEXIST: already counting
                    raise

    def prune_class_counters(self, keep: Iterable[bytes]) -> None:
        """Deletes the counters of every class not in keep."""
        kept = set(keep)
        stats = self.maps[CLASS_STATS_MAP]
        for key in [k for k in stats.iter_keys() if k not in kept]:
            stats.delete(key)

    # ---- per-CPU counters ---------------------------------------------------------------

    def percpu_sum(self, map_name: str, key: bytes, struct_cls: Any) -> dict[str, int] | None:
        """Looks up a per-CPU map entry and sums each field over the possible CPUs."""
        stride = percpu_stride(struct_cls)
        raw = self.maps[map_name].lookup(key, stride * self.ncpus)
        if raw is None:
            return None
        fields = [name for name, *_ in struct_cls._fields_ if not name.startswith(("_", "reserved", "pad"))]
        totals = dict.fromkeys(fields, 0)
        for cpu in range(self.ncpus):
            value = struct_cls.from_buffer_copy(raw, cpu * stride)
            for name in fields:
                totals[name] += getattr(value, name)
        return totals

    def counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(verdict, reason) -> (packets, bytes), summed over CPUs; zero entries omitted."""
        result = {}
        for verdict, verdict_label in self.abi.verdicts.items():
            for reason, reason_label in self.abi.reasons.items():
                index = verdict * self.abi.reason_count + reason
                total = self.percpu_sum(COUNTERS_MAP, _u32(index), self.abi.Counter)
                if total and total["packets"]:
                    result[(verdict_label, reason_label)] = (total["packets"], total["bytes"])
        return result

    def queue_counter(self, queue: int) -> dict[str, int]:
        """One rx queue's packets/drops/redirects/redirect_failures/fenced, summed over CPUs."""
        total = self.percpu_sum(QUEUE_STATS_MAP, _u32(queue), self.abi.QueueCounter)
        return total or {}

    def queue_counters(self) -> dict[int, dict[str, int]]:
        """rx queue -> its counters, for queues that saw packets."""
        counters = {queue: self.queue_counter(queue) for queue in range(self.abi.capacity["queues"])}
        return {queue: total for queue, total in counters.items() if total.get("packets")}

    def class_counters(self) -> dict[tuple[int, int], dict[str, int]]:
        """(protocol, port) -> redirected/failed, for every class ever installed."""
        stats = self.maps[CLASS_STATS_MAP]
        result = {}
        for key in list(stats.iter_keys()):
            port, protocol = self._class_key.unpack(key)
            total = self.percpu_sum(CLASS_STATS_MAP, key, self.abi.ClassCounter)
            if total is not None:
                result[(protocol, port)] = total
        return result

    def event_stats(self) -> dict[str, int]:
        """emitted / suppressed (over budget) / ring_full, summed over CPUs."""
        total = self.percpu_sum(EVENT_STATE_MAP, bytes(4), self.abi.EventState) or {}
        return {name: total.get(name, 0) for name in EVENT_OUTCOMES}

    # ---- queue lifecycle ----------------------------------------------------------------

    def write_queue_state(self, queue: int, state: str, reason: str, since_ns: int, worker_pid: int = 0,
                          restarts: int = 0) -> None:
        """One write the program sees at once; state and reason are the ABI's labels."""
        value = self.abi.QueueState()
        value.state = {v: k for k, v in self.abi.queue_states.items()}[state]
        value.reason = {v: k for k, v in self.abi.queue_reasons.items()}[reason]
        value.since_ns = since_ns
        value.worker_pid = worker_pid
        value.restarts = restarts
        self.maps[QUEUE_STATE_MAP].update(_u32(queue), bytes(value))

    def queue_state(self, queue: int) -> QueueStateInfo:
        raw = self.maps[QUEUE_STATE_MAP].lookup(_u32(queue))
        value = self.abi.QueueState.from_buffer_copy(raw) if raw else self.abi.QueueState()
        return {"state": self.abi.queue_states.get(value.state, str(value.state)),
                "reason": self.abi.queue_reasons.get(value.reason, str(value.reason)),
                "since_ns": value.since_ns, "worker_pid": value.worker_pid, "restarts": value.restarts}

    def queue_states(self) -> dict[int, QueueStateInfo]:
        """Queues whose state is not 'unmanaged'."""
        states = {queue: self.queue_state(queue) for queue in range(self.abi.capacity["queues"])}
        return {queue: st for queue, st in states.items() if st["state"] != "unmanaged"}

    # ---- fill ---------------------------------------------------------------------------

    def entry_count(self, name: str) -> int:
        """Entries in a hash map (expired dynamic blocks included), with batch lookups."""
        return self.maps[name].lookup_batch(self.max_entries(name))[2]

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) for the active policy and the dynamic blocklist."""
        settings = self.settings()
        fill = {name: (int(settings.entries[index]), self.templates[name].max_entries)
                for index, name in self.abi.policy_maps.items()}
        for name in DYN_MAPS:
            fill[name] = (self.entry_count(name), self.max_entries(name))
        return fill

