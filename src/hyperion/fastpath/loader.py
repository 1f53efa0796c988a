"""The loader: opens the BPF object, loads it, pins its maps, attaches (links) and detaches it.

State lives in bpffs under /sys/fs/bpf/hyperion/<netns>_<ifname>/: every map
pinned by its name and the XDP link as `link`. Because the link is pinned,
the program stays attached when the control plane exits; a restarted control
plane (or the CLI) opens the same pins and sees the same counters.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

from hyperion.errors import AttachError, BpfError, HyperionError, NotAttachedError
from hyperion.kernel import libbpf
from hyperion.kernel.abi import Abi, load_abi
from hyperion.kernel.netdev import ifindex_of, netns_inode

PIN_ROOT = Path(os.environ.get("HYPERION_PIN_ROOT", "/sys/fs/bpf/hyperion"))
# Beside the pins (bpffs holds only BPF objects): per-interface state files and owner locks.
STATE_ROOT = Path(os.environ.get("HYPERION_STATE_ROOT", "/run/hyperion"))
PROGRAM_NAME = "hyperion_xdp"
LINK_PIN = "link"

AttachMode = Literal["native", "generic"]
ATTACH_MODES: tuple[AttachMode, ...] = ("native", "generic")


class ProgramInfo(TypedDict, total=False):
    """The attached program as the kernel reports it (`hyperion status`); empty for a detached one."""

    program_id: int
    link_id: int
    ifindex: int
    xlated_bytes: int
    jited_bytes: int
    verified_insns: int
    attach_mode: str | None


def pin_dir_for(ifname: str, root: Path | None = None) -> Path:
    """One directory per (network namespace, interface): the same name in two namespaces never collides."""
    return (root or PIN_ROOT) / f"ns{netns_inode()}_{ifname}"


def state_dir_for(pin_dir: Path) -> Path:
    """The interface's state directory beside its pins (files bpffs cannot hold)."""
    return STATE_ROOT / pin_dir.name


@dataclass(frozen=True)
class InnerTemplate:
    """Shape of the inner maps of one generation (outer) map, from the object."""

    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


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


class BpfLoader:
    """The program of one fast path: its loaded object (when this process loaded it), its map fds,
    and on an interface its pins and link. FastPath builds its map adapter from map_fds."""

    def __init__(self, abi: Abi, map_fds: dict[str, int], templates: dict[str, InnerTemplate],
                 pin_dir: Path | None = None, ifname: str | None = None,
                 owned_object: BpfObject | None = None) -> None:
        self.abi = abi
        self.map_fds = map_fds
        self.templates = templates
        self.pin_dir = pin_dir
        self.ifname = ifname
        self._object = owned_object
        self.linked = pin_dir is not None  # opened from pins: attached; prepare() clears it until link()
        self._mode: AttachMode = "native"
        self._ifindex = 0

    @classmethod
    def load_detached(cls, object_path: Path | None = None) -> tuple[BpfLoader, int]:
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
    def prepare(cls, ifname: str, mode: str = "native", object_path: Path | None = None,
                pin_root: Path | None = None) -> BpfLoader:
        """Loads the program and creates and pins its maps, without attaching it (link() does);
        or opens the attachment already pinned for ifname (then `linked` is already true)."""
        if mode not in ATTACH_MODES:
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
            loader = cls(abi, obj.map_fds(), templates, pin_dir, ifname, owned_object=obj)
        except BaseException:
            obj.close()
            if not (pin_dir / LINK_PIN).exists():
                _remove_pins(pin_dir)
            raise
        loader.linked = False
        loader._mode = mode
        loader._ifindex = ifindex
        return loader

    @classmethod
    def open(cls, ifname: str, object_path: Path | None = None, pin_root: Path | None = None) -> BpfLoader:
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

    def discard_unlinked(self) -> None:
        """After close(): removes the pins and state of a program that was never linked (nothing else
        used them); an attached one keeps everything."""
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

    def program_info(self) -> ProgramInfo:
        """The pinned link's program; empty without pins (a detached program)."""
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

    def close(self) -> None:
        """Closes the loaded object (the map fds belong to the map adapter)."""
        if self._object is not None:
            self._object.close()
            self._object = None

    @staticmethod
    def detach(ifname: str, pin_root: Path | None = None) -> bool:
        """Detaches the program and removes the interface's pins. False if nothing was attached."""
        return _detach_pin_dir(pin_dir_for(ifname, pin_root))


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
    """Detaches the link pinned in pin_dir and removes the pins and the state beside them."""
    state = state_dir_for(pin_dir)
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
        # The namespace goes away with its interfaces: their owner locks (hyperion.daemon.owner) too.
        for lock in STATE_ROOT.glob(f"{prefix}*.lock"):
            lock.unlink(missing_ok=True)
    return done


def _pinned_link_ifindex(pin_dir: Path) -> int:
    """The ifindex the link pinned in pin_dir attaches to; 0 without one or when it is defunct."""
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
    private_dir(pin_dir.parent)
    private_dir(pin_dir)


def private_dir(directory: Path, parents: bool = False) -> None:
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
