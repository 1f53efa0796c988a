"""The fast path's map adapter, blocklist and policy logic over in-memory maps: no root, no kernel.

The fake maps model the kernel semantics the code relies on (bpf(2), Documentation/bpf/):
array entries always exist (zero-filled), a lookup of a missing hash key is ENOENT, BPF_NOEXIST
on an existing key is EEXIST, a full LRU hash evicts to make room, and a per-CPU lookup returns
one value per possible CPU, each rounded up to 8 bytes (kernel/bpf/arraymap.c, round_up(value_size, 8)).
Expected layouts are packed here with struct from bpf/include/hyperion_abi.h.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperion.errors import BpfError
from hyperion.fastpath.blocklist import DynamicBlocklist
from hyperion.fastpath.loader import BpfLoader, BpfObject, InnerTemplate, ProgramInfo
from hyperion.fastpath.maps import MapAdapter, MapImage
from hyperion.fastpath.program import FastPath
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy

NCPUS = 3
EEXIST, E2BIG = 17, 7

# Enumerator values in hyperion_abi.h.
VERDICT_PASS, VERDICT_DROP = 0, 1
REASON_NO_MATCH, REASON_BLOCKLIST_IP, REASON_COUNT = 0, 19, 42
QSTATE_FENCED, QREASON_HEARTBEAT_STALE = 4, 4
MODE_ENFORCE, MODE_MONITOR = 0, 1
PMAP_BIP4, PMAP_ALLOW4, PMAP_COUNT = 4, 0, 9
IPPROTO_TCP, IPPROTO_UDP = 6, 17
SETTINGS = "<IIQQ9I4xQQI4x"  # struct hyp_settings


def class_key(protocol: int, port: int) -> bytes:
    return struct.pack("<HBx", port, protocol)  # struct hyp_class_key


class Log:
    """Every write to any fake map, in order: (map, operation, key)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, bytes]] = []

    def index(self, name: str, op: str, key: bytes) -> int:
        return self.writes.index((name, op, key))


class FakeMap(libbpf.MapFd):
    def __init__(self, log: Log, name: str, key_size: int, value_size: int, max_entries: int, *,
                 array: bool = False, lru: bool = False, fd: int = -1) -> None:
        super().__init__(fd, key_size, value_size, name)
        self.log = log
        self.max_entries = max_entries
        self.lru = lru
        self.entries: dict[bytes, bytes] = {}  # insertion order: least recently written first
        if array:
            self.entries = {i.to_bytes(4, "little"): bytes(value_size) for i in range(max_entries)}
        self.array = array

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        return self.entries.get(key)

    def update(self, key: bytes, value: bytes, flags: int = libbpf.BPF_ANY) -> None:
        assert len(key) == self.key_size, f"{self.name}: key of {len(key)} bytes"
        assert len(value) == self.value_size, f"{self.name}: value of {len(value)} bytes"
        if flags == libbpf.BPF_NOEXIST and key in self.entries:
            raise BpfError(f"update of map {self.name}", EEXIST)
        if key not in self.entries and len(self.entries) >= self.max_entries:
            if not self.lru:
                raise BpfError(f"update of map {self.name}", E2BIG)
            del self.entries[next(iter(self.entries))]
        self.entries.pop(key, None)
        self.entries[key] = value
        self.log.writes.append((self.name, "update", key))

    def delete(self, key: bytes) -> bool:
        assert not self.array
        self.log.writes.append((self.name, "delete", key))
        return self.entries.pop(key, None) is not None

    def iter_keys(self) -> Iterator[bytes]:
        yield from list(self.entries)

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        for i in range(count):
            self.update(keys[i * self.key_size:(i + 1) * self.key_size],
                        values[i * self.value_size:(i + 1) * self.value_size])

    def lookup_batch(self, max_count: int, value_size: int | None = None) -> tuple[bytes, bytes, int]:
        found = list(self.entries.items())[:max_count]
        return b"".join(k for k, _ in found), b"".join(v for _, v in found), len(found)

    def close(self) -> None:
        pass


