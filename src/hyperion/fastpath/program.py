"""The XDP fast path on one interface: load, attach, pin, apply policy, read state.

State lives in bpffs under /sys/fs/bpf/hyperion/<netns>_<ifname>/: every map
pinned by its name and the XDP link as `link`. Because the link is pinned,
the program stays attached when the control plane exits; a restarted control
plane (or the CLI) opens the same pins and sees the same counters.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperion.errors import AttachError, BpfError, HyperionError, NotAttachedError
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi, load_abi, packer
from hyperion.policy.compiler import CLASSES_MAP, CompiledPolicy

PIN_ROOT = Path(os.environ.get("HYPERION_PIN_ROOT", "/sys/fs/bpf/hyperion"))
# Beside the pins (bpffs holds only BPF objects): the source of the applied policy.
STATE_ROOT = Path(os.environ.get("HYPERION_STATE_ROOT", "/run/hyperion"))
APPLIED_POLICY = "applied-policy.yaml"
# Beside it: the total of dynamic blocks evicted by a full table to make room (see block_add_many).
DYN_EVICTIONS = "dynamic-block-evictions"
PROGRAM_NAME = "hyperion_xdp"
LINK_PIN = "link"
# A packet's run of the program takes microseconds; waiting this long after a
# flip before rewriting the now-inactive slot keeps in-flight packets whole.
SLOT_QUIESCE_SECONDS = 0.05

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def pin_dir_for(ifname: str, root: Path | None = None) -> Path:
    """One directory per (network namespace, interface): the same name in two namespaces never collides."""
    return (root or PIN_ROOT) / f"ns{netns_inode()}_{ifname}"


def ifindex_of(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise AttachError(f"interface {ifname!r} does not exist in this network namespace") from None


def boottime_ns() -> int:
    """CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns()."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class InnerTemplate:
    """Shape of the inner maps of one generation (outer) map, from the object."""

    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class DynamicBlock:
    address: IPAddress
    expires_in: float | None  # seconds; None = never; <= 0 = expired
    rule_id: int


