"""The XDP fast path on one interface: the logic over the loader and the map adapter.

FastPath applies a compiled policy atomically by generation, reports status and
counters, and keeps the dynamic blocklist; hyperion.fastpath.loader opens, loads,
pins and links the program, hyperion.fastpath.maps reads and writes its maps in the
ABI's layouts, hyperion.fastpath.blocklist keeps the dynamic blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from hyperion.fastpath.blocklist import DYN_EVICTIONS, DynamicBlock, DynamicBlocklist, IPAddress
from hyperion.fastpath.loader import STATE_ROOT, BpfLoader, InnerTemplate, ProgramInfo, private_dir, state_dir_for
from hyperion.fastpath.maps import CLASSES_MAP, CompiledPolicy, MapAdapter, QueueStateInfo
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi

# In the interface's state directory: the source of the applied policy.
APPLIED_POLICY = "applied-policy.yaml"
# A packet's run of the program takes microseconds; waiting this long after a
# flip before rewriting the now-inactive slot keeps in-flight packets whole.
SLOT_QUIESCE_SECONDS = 0.05


class MapFill(TypedDict):
    entries: int
    capacity: int


class CounterRow(TypedDict):
    verdict: str
    reason: str
    packets: int
    bytes: int


class FastPathStatus(TypedDict):
    """`hyperion status --json`: the keys in this order; the program's only when attached."""

    interface: str | None
    pin_dir: str | None
    policy_generation: int
    mode: str | None
    applied_at: float | None
    program_id: NotRequired[int]
    link_id: NotRequired[int]
    ifindex: NotRequired[int]
    xlated_bytes: NotRequired[int]
    jited_bytes: NotRequired[int]
    verified_insns: NotRequired[int]
    attach_mode: NotRequired[str | None]
    maps: dict[str, MapFill]
    counters: list[CounterRow]