class FakeAdapter(MapAdapter):
    """The adapter over fake maps; inner maps are fakes too (creating maps needs the kernel)."""

    def __init__(self, abi: Abi, maps: dict[str, FakeMap], templates: dict[str, InnerTemplate], log: Log) -> None:
        super().__init__(abi, dict(maps), templates, ncpus=NCPUS)
        self.fakes = maps
        self.log = log
        self.inner: dict[int, FakeMap] = {}
        self.fail_on: str | None = None

    def max_entries(self, name: str) -> int:
        return self.fakes[name].max_entries

    def build_inner(self, name: str, image: MapImage) -> libbpf.MapFd:
        if name == self.fail_on:
            raise BpfError(f"bpf_map_create({name}_g)", 12)
        t = self.templates[name]
        fd = 1000 + len(self.inner)
        inner = FakeMap(self.log, f"{name}_g", t.key_size, t.value_size, t.max_entries, fd=fd)
        for key, value in image.entries(t.key_size, t.value_size):
            inner.update(key, value)
        self.inner[fd] = inner
        return inner


def stride(size: int) -> int:
    return (size + 7) // 8 * 8


@pytest.fixture(scope="module")
def templates(abi: Abi) -> dict[str, InnerTemplate]:
    obj = BpfObject(abi.object_path)  # opening parses the ELF; nothing is loaded
    try:
        return obj.inner_templates()
    finally:
        obj.close()


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def fakes(abi: Abi, templates: dict[str, InnerTemplate], log: Log) -> dict[str, FakeMap]:
    queues = abi.capacity["queues"]
    maps = [
        FakeMap(log, "hyp_config", 4, 8, 1, array=True),
        FakeMap(log, "hyp_settings", 4, 88, 2, array=True),
        FakeMap(log, "hyp_counters", 4, stride(16) * NCPUS, 5 * REASON_COUNT, array=True),
        FakeMap(log, "hyp_queue_stats", 4, stride(40) * NCPUS, queues, array=True),
        FakeMap(log, "hyp_queue_state", 4, 24, queues, array=True),
        FakeMap(log, "hyp_class_stats", 4, stride(16) * NCPUS, abi.capacity["class_stats"]),
        FakeMap(log, "hyp_event_state", 4, stride(40) * NCPUS, 1, array=True),
        FakeMap(log, "hyp_dyn4", 4, 16, 4, lru=True),
        FakeMap(log, "hyp_dyn6", 16, 16, 4, lru=True),
    ]
    maps += [FakeMap(log, name, 4, 4, 2) for name in templates]  # the generation (outer) maps
    return {m.name: m for m in maps}


@pytest.fixture
def adapter(abi: Abi, fakes: dict[str, FakeMap], templates: dict[str, InnerTemplate], log: Log) -> FakeAdapter:
    return FakeAdapter(abi, fakes, templates, log)


class AttachedLoader(BpfLoader):
    def program_info(self) -> ProgramInfo:
        return {"program_id": 7, "link_id": 3, "ifindex": 2, "xlated_bytes": 9000, "jited_bytes": 5000,
                "verified_insns": 1234, "attach_mode": "generic"}


def fastpath_over(adapter: FakeAdapter, templates: dict[str, InnerTemplate], attached: bool = False) -> FastPath:
    if attached:
        loader: BpfLoader = AttachedLoader(adapter.abi, {}, templates, Path("/sys/fs/bpf/hyperion/ns1_veth0"), "veth0")
    else:
        loader = BpfLoader(adapter.abi, {}, templates)
    return FastPath(loader, adapter)


def settings_of(fakes: dict[str, FakeMap], slot: int) -> tuple[int, int, int, tuple[int, ...]]:
    """struct hyp_settings: mode, reserved, generation, applied_at_ns, entries[9], reserved2, dns_exact_labels,
    dns_suffix_labels, dns_malformed, dns_fragments."""
    mode, _, generation, applied_at, *entries = struct.unpack(SETTINGS, fakes["hyp_settings"].entries[
        slot.to_bytes(4, "little")])[:4 + PMAP_COUNT]
    return mode, generation, applied_at, tuple(entries)


def set_settings(fakes: dict[str, FakeMap], slot: int, mode: int, generation: int, applied_at_ns: int) -> None:
    fakes["hyp_settings"].entries[slot.to_bytes(4, "little")] = struct.pack(
        SETTINGS, mode, 0, generation, applied_at_ns, *([0] * PMAP_COUNT), 0, 0, 0)


# ---- per-CPU counters -------------------------------------------------------------------------