class BpfObject:
    """An opened (optionally loaded) libbpf bpf_object; closed with close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = libbpf.check_ptr(libbpf.lib().bpf_object__open_file(str(path).encode(), None),
                                       f"open BPF object {path}")

    def maps(self) -> Iterator[tuple[str, int]]:
        lib = libbpf.lib()
        current = lib.bpf_object__next_map(self.handle, None)
        while current:
            if not lib.bpf_map__is_internal(current):
                yield lib.bpf_map__name(current).decode(), current
            current = lib.bpf_object__next_map(self.handle, current)

    def inner_templates(self) -> dict[str, InnerTemplate]:
        lib = libbpf.lib()
        templates = {}
        for name, handle in self.maps():
            inner = lib.bpf_map__inner_map(handle)
            if inner:
                templates[name] = InnerTemplate(
                    lib.bpf_map__type(inner), lib.bpf_map__key_size(inner), lib.bpf_map__value_size(inner),
                    lib.bpf_map__max_entries(inner), lib.bpf_map__map_flags(inner),
                )
        return templates

    def load(self, pin_dir: Path | None) -> None:
        lib = libbpf.lib()
        if pin_dir is not None:
            for name, handle in self.maps():
                # Re-uses a compatible pinned map, else creates and pins it.
                libbpf.check(lib.bpf_map__set_pin_path(handle, str(pin_dir / name).encode()), f"pin path {name}")
        rc = lib.bpf_object__load(self.handle)
        if rc < 0:
            raise BpfError(
                f"loading {self.path} failed: {os.strerror(-rc)} (verifier or pinned-map mismatch; "
                "libbpf's log above says which; `hyperion detach` clears stale pins)", -rc)

    def program_fd(self, name: str = PROGRAM_NAME) -> int:
        lib = libbpf.lib()
        prog = libbpf.check_ptr(lib.bpf_object__find_program_by_name(self.handle, name.encode()),
                                f"program {name}")
        return libbpf.check(lib.bpf_program__fd(prog), f"fd of program {name}")

    def map_fds(self) -> dict[str, int]:
        lib = libbpf.lib()
        return {name: libbpf.check(lib.bpf_map__fd(handle), f"fd of map {name}") for name, handle in self.maps()}

    def close(self) -> None:
        if self.handle:
            libbpf.lib().bpf_object__close(self.handle)
            self.handle = 0


def object_capacities(object_path: Path) -> dict[str, int]:
    """Capacities of the policy maps, from the object alone (nothing loaded)."""
    obj = BpfObject(object_path)
    try:
        return {name: t.max_entries for name, t in obj.inner_templates().items()}
    finally:
        obj.close()


class FastPath:
    """Handle on the fast path's maps (and, when attached, its pins and link)."""

    def __init__(self, abi: Abi, map_fds: dict[str, int], templates: dict[str, InnerTemplate],
                 pin_dir: Path | None = None, ifname: str | None = None,
                 owned_object: BpfObject | None = None) -> None:
        self.abi = abi
        self.pin_dir = pin_dir
        self.ifname = ifname
        self.templates = templates
        self.maps = {name: libbpf.MapFd.from_fd(fd) for name, fd in map_fds.items()}
        self._object = owned_object
        self._ncpus = libbpf.num_possible_cpus()
        self._dyn_value = packer(abi.DynBlock)
        self._evictions = 0  # without pins (a detached program): counted here
        self._class_key = packer(abi.ClassKey)
        self.linked = pin_dir is not None  # opened from pins: attached; prepare() clears it until link()
        self._mode = "native"
        self._ifindex = 0

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def load_detached(cls, object_path: Path | None = None) -> tuple[FastPath, int]:
        """Loads the program without attaching or pinning (for BPF_PROG_TEST_RUN); returns it and the prog fd."""
        abi = load_abi(object_path)
        obj = BpfObject(abi.object_path)
        try:
            templates = obj.inner_templates()
            obj.load(None)
            return cls(abi, obj.map_fds(), templates, owned_object=obj), obj.program_fd()
        except BaseException:
            obj.close()
            raise

    @classmethod
    def attach(cls, ifname: str, mode: str = "native", object_path: Path | None = None,
               pin_root: Path | None = None, before_link: Callable[[FastPath], object] | None = None) -> FastPath:
        """Attaches to ifname, or re-uses the attachment already pinned there.

        On a fresh attach, before_link fills the maps (the policy) before the program is
        attached, so no packet is judged without it; a re-used attachment keeps enforcing
        what it has, and the caller applies afterwards.
        """
        fastpath = cls.prepare(ifname, mode, object_path, pin_root)
        try:
            if not fastpath.linked and before_link is not None:
                before_link(fastpath)
            fastpath.link()
        except BaseException:
            fastpath.abandon()
            raise
        return fastpath

    @classmethod
    def prepare(cls, ifname: str, mode: str = "native", object_path: Path | None = None,
                pin_root: Path | None = None) -> FastPath:
        """Loads the program and creates and pins its maps, without attaching it (link() does);
        or opens the attachment already pinned for ifname (then `linked` is already true)."""
        if mode not in ("native", "generic"):
            raise AttachError(f"attach mode must be 'native' or 'generic', not {mode!r}")
        ifindex = ifindex_of(ifname)
        pin_dir = pin_dir_for(ifname, pin_root)
        if (pin_dir / LINK_PIN).exists():
            if _pinned_link_ifindex(pin_dir) == ifindex:
                return cls.open(ifname, object_path, pin_root)
            _remove_pins(pin_dir)  # the interface was deleted and re-created: stale state
        if xdp_attach_mode(ifname) is not None:
            # Said now rather than when link() fails, before the caller fills maps and starts workers.
            raise AttachError(_attach_failure(ifname, mode, 16))
        abi = load_abi(object_path)
        _make_pin_dir(pin_dir)
        obj = BpfObject(abi.object_path)
        try:
            templates = obj.inner_templates()
            obj.load(pin_dir)
            fastpath = cls(abi, obj.map_fds(), templates, pin_dir, ifname, owned_object=obj)
        except BaseException:
            obj.close()
            if not (pin_dir / LINK_PIN).exists():
                _remove_pins(pin_dir)
            raise
        fastpath.linked = False
        fastpath._mode = mode
        fastpath._ifindex = ifindex
        return fastpath

    def link(self) -> None:
        """Attaches the prepared program to its interface and pins the link (no-op when attached)."""
        if self.linked:
            return
        assert self._object is not None and self.pin_dir is not None and self.ifname is not None
        flags = libbpf.XDP_FLAGS_DRV_MODE if self._mode == "native" else libbpf.XDP_FLAGS_SKB_MODE
        opts = libbpf.BpfLinkCreateOpts(sz=ctypes.sizeof(libbpf.BpfLinkCreateOpts), flags=flags)
        link_fd = libbpf.lib().bpf_link_create(self._object.program_fd(), self._ifindex, libbpf.BPF_XDP,
                                               ctypes.byref(opts))
        if link_fd < 0:
            raise AttachError(_attach_failure(self.ifname, self._mode, -link_fd))
        try:
            libbpf.obj_pin(link_fd, str(self.pin_dir / LINK_PIN))
        except BaseException:
            libbpf.lib().bpf_link_detach(link_fd)
            raise
        finally:
            os.close(link_fd)
        self.linked = True

    def abandon(self) -> None:
        """Closes a prepared fast path that was never attached and removes its pins and state
        (nothing else used them); an attached one is only closed."""
        self.close()
        if not self.linked and self.pin_dir is not None and not (self.pin_dir / LINK_PIN).exists():
            _detach_pin_dir(self.pin_dir)

    def is_attached(self) -> bool:
        """True while the pinned link still attaches the program to the interface of that name: false
        after an external detach (the link is defunct), a deleted netdev, or one re-created (new ifindex)."""
        if not self.linked or self.pin_dir is None or self.ifname is None:
            return False
        try:
            return _pinned_link_ifindex(self.pin_dir) == ifindex_of(self.ifname) != 0
        except HyperionError:
            return False

    @classmethod
    def open(cls, ifname: str, object_path: Path | None = None, pin_root: Path | None = None) -> FastPath:
        """Opens the pinned state of an attached interface, without touching the program."""
        pin_dir = pin_dir_for(ifname, pin_root)
        if not (pin_dir / LINK_PIN).exists():
            raise NotAttachedError(f"Hyperion is not attached to {ifname!r} in this network namespace "
                                   f"(no pins under {pin_dir})")
        abi = load_abi(object_path)
        obj = BpfObject(abi.object_path)
        try:
            templates = obj.inner_templates()
            names = [name for name, _ in obj.maps()]
        finally:
            obj.close()
        fds = {}
        for name in names:
            fds[name] = libbpf.obj_get(str(pin_dir / name))
        return cls(abi, fds, templates, pin_dir, ifname)

    @staticmethod
    def detach(ifname: str, pin_root: Path | None = None) -> bool:
        """Detaches the program and removes the interface's pins. False if nothing was attached."""
        return _detach_pin_dir(pin_dir_for(ifname, pin_root))

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        if self._object is not None:
            self._object.close()
            self._object = None

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- policy -------------------------------------------------------------------------

    def capacities(self) -> dict[str, int]:
        return {name: t.max_entries for name, t in self.templates.items()}

    def _config(self) -> Any:
        raw = self.maps["hyp_config"].lookup(bytes(4))
        return self.abi.Config.from_buffer_copy(raw or bytes(ctypes.sizeof(self.abi.Config)))

    def settings(self, slot: int | None = None) -> Any:
        if slot is None:
            slot = self._config().active_slot
        raw = self.maps["hyp_settings"].lookup(int(slot).to_bytes(4, "little"))
        return self.abi.Settings.from_buffer_copy(raw or bytes(ctypes.sizeof(self.abi.Settings)))

    def apply(self, compiled: CompiledPolicy) -> int:
        """Installs a compiled policy atomically; returns its generation.

        The new maps are built in the inactive slot while the active one keeps
        serving; one 4-byte write of hyp_config then switches every CPU over.
        A failure before that write leaves the running policy untouched.
        """
        config = self._config()
        active = config.active_slot & 1
        target = active ^ 1
        current = self.settings(active)
        since_flip = time.time_ns() - current.applied_at_ns
        if 0 <= since_flip < SLOT_QUIESCE_SECONDS * 1e9:
            time.sleep(SLOT_QUIESCE_SECONDS - since_flip / 1e9)
        entries = (ctypes.c_uint32 * len(self.abi.policy_maps))()
        for index, name in self.abi.policy_maps.items():
            image = compiled.images[name]
            inner = self._build_inner(name, image)
            try:
                self.maps[name].update(target.to_bytes(4, "little"), inner.fd.to_bytes(4, "little"))
            finally:
                inner.close()
            entries[index] = image.count
        settings = self.abi.Settings(mode=compiled.mode, generation=current.generation + 1,
                                     applied_at_ns=time.time_ns(), entries=entries)
        self.maps["hyp_settings"].update(target.to_bytes(4, "little"), bytes(settings))
        self._register_class_counters(compiled)
        config.active_slot = target  # events_per_sec is kept as it is
        self.maps["hyp_config"].update(bytes(4), bytes(config))
        self._prune_class_counters(compiled)
        return int(settings.generation)

    def _register_class_counters(self, compiled: CompiledPolicy) -> None:
        """Creates zeroed counters for new classes; existing ones keep counting across reloads."""
        image = compiled.images[CLASSES_MAP]
        stats = self.maps["hyp_class_stats"]
        zero = bytes(((ctypes.sizeof(self.abi.ClassCounter) + 7) & ~7) * self._ncpus)
        for key, _ in image.entries(self._class_key.size, ctypes.sizeof(self.abi.ClassValue)):
            try:
                stats.update(key, zero, libbpf.BPF_NOEXIST)
            except BpfError as exc:
                if exc.errno != 17:  # EEXIST: already counting
                    raise

    def _prune_class_counters(self, compiled: CompiledPolicy) -> None:
        """After the flip, the counters of classes the new policy no longer has go (their series
        end): the table holds at most two policies' classes, never the history of every one."""
        image = compiled.images[CLASSES_MAP]
        keep = {key for key, _ in image.entries(self._class_key.size, ctypes.sizeof(self.abi.ClassValue))}
        stats = self.maps["hyp_class_stats"]
        for key in [k for k in stats.iter_keys() if k not in keep]:
            stats.delete(key)

    def _build_inner(self, name: str, image: Any) -> libbpf.MapFd:
        t = self.templates[name]
        fd = libbpf.map_create(t.map_type, f"{name}_g"[:15], t.key_size, t.value_size, t.max_entries, t.flags)
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

    def record_applied_policy(self, source_text: str) -> None:
        """Keeps the applied policy's text so `policy diff` can compare against what runs."""
        if self.pin_dir is None:
            return
        state = STATE_ROOT / self.pin_dir.name
        _private_dir(STATE_ROOT, parents=True)
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = state / f".{APPLIED_POLICY}.tmp"
        tmp.write_text(source_text)
        tmp.replace(state / APPLIED_POLICY)

    def applied_policy_text(self) -> str | None:
        if self.pin_dir is None:
            return None
        try:
            return (STATE_ROOT / self.pin_dir.name / APPLIED_POLICY).read_text()
        except FileNotFoundError:
            return None

    # ---- counters -----------------------------------------------------------------------

    def _percpu_sum(self, map_name: str, key: bytes, struct_cls: Any) -> dict[str, int] | None:
        """Looks up a per-CPU map entry and sums each field over the possible CPUs."""
        stride = (ctypes.sizeof(struct_cls) + 7) & ~7
        raw = self.maps[map_name].lookup(key, stride * self._ncpus)
        if raw is None:
            return None
        fields = [name for name, *_ in struct_cls._fields_ if not name.startswith(("_", "reserved", "pad"))]
        totals = dict.fromkeys(fields, 0)
        for cpu in range(self._ncpus):
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
                total = self._percpu_sum("hyp_counters", index.to_bytes(4, "little"), self.abi.Counter)
                if total and total["packets"]:
                    result[(verdict_label, reason_label)] = (total["packets"], total["bytes"])
        return result

    def queue_counter(self, queue: int) -> dict[str, int]:
        """One rx queue's packets/drops/redirects/redirect_failures/fenced, summed over CPUs."""
        total = self._percpu_sum("hyp_queue_stats", queue.to_bytes(4, "little"), self.abi.QueueCounter)
        return total or {}

    def queue_counters(self) -> dict[int, dict[str, int]]:
        """rx queue -> its counters, for queues that saw packets."""
        counters = {queue: self.queue_counter(queue) for queue in range(self.abi.capacity["queues"])}
        return {queue: total for queue, total in counters.items() if total.get("packets")}

    def class_counters(self) -> dict[tuple[int, int], dict[str, int]]:
        """(protocol, port) -> redirected/failed, for every class ever installed."""
        stats = self.maps["hyp_class_stats"]
        result = {}
        for key in list(stats.iter_keys()):
            port, protocol = self._class_key.unpack(key)
            total = self._percpu_sum("hyp_class_stats", key, self.abi.ClassCounter)
            if total is not None:
                result[(protocol, port)] = total
        return result

    def event_stats(self) -> dict[str, int]:
        """emitted / suppressed (over budget) / ring_full, summed over CPUs."""
        total = self._percpu_sum("hyp_event_state", bytes(4), self.abi.EventState) or {}
        return {name: total.get(name, 0) for name in ("emitted", "suppressed", "ring_full")}

    def set_event_rate(self, events_per_sec: int) -> None:
        """Per-CPU budget of drop events per second (0 disables events)."""
        config = self._config()
        config.events_per_sec = events_per_sec
        self.maps["hyp_config"].update(bytes(4), bytes(config))

    # ---- queue lifecycle ----------------------------------------------------------------

    def set_queue_state(self, queue: int, state: str, reason: str, worker_pid: int = 0, restarts: int = 0) -> None:
        """One write the program sees at once: states from 'fenced' on take the class fallback."""
        value = self.abi.QueueState()
        value.state = {v: k for k, v in self.abi.queue_states.items()}[state]
        value.reason = {v: k for k, v in self.abi.queue_reasons.items()}[reason]
        value.since_ns = time.time_ns()
        value.worker_pid = worker_pid
        value.restarts = restarts
        self.maps["hyp_queue_state"].update(queue.to_bytes(4, "little"), bytes(value))

    def queue_state(self, queue: int) -> dict[str, Any]:
        raw = self.maps["hyp_queue_state"].lookup(queue.to_bytes(4, "little"))
        value = self.abi.QueueState.from_buffer_copy(raw) if raw else self.abi.QueueState()
        return {"state": self.abi.queue_states.get(value.state, str(value.state)),
                "reason": self.abi.queue_reasons.get(value.reason, str(value.reason)),
                "since_ns": value.since_ns, "worker_pid": value.worker_pid, "restarts": value.restarts}

    def queue_states(self) -> dict[int, dict[str, Any]]:
        """Queues whose state is not 'unmanaged'."""
        states = {queue: self.queue_state(queue) for queue in range(self.abi.capacity["queues"])}
        return {queue: st for queue, st in states.items() if st["state"] != "unmanaged"}

    # ---- dynamic blocklist --------------------------------------------------------------

    def _dyn_map(self, address: IPAddress) -> libbpf.MapFd:
        return self.maps["hyp_dyn4" if address.version == 4 else "hyp_dyn6"]

    def block_add(self, address: IPAddress, ttl_seconds: float | None, rule_id: int = 0) -> None:
        self.block_add_many([address], ttl_seconds, rule_id)

    def block_add_many(self, addresses: Iterable[IPAddress], ttl_seconds: float | None, rule_id: int = 0) -> int:
        """Blocks sources; returns how many older blocks the full LRU tables evicted to make room,
        which is also added to dynamic_block_evictions(). The kernel does not count evictions:
        they are the table's entries before, plus the new keys, minus its entries after (exact
        when nothing else writes the table meanwhile; the slow path's workers write it directly)."""
        expires = 0 if ttl_seconds is None else boottime_ns() + int(ttl_seconds * 1e9)
        value = self._dyn_value.pack(expires, rule_id)
        by_map: dict[str, dict[bytes, None]] = {}
        for address in addresses:
            by_map.setdefault("hyp_dyn4" if address.version == 4 else "hyp_dyn6", {})[address.packed] = None
        evicted = 0
        for name, keys in by_map.items():
            dyn = self.maps[name]
            before = self.dynamic_block_count(name)
            new = 0
            for key in keys:
                new += dyn.lookup(key) is None
                dyn.update(key, value)
            evicted += max(0, before + new - self.dynamic_block_count(name))
        if evicted:
            self._add_evictions(evicted)
        return evicted

    def dynamic_block_count(self, name: str) -> int:
        """Entries in hyp_dyn4 or hyp_dyn6 (expired ones included), with batch lookups."""
        dyn = self.maps[name]
        return dyn.lookup_batch(libbpf.map_info(dyn.fd).max_entries)[2]

    def dynamic_block_evictions(self) -> int:
        """Blocks evicted by a full table when blocks were added through block_add(_many) (the CLI's
        `block add` included): kept beside the pins, so every process adds to one total."""
        path = self._evictions_path()
        if path is None:
            return self._evictions
        try:
            return int(path.read_text() or 0)
        except FileNotFoundError:
            return 0

    def _evictions_path(self) -> Path | None:
        return None if self.pin_dir is None else STATE_ROOT / self.pin_dir.name / DYN_EVICTIONS

    def _add_evictions(self, count: int) -> None:
        path = self._evictions_path()
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

    def block_delete(self, address: IPAddress) -> bool:
        return self._dyn_map(address).delete(address.packed)

    def blocks(self) -> list[DynamicBlock]:
        now = boottime_ns()
        found = []
        for name, factory in (("hyp_dyn4", ipaddress.IPv4Address), ("hyp_dyn6", ipaddress.IPv6Address)):
            dyn = self.maps[name]
            for key in list(dyn.iter_keys()):
                raw = dyn.lookup(key)
                if raw is None:
                    continue
                expires, rule_id = self._dyn_value.unpack(raw)
                expires_in = None if expires == 0 else (expires - now) / 1e9
                found.append(DynamicBlock(factory(key), expires_in, rule_id))
        return found

    def sweep_expired_blocks(self) -> int:
        """Deletes expired dynamic blocks (the program already ignores them); returns how many."""
        removed = 0
        for block in self.blocks():
            if block.expires_in is not None and block.expires_in <= 0 and self.block_delete(block.address):
                removed += 1
        return removed

    # ---- status -------------------------------------------------------------------------

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) for the active policy and the dynamic blocklist."""
        settings = self.settings()
        fill = {name: (int(settings.entries[index]), self.templates[name].max_entries)
                for index, name in self.abi.policy_maps.items()}
        for name in ("hyp_dyn4", "hyp_dyn6"):
            dyn = self.maps[name]
            fill[name] = (self.dynamic_block_count(name), libbpf.map_info(dyn.fd).max_entries)
        return fill

    def program_info(self) -> dict[str, Any]:
        if self.pin_dir is None:
            return {}
        link_fd = libbpf.obj_get(str(self.pin_dir / LINK_PIN))
        try:
            link = libbpf.link_info(link_fd)
        finally:
            os.close(link_fd)
        prog_fd = libbpf.check(libbpf.lib().bpf_prog_get_fd_by_id(link.prog_id), "program by id")
        try:
            prog = libbpf.prog_info(prog_fd)
        finally:
            os.close(prog_fd)
        return {
            "program_id": link.prog_id,
            "link_id": link.id,
            "ifindex": link.union_first,
            "xlated_bytes": prog.xlated_prog_len,
            "jited_bytes": prog.jited_prog_len,
            "verified_insns": prog.verified_insns,
            "attach_mode": xdp_attach_mode(self.ifname) if self.ifname else None,
        }

    def status(self) -> dict[str, Any]:
        settings = self.settings()
        modes = {v: k for k, v in self.abi.modes.items()}
        return {
            "interface": self.ifname,
            "pin_dir": str(self.pin_dir) if self.pin_dir else None,
            "policy_generation": int(settings.generation),
            "mode": modes.get(settings.mode, str(settings.mode)) if settings.generation else None,
            "applied_at": settings.applied_at_ns / 1e9 if settings.generation else None,
            **self.program_info(),
            "maps": {name: {"entries": e, "capacity": c} for name, (e, c) in self.map_fill().items()},
            "counters": [
                {"verdict": v, "reason": r, "packets": p, "bytes": b}
                for (v, r), (p, b) in sorted(self.counters().items())
            ],
        }


def xdp_attach_mode(ifname: str) -> str | None:
    """native/generic/offload as the kernel reports it (iproute2's JSON), None if nothing attached."""
    try:
        out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname],
                             check=True, capture_output=True, text=True).stdout
        xdp = json.loads(out)[0].get("xdp")
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None
    if not xdp:
        return None
    return {1: "native", 2: "generic", 3: "offload"}.get(xdp.get("mode"), str(xdp.get("mode")))