class FastPath:
    """The fast path: its program (loader), its maps (adapter) and dynamic blocklist, and the logic."""

    def __init__(self, loader: BpfLoader, adapter: MapAdapter | None = None) -> None:
        """adapter: the maps, by default opened from the loader's map fds."""
        self.loader = loader
        self.adapter = adapter or MapAdapter.from_fds(loader.abi, loader.map_fds, loader.templates)
        evictions = None if loader.pin_dir is None else state_dir_for(loader.pin_dir) / DYN_EVICTIONS
        self.blocklist = DynamicBlocklist(self.adapter, evictions)

    @property
    def abi(self) -> Abi:
        return self.loader.abi

    @property
    def maps(self) -> dict[str, libbpf.MapFd]:
        return self.adapter.maps

    @property
    def templates(self) -> dict[str, InnerTemplate]:
        return self.loader.templates

    @property
    def pin_dir(self) -> Path | None:
        return self.loader.pin_dir

    @property
    def ifname(self) -> str | None:
        return self.loader.ifname

    @property
    def linked(self) -> bool:
        """Attached (opened from pins, or link() done); false for a prepared or detached program."""
        return self.loader.linked

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def _over(cls, loader: BpfLoader) -> FastPath:
        try:
            return cls(loader)
        except BaseException:
            loader.close()
            loader.discard_unlinked()
            raise

    @classmethod
    def load_detached(cls, object_path: Path | None = None) -> tuple[FastPath, int]:
        """Loads the program without attaching or pinning (for BPF_PROG_TEST_RUN); returns it and the prog fd."""
        loader, prog_fd = BpfLoader.load_detached(object_path)
        return cls._over(loader), prog_fd

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
        return cls._over(BpfLoader.prepare(ifname, mode, object_path, pin_root))

    @classmethod
    def open(cls, ifname: str, object_path: Path | None = None, pin_root: Path | None = None) -> FastPath:
        """Opens the pinned state of an attached interface, without touching the program."""
        return cls._over(BpfLoader.open(ifname, object_path, pin_root))

    def link(self) -> None:
        """Attaches the prepared program to its interface and pins the link (no-op when attached)."""
        self.loader.link()

    def abandon(self) -> None:
        """Closes a prepared fast path that was never attached and removes its pins and state
        (nothing else used them); an attached one is only closed."""
        self.close()
        self.loader.discard_unlinked()

    def is_attached(self) -> bool:
        """True while the pinned link still attaches the program to the interface of that name: false
        after an external detach (the link is defunct), a deleted netdev, or one re-created (new ifindex)."""
        return self.loader.is_attached()

    @staticmethod
    def detach(ifname: str, pin_root: Path | None = None) -> bool:
        """Detaches the program and removes the interface's pins. False if nothing was attached."""
        return BpfLoader.detach(ifname, pin_root)

    def close(self) -> None:
        self.adapter.close()
        self.loader.close()

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- policy -------------------------------------------------------------------------

    def capacities(self) -> dict[str, int]:
        return self.adapter.capacities()

    def settings(self, slot: int | None = None) -> Any:
        return self.adapter.settings(slot)

    def apply(self, compiled: CompiledPolicy, retire: Callable[[int, dict[int, int]], object] | None = None) -> int:
        """Installs a compiled policy atomically; returns its generation.

        The new maps are built in the inactive slot while the active one keeps
        serving; one 4-byte write of hyp_config then switches every CPU over.
        A failure before that write leaves the running policy untouched.

        retire(slot, hits): called with the DNS rule hits ({rule id: hits}) of the slot about to be
        replaced, before anything in it changes; that slot has been inactive since the previous flip
        (and the quiesce), so its hits are final.
        """
        config = self.adapter.config()
        active = config.active_slot & 1
        target = active ^ 1
        current = self.adapter.settings(active)
        since_flip = time.time_ns() - current.applied_at_ns
        if 0 <= since_flip < SLOT_QUIESCE_SECONDS * 1e9:
            time.sleep(SLOT_QUIESCE_SECONDS - since_flip / 1e9)
        if retire is not None:
            retire(target, self.adapter.dns_hits(target))
        entries = self.adapter.install_generation(target, compiled.images)
        settings = self.abi.Settings(mode=compiled.mode, generation=current.generation + 1,
                                     applied_at_ns=time.time_ns(), entries=entries,
                                     dns_exact_labels=compiled.dns_exact_labels,
                                     dns_suffix_labels=compiled.dns_suffix_labels,
                                     dns_malformed=compiled.dns_malformed,
                                     dns_fragments=compiled.dns_fragments)
        self.adapter.write_settings(target, settings)
        classes = self.adapter.class_keys(compiled.images[CLASSES_MAP])
        # New classes count from the flip on; existing ones keep counting across reloads.
        self.adapter.register_class_counters(classes)
        config.active_slot = target  # events_per_sec is kept as it is
        self.adapter.write_config(config)
        # After the flip, the counters of classes the new policy no longer has go (their series
        # end): the table holds at most two policies' classes, never the history of every one.
        self.adapter.prune_class_counters(classes)
        return int(settings.generation)

    def active_slot(self) -> int:
        """The generation slot the program reads now."""
        return int(self.adapter.config().active_slot) & 1

    def dns_hits(self, slot: int) -> dict[int, int]:
        """rule id -> queries decided by that DNS name rule, in the generation held by `slot`."""
        return self.adapter.dns_hits(slot)

    def record_applied_policy(self, source_text: str) -> None:
        """Keeps the applied policy's text so `policy diff` can compare against what runs."""
        if self.pin_dir is None:
            return
        state = state_dir_for(self.pin_dir)
        private_dir(STATE_ROOT, parents=True)
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = state / f".{APPLIED_POLICY}.tmp"
        tmp.write_text(source_text)
        tmp.replace(state / APPLIED_POLICY)

    def applied_policy_text(self) -> str | None:
        if self.pin_dir is None:
            return None
        try:
            return (state_dir_for(self.pin_dir) / APPLIED_POLICY).read_text()
        except FileNotFoundError:
            return None

    # ---- counters -----------------------------------------------------------------------

    def counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(verdict, reason) -> (packets, bytes), summed over CPUs; zero entries omitted."""
        return self.adapter.counters()

    def queue_counter(self, queue: int) -> dict[str, int]:
        """One rx queue's packets/drops/redirects/redirect_failures/fenced, summed over CPUs."""
        return self.adapter.queue_counter(queue)

    def queue_counters(self) -> dict[int, dict[str, int]]:
        """rx queue -> its counters, for queues that saw packets."""
        return self.adapter.queue_counters()

    def class_counters(self) -> dict[tuple[int, int], dict[str, int]]:
        """(protocol, port) -> redirected/failed, for every class ever installed."""
        return self.adapter.class_counters()

    def event_stats(self) -> dict[str, int]:
        """emitted / suppressed (over budget) / ring_full, summed over CPUs."""
        return self.adapter.event_stats()

    def set_event_rate(self, events_per_sec: int) -> None:
        """Per-CPU budget of drop events per second (0 disables events)."""
        self.adapter.set_event_rate(events_per_sec)

    # ---- queue lifecycle ----------------------------------------------------------------

    def set_queue_state(self, queue: int, state: str, reason: str, worker_pid: int = 0, restarts: int = 0) -> None:
        """One write the program sees at once: states from 'fenced' on take the class fallback."""
        self.adapter.write_queue_state(queue, state, reason, time.time_ns(), worker_pid, restarts)

    def queue_state(self, queue: int) -> QueueStateInfo:
        return self.adapter.queue_state(queue)

    def queue_states(self) -> dict[int, QueueStateInfo]:
        """Queues whose state is not 'unmanaged'."""
        return self.adapter.queue_states()

    # ---- dynamic blocklist --------------------------------------------------------------

    def block_add(self, address: IPAddress, ttl_seconds: float | None, rule_id: int = 0) -> None:
        self.blocklist.add(address, ttl_seconds, rule_id)

    def block_add_many(self, addresses: Iterable[IPAddress], ttl_seconds: float | None, rule_id: int = 0) -> int:
        """Blocks sources; returns how many older blocks the full LRU tables evicted (see DynamicBlocklist)."""
        return self.blocklist.add_many(addresses, ttl_seconds, rule_id)

    def dynamic_block_count(self, name: str) -> int:
        """Entries in hyp_dyn4 or hyp_dyn6 (expired ones included), with batch lookups."""
        return self.blocklist.count(name)

    def dynamic_block_evictions(self) -> int:
        """Blocks evicted by a full table when blocks were added through block_add(_many) (the CLI's
        `block add` included): kept beside the pins, so every process adds to one total."""
        return self.blocklist.evictions()

    def block_delete(self, address: IPAddress) -> bool:
        return self.blocklist.delete(address)

    def blocks(self) -> list[DynamicBlock]:
        return self.blocklist.blocks()

    def sweep_expired_blocks(self) -> int:
        """Deletes expired dynamic blocks (the program already ignores them); returns how many."""
        return self.blocklist.sweep_expired()

    # ---- status -------------------------------------------------------------------------

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) for the active policy and the dynamic blocklist."""
        return self.adapter.map_fill()

    def program_info(self) -> ProgramInfo:
        """The attached program as the kernel reports it; empty for a detached program."""
        return self.loader.program_info()

    def status(self) -> FastPathStatus:
        settings = self.settings()
        modes = {v: k for k, v in self.abi.modes.items()}
        # The program's keys (when attached) sit between the policy's and the maps' in the JSON.
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