def test_counters_sum_every_possible_cpu_and_omit_zero_entries(adapter: FakeAdapter,
                                                                fakes: dict[str, FakeMap]) -> None:
    per_cpu = [(2, 120), (0, 0), (5, 300)]  # struct hyp_counter {packets, bytes} on CPUs 0..2
    index = VERDICT_DROP * REASON_COUNT + REASON_BLOCKLIST_IP
    fakes["hyp_counters"].entries[index.to_bytes(4, "little")] = b"".join(struct.pack("<QQ", *c) for c in per_cpu)
    # Bytes without packets cannot happen; a zero-packet entry is left out.
    zero_packets = VERDICT_PASS * REASON_COUNT + REASON_NO_MATCH
    fakes["hyp_counters"].entries[zero_packets.to_bytes(4, "little")] = struct.pack("<QQ", 0, 0) * NCPUS
    assert adapter.counters() == {("drop", "blocklist_ip"): (7, 420)}


def test_per_cpu_values_are_read_at_8_byte_strides(adapter: FakeAdapter, fakes: dict[str, FakeMap],
                                                   log: Log) -> None:
    class Twelve(ctypes.Structure):  # 12 bytes: the kernel pads each CPU's copy to 16
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint32), ("c", ctypes.c_uint32)]

    fakes["odd"] = FakeMap(log, "odd", 4, 16 * NCPUS, 1, array=True)
    adapter.maps["odd"] = fakes["odd"]
    fakes["odd"].entries[bytes(4)] = b"".join(struct.pack("<III4x", cpu + 1, 10 * (cpu + 1), 0) for cpu in range(3))
    assert adapter.percpu_sum("odd", bytes(4), Twelve) == {"a": 6, "b": 60, "c": 0}


def test_queue_counters_and_event_stats(adapter: FakeAdapter, fakes: dict[str, FakeMap]) -> None:
    # struct hyp_queue_counter {packets, drops, redirects, redirect_failures, fenced}
    fakes["hyp_queue_stats"].entries[(2).to_bytes(4, "little")] = (
        struct.pack("<5Q", 10, 1, 6, 2, 0) + struct.pack("<5Q", 5, 0, 4, 0, 1) + bytes(40))
    assert adapter.queue_counters() == {2: {"packets": 15, "drops": 1, "redirects": 10, "redirect_failures": 2,
                                            "fenced": 1}}
    assert adapter.queue_counter(3) == {"packets": 0, "drops": 0, "redirects": 0, "redirect_failures": 0,
                                        "fenced": 0}
    # struct hyp_event_state {window_start_ns, window_used, emitted, suppressed, ring_full}
    fakes["hyp_event_state"].entries[bytes(4)] = (
        struct.pack("<5Q", 99, 3, 4, 1, 0) + struct.pack("<5Q", 77, 2, 6, 0, 2) + bytes(40))
    assert adapter.event_stats() == {"emitted": 10, "suppressed": 1, "ring_full": 2}


def test_class_counters_by_protocol_and_port(adapter: FakeAdapter, fakes: dict[str, FakeMap]) -> None:
    fakes["hyp_class_stats"].entries[class_key(IPPROTO_UDP, 53)] = (
        struct.pack("<QQ", 3, 1) + struct.pack("<QQ", 4, 0) + struct.pack("<QQ", 0, 2))
    assert adapter.class_counters() == {(IPPROTO_UDP, 53): {"redirected": 7, "failed": 3}}


# ---- queue state ------------------------------------------------------------------------------


def test_queue_state_is_written_in_the_header_layout_and_read_back(adapter: FakeAdapter,
                                                                    fakes: dict[str, FakeMap]) -> None:
    adapter.write_queue_state(3, "fenced", "heartbeat_stale", since_ns=123456789, worker_pid=42, restarts=2)
    # struct hyp_queue_state {u32 state, u32 reason, u64 since_ns, u32 worker_pid, u32 restarts}
    assert fakes["hyp_queue_state"].entries[(3).to_bytes(4, "little")] == struct.pack(
        "<IIQII", QSTATE_FENCED, QREASON_HEARTBEAT_STALE, 123456789, 42, 2)
    expected = {"state": "fenced", "reason": "heartbeat_stale", "since_ns": 123456789, "worker_pid": 42,
                "restarts": 2}
    assert adapter.queue_state(3) == expected
    assert adapter.queue_states() == {3: expected}  # the others are unmanaged
    fakes["hyp_queue_state"].entries[(5).to_bytes(4, "little")] = struct.pack("<IIQII", 99, 98, 0, 0, 0)
    assert adapter.queue_state(5)["state"] == "99" and adapter.queue_state(5)["reason"] == "98"
    with pytest.raises(KeyError):
        adapter.write_queue_state(1, "no_such_state", "none", since_ns=0)