def _detach_pin_dir(pin_dir: Path) -> bool:
    state = STATE_ROOT / pin_dir.name
    if state.is_dir():
        for entry in state.iterdir():
            entry.unlink()
        state.rmdir()
    if not pin_dir.exists():
        return False
    link_path = pin_dir / LINK_PIN
    if link_path.exists():
        link_fd = libbpf.obj_get(str(link_path))
        try:
            rc = libbpf.lib().bpf_link_detach(link_fd)
            # ENOLINK: the interface is already gone, which detached it.
            if rc < 0 and -rc != 67:
                libbpf.check(rc, f"detach XDP link pinned in {pin_dir}")
        finally:
            os.close(link_fd)
    _remove_pins(pin_dir)
    return True


def detach_netns(netns_ino: int, pin_root: Path | None = None) -> list[str]:
    """Detaches every interface pinned for a network namespace (before deleting it); returns their names."""
    root = pin_root or PIN_ROOT
    prefix = f"ns{netns_ino}_"
    if not root.is_dir():
        return []
    done = []
    for pin_dir in sorted(root.iterdir()):
        if pin_dir.name.startswith(prefix) and _detach_pin_dir(pin_dir):
            done.append(pin_dir.name[len(prefix):])
    if pin_root is None and STATE_ROOT.is_dir():
        # The namespace goes away with its interfaces: their owner locks (hyperion.owner) too.
        for lock in STATE_ROOT.glob(f"{prefix}*.lock"):
            lock.unlink(missing_ok=True)
    return done