# ---- policy generations -----------------------------------------------------------------------

POLICY = """
mode: monitor
fast_path:
  allow_cidrs: [198.51.100.0/24]
  drop_ips: [192.0.2.1, 192.0.2.2]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: pass}
"""


def test_apply_fills_the_inactive_slot_then_flips_the_config_last(
        adapter: FakeAdapter, fakes: dict[str, FakeMap], templates: dict[str, InnerTemplate], log: Log) -> None:
    fastpath = fastpath_over(adapter, templates)
    fakes["hyp_config"].entries[bytes(4)] = struct.pack("<II", 0, 100)  # slot 0 active, 100 events/s
    set_settings(fakes, 0, MODE_ENFORCE, 5, 1)
    fakes["hyp_class_stats"].entries[class_key(IPPROTO_UDP, 53)] = struct.pack("<QQ", 8, 1) * NCPUS  # kept
    fakes["hyp_class_stats"].entries[class_key(IPPROTO_TCP, 99)] = struct.pack("<QQ", 2, 2) * NCPUS  # dropped
    compiled = PolicyCompiler(adapter.abi, fastpath.capacities()).compile(parse_policy(POLICY))

    assert fastpath.apply(compiled) == 6

    assert fakes["hyp_config"].entries[bytes(4)] == struct.pack("<II", 1, 100)
    mode, generation, applied_at, entries = settings_of(fakes, 1)
    assert (mode, generation) == (MODE_MONITOR, 6)
    assert abs(applied_at - time.time_ns()) < 60e9
    assert entries[PMAP_BIP4] == 2 and entries[PMAP_ALLOW4] == 1 and sum(entries) == 4  # + 1 class
    assert settings_of(fakes, 0)[:2] == (MODE_ENFORCE, 5)  # the serving slot is never written
    for name in templates:
        assert bytes(4) not in fakes[name].entries  # slot 0 serves: never written
        inner_fd = int.from_bytes(fakes[name].entries[(1).to_bytes(4, "little")], "little")
        assert inner_fd in adapter.inner
    bip4 = adapter.inner[int.from_bytes(fakes["hyp_bip4"].entries[(1).to_bytes(4, "little")], "little")]
    assert set(bip4.entries) == {ipaddress.IPv4Address("192.0.2.1").packed, ipaddress.IPv4Address("192.0.2.2").packed}

    flip = log.index("hyp_config", "update", bytes(4))
    assert log.index("hyp_settings", "update", (1).to_bytes(4, "little")) < flip
    assert all(log.index(name, "update", (1).to_bytes(4, "little")) < flip for name in templates)
    assert log.index("hyp_class_stats", "delete", class_key(IPPROTO_TCP, 99)) > flip
    assert fakes["hyp_class_stats"].entries == {class_key(IPPROTO_UDP, 53): struct.pack("<QQ", 8, 1) * NCPUS}


def test_apply_registers_new_classes_with_zeroed_counters_before_the_flip(
        adapter: FakeAdapter, fakes: dict[str, FakeMap], templates: dict[str, InnerTemplate], log: Log) -> None:
    fastpath = fastpath_over(adapter, templates)
    compiled = PolicyCompiler(adapter.abi, fastpath.capacities()).compile(parse_policy(POLICY))
    fastpath.apply(compiled)
    assert fakes["hyp_class_stats"].entries == {class_key(IPPROTO_UDP, 53): bytes(16 * NCPUS)}
    assert log.index("hyp_class_stats", "update", class_key(IPPROTO_UDP, 53)) < \
        log.index("hyp_config", "update", bytes(4))


def test_a_second_apply_waits_out_the_quiesce_and_flips_back(
        adapter: FakeAdapter, fakes: dict[str, FakeMap], templates: dict[str, InnerTemplate]) -> None:
    fastpath = fastpath_over(adapter, templates)
    compiled = PolicyCompiler(adapter.abi, fastpath.capacities()).compile(parse_policy(POLICY))
    assert fastpath.apply(compiled) == 1
    first_applied_at = settings_of(fakes, 1)[2]
    assert fastpath.apply(compiled) == 2
    assert fakes["hyp_config"].entries[bytes(4)][:4] == (0).to_bytes(4, "little")
    # In-flight packets of the first flip get 50 ms before slot 0 is rewritten.
    assert settings_of(fakes, 0)[2] - first_applied_at >= 0.05e9