def _pinned_link_ifindex(pin_dir: Path) -> int:
    try:
        fd = libbpf.obj_get(str(pin_dir / LINK_PIN))
    except BpfError:
        return 0
    try:
        return int(libbpf.link_info(fd).union_first)
    finally:
        os.close(fd)


def _make_pin_dir(pin_dir: Path) -> None:
    if not Path("/sys/fs/bpf").is_mount() and pin_dir.is_relative_to("/sys/fs/bpf"):
        raise HyperionError("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
    _private_dir(pin_dir.parent)
    _private_dir(pin_dir)


def _private_dir(directory: Path, parents: bool = False) -> None:
    """Creates the directory 0700, or makes an existing one 0700, unless it is shared (a mount
    point such as /sys/fs/bpf itself, or a sticky directory such as /tmp)."""
    directory.mkdir(mode=0o700, parents=parents, exist_ok=True)
    mode = directory.stat().st_mode
    if not (mode & stat.S_ISVTX or directory.is_mount()) and mode & 0o777 != 0o700:
        os.chmod(directory, 0o700)


def _remove_pins(pin_dir: Path) -> None:
    if not pin_dir.exists():
        return
    for entry in pin_dir.iterdir():
        entry.unlink()
    pin_dir.rmdir()


def _attach_failure(ifname: str, mode: str, err: int) -> str:
    if err == 95 and mode == "native":  # EOPNOTSUPP
        return f"{ifname}: the driver has no native XDP support; use --mode generic"
    if err == 16:  # EBUSY
        return f"{ifname}: another XDP program is already attached; detach it first"
    return f"attaching XDP to {ifname} ({mode} mode) failed: {os.strerror(err)} (errno {err})"