def test_a_failure_before_the_flip_leaves_the_running_policy(
        adapter: FakeAdapter, fakes: dict[str, FakeMap], templates: dict[str, InnerTemplate]) -> None:
    fastpath = fastpath_over(adapter, templates)
    fakes["hyp_config"].entries[bytes(4)] = struct.pack("<II", 0, 0)
    set_settings(fakes, 0, MODE_ENFORCE, 5, 1)
    adapter.fail_on = "hyp_bip6"
    compiled = PolicyCompiler(adapter.abi, fastpath.capacities()).compile(parse_policy(POLICY))
    with pytest.raises(BpfError, match="hyp_bip6"):
        fastpath.apply(compiled)
    assert fakes["hyp_config"].entries[bytes(4)] == struct.pack("<II", 0, 0)
    assert settings_of(fakes, 0)[:2] == (MODE_ENFORCE, 5)
    assert fastpath.status()["policy_generation"] == 5


# ---- status -----------------------------------------------------------------------------------


def _expected_status(program: dict[str, Any]) -> dict[str, Any]:
    """`hyperion status --json` as it was before the split: this key order, these types."""
    maps = {name: {"entries": 0, "capacity": cap} for name, cap in
            [("hyp_allow4", 16384), ("hyp_allow6", 16384), ("hyp_bcidr4", 262144), ("hyp_bcidr6", 262144),
             ("hyp_bip4", 2097152), ("hyp_bip6", 2097152), ("hyp_classes", 256),
             ("hyp_dns_short", 2097152), ("hyp_dns_long", 2097152)]}
    maps["hyp_bip4"]["entries"] = 2
    maps["hyp_dyn4"] = {"entries": 1, "capacity": 4}
    maps["hyp_dyn6"] = {"entries": 0, "capacity": 4}
    return {
        "interface": program.pop("interface"), "pin_dir": program.pop("pin_dir"), "policy_generation": 3,
        "mode": "enforce", "applied_at": 1700000000.5, **program, "maps": maps,
        "counters": [{"verdict": "drop", "reason": "blocklist_ip", "packets": 4, "bytes": 256},
                     {"verdict": "pass", "reason": "no_match", "packets": 1, "bytes": 60}],
    }


@pytest.mark.parametrize("attached", [False, True])
def test_status_json_keeps_its_keys_and_order(adapter: FakeAdapter, fakes: dict[str, FakeMap],
                                              templates: dict[str, InnerTemplate], attached: bool) -> None:
    fastpath = fastpath_over(adapter, templates, attached)
    fakes["hyp_settings"].entries[bytes(4)] = struct.pack(SETTINGS, MODE_ENFORCE, 0, 3, 1700000000500000000,
                                                          0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0)
    for (verdict, reason), packets, octets in [((VERDICT_PASS, REASON_NO_MATCH), 1, 60),
                                               ((VERDICT_DROP, REASON_BLOCKLIST_IP), 4, 256)]:
        index = verdict * REASON_COUNT + reason
        fakes["hyp_counters"].entries[index.to_bytes(4, "little")] = struct.pack("<QQ", packets, octets) + bytes(
            16 * (NCPUS - 1))
    fakes["hyp_dyn4"].entries[bytes([192, 0, 2, 9])] = struct.pack("<QI4x", 0, 0)
    program: dict[str, Any] = {"interface": None, "pin_dir": None}
    if attached:
        program = {"interface": "veth0", "pin_dir": "/sys/fs/bpf/hyperion/ns1_veth0", "program_id": 7,
                   "link_id": 3, "ifindex": 2, "xlated_bytes": 9000, "jited_bytes": 5000, "verified_insns": 1234,
                   "attach_mode": "generic"}
    assert json.dumps(fastpath.status(), indent=2) == json.dumps(_expected_status(program), indent=2)


# ---- dynamic blocklist ------------------------------------------------------------------------


def boottime() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def test_blocks_carry_their_boottime_expiry_in_the_header_layout(adapter: FakeAdapter,
                                                                   fakes: dict[str, FakeMap]) -> None:
    blocklist = DynamicBlocklist(adapter, None)
    v4, v6 = ipaddress.IPv4Address("203.0.113.7"), ipaddress.IPv6Address("2001:db8::7")
    before = boottime()
    blocklist.add(v4, 60, rule_id=9)
    after = boottime()
    blocklist.add(v6, None)
    expires, rule_id = struct.unpack("<QI4x", fakes["hyp_dyn4"].entries[v4.packed])  # struct hyp_dyn_block
    assert before + 60e9 <= expires <= after + 60e9 and rule_id == 9
    assert fakes["hyp_dyn6"].entries[v6.packed] == struct.pack("<QI4x", 0, 0)  # 0: never expires
    blocks = {b.address: b for b in blocklist.blocks()}
    assert set(blocks) == {v4, v6}
    expires_in = blocks[v4].expires_in
    assert expires_in is not None and 0 < expires_in <= 60
    assert blocks[v4].rule_id == 9 and blocks[v6].expires_in is None
    assert blocklist.delete(v4) is True and blocklist.delete(v4) is False


def test_sweep_deletes_only_expired_blocks(adapter: FakeAdapter, fakes: dict[str, FakeMap]) -> None:
    blocklist = DynamicBlocklist(adapter, None)
    now = boottime()
    expired, live, forever = (ipaddress.IPv4Address(f"198.51.100.{n}") for n in (1, 2, 3))
    fakes["hyp_dyn4"].entries[expired.packed] = struct.pack("<QI4x", now - 10**9, 1)
    fakes["hyp_dyn4"].entries[live.packed] = struct.pack("<QI4x", now + 3600 * 10**9, 1)
    fakes["hyp_dyn4"].entries[forever.packed] = struct.pack("<QI4x", 0, 1)
    assert blocklist.sweep_expired() == 1
    assert set(fakes["hyp_dyn4"].entries) == {live.packed, forever.packed}
    assert blocklist.sweep_expired() == 0


def test_evictions_of_a_full_table_are_counted(adapter: FakeAdapter, fakes: dict[str, FakeMap]) -> None:
    blocklist = DynamicBlocklist(adapter, None)
    first = [ipaddress.IPv6Address(f"2001:db8::{n:x}") for n in range(1, 5)]
    assert blocklist.add_many(first, None) == 0  # exactly full (4 entries)
    # One already there (rewritten, no room needed) and three new ones: three older entries go.
    more = [first[3]] + [ipaddress.IPv6Address(f"2001:db8::{n:x}") for n in range(5, 8)]
    assert blocklist.add_many(more, None) == 3
    assert len(fakes["hyp_dyn6"].entries) == 4
    assert blocklist.evictions() == 3
    # Duplicates in one call are one key.
    assert blocklist.add_many([ipaddress.IPv6Address("2001:db8::99")] * 3, None) == 1
    assert blocklist.evictions() == 4


def test_evictions_are_one_total_for_every_process(adapter: FakeAdapter, tmp_path: Path) -> None:
    path = tmp_path / "state" / "dynamic-block-evictions"
    one, other = DynamicBlocklist(adapter, path), DynamicBlocklist(adapter, path)
    assert one.evictions() == 0  # no file yet
    one.add_many([ipaddress.IPv4Address(f"192.0.2.{n}") for n in range(1, 7)], 30)  # 6 into 4: 2 evicted
    other.add_many([ipaddress.IPv4Address(f"192.0.2.{n}") for n in range(7, 10)], 30)  # 3 new: 3 evicted
    assert one.evictions() == other.evictions() == 5
    assert path.read_text() == "5"


def test_fastpath_delegates_to_its_blocklist_and_adapter(adapter: FakeAdapter, fakes: dict[str, FakeMap],
                                                          templates: dict[str, InnerTemplate]) -> None:
    fastpath = fastpath_over(adapter, templates)
    assert fastpath.maps is adapter.maps and fastpath.linked is False and fastpath.pin_dir is None
    assert fastpath.block_add_many([ipaddress.IPv4Address(f"192.0.2.{n}") for n in range(1, 6)], None) == 1
    assert fastpath.dynamic_block_evictions() == 1 and fastpath.dynamic_block_count("hyp_dyn4") == 4
    assert fastpath.map_fill()["hyp_dyn4"] == (4, 4)
    fastpath.set_event_rate(250)
    assert fakes["hyp_config"].entries[bytes(4)] == struct.pack("<II", 0, 250)
    fastpath.set_queue_state(1, "active", "ready", worker_pid=10)
    assert fastpath.queue_states()[1]["state"] == "active"
    assert fastpath.applied_policy_text() is None  # detached: no state directory
