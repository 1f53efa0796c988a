"""ctypes bindings over the system libbpf (libbpf.so.1).

Only what the control plane uses is bound. Every call that can fail is
wrapped so that failure raises BpfError with the errno and the operation
named, never a silent negative return.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from functools import cache
from typing import Any

from hyperion.errors import BpfError

c_size_t = ctypes.c_size_t
c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_int = ctypes.c_int
c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p

# From <linux/bpf.h>; stable kernel UAPI.
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_XDP = 37  # enum bpf_attach_type
BPF_TCX_INGRESS = 46  # enum bpf_attach_type (Linux 6.6): TC ingress through a BPF link
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_XSKMAP = 17

# XDP actions (enum xdp_action).
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)


class BpfMapCreateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("btf_fd", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("inner_map_fd", c_u32),
        ("map_flags", c_u32),
        ("map_extra", c_u64),
        ("numa_node", c_u32),
        ("map_ifindex", c_u32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_u64), ("flags", c_u64)]


class BpfLinkCreateOpts(ctypes.Structure):
    # Only the leading fields; libbpf reads no further than `sz`.
    _fields_ = [("sz", c_size_t), ("flags", c_u32)]


class BpfTestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context passed to BPF_PROG_TEST_RUN."""

    _fields_ = [
        ("data", c_u32),
        ("data_end", c_u32),
        ("data_meta", c_u32),
        ("ingress_ifindex", c_u32),
        ("rx_queue_index", c_u32),
        ("egress_ifindex", c_u32),
    ]


class BpfMapInfo(ctypes.Structure):
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("pad", c_u32),
        ("map_extra", c_u64),
    ]


class BpfLinkInfo(ctypes.Structure):
    # type, id, prog_id, then the union; for XDP links its first u32 is ifindex.
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("prog_id", c_u32),
        ("pad", c_u32),
        ("union_first", c_u32),
        ("union_rest", ctypes.c_uint8 * 60),
    ]


class BpfProgInfo(ctypes.Structure):
    # Leading fields of struct bpf_prog_info that status reports.
    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_u32),
        ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64),
        ("xlated_prog_insns", c_u64),
        ("load_time", c_u64),
        ("created_by_uid", c_u32),
        ("nr_map_ids", c_u32),
        ("map_ids", c_u64),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_u32),
        ("gpl_compatible_etc", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32),
        ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64),
        ("jited_func_lens", c_u64),
        ("btf_id", c_u32),
        ("func_info_rec_size", c_u32),
        ("func_info", c_u64),
        ("nr_func_info", c_u32),
        ("nr_line_info", c_u32),
        ("line_info", c_u64),
        ("jited_line_info", c_u64),
        ("nr_jited_line_info", c_u32),
        ("line_info_rec_size", c_u32),
        ("jited_line_info_rec_size", c_u32),
        ("nr_prog_tags", c_u32),
        ("prog_tags", c_u64),
        ("run_time_ns", c_u64),
        ("run_cnt", c_u64),
        ("recursion_misses", c_u64),
        ("verified_insns", c_u32),
        ("attach_btf_obj_id", c_u32),
        ("attach_btf_id", c_u32),
    ]


# name -> (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__is_internal": (ctypes.c_bool, [c_void_p]),
    "bpf_map__set_pin_path": (c_int, [c_void_p, c_char_p]),
    "bpf_map__inner_map": (c_void_p, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__max_entries": (c_u32, [c_void_p]),
    "bpf_map__map_flags": (c_u32, [c_void_p]),
    "bpf_map__key_size": (c_u32, [c_void_p]),
    "bpf_map__value_size": (c_u32, [c_void_p]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_u32, c_u32, c_u32, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_u64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, ctypes.POINTER(c_u32), c_void_p]),
    "bpf_map_lookup_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_u32),
                                     c_void_p]),
    "bpf_map_get_fd_by_id": (c_int, [c_u32]),
    "bpf_prog_get_fd_by_id": (c_int, [c_u32]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_u32)]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_prog_test_run_opts": (c_int, [c_int, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, c_void_p, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__free": (None, [c_void_p]),
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__free": (None, [c_void_p]),
    "btf__type_cnt": (c_u32, [c_void_p]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_u32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_u32]),
}


@cache
def lib() -> ctypes.CDLL:
    """The loaded libbpf with argument types declared."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        handle = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError(f"cannot load libbpf ({name}): {exc}; install libbpf1") from exc
    for func_name, (restype, argtypes) in _SIGNATURES.items():
        func = getattr(handle, func_name)
        func.restype = restype
        func.argtypes = argtypes
    return handle


def _fail(what: str, rc: int | None = None) -> BpfError:
    err = -rc if rc is not None and rc < 0 else ctypes.get_errno()
    return BpfError(f"{what}: {os.strerror(err)} (errno {err})", err)


def check(rc: int, what: str) -> int:
    """Returns rc, or raises BpfError if libbpf reported failure (rc < 0)."""
    if rc < 0:
        raise _fail(what, rc)
    return rc


def check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise _fail(what)
    return ptr


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_get(path: str) -> int:
    return check(lib().bpf_obj_get(path.encode()), f"bpf_obj_get({path})")


def obj_pin(fd: int, path: str) -> None:
    check(lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin({path})")


def info_by_fd(fd: int, info: ctypes.Structure, what: str) -> None:
    length = c_u32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)), what)


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    info_by_fd(fd, info, "map info")
    return info


def link_info(fd: int) -> BpfLinkInfo:
    info = BpfLinkInfo()
    info_by_fd(fd, info, "link info")
    return info


def prog_info(fd: int) -> BpfProgInfo:
    info = BpfProgInfo()
    info_by_fd(fd, info, "program info")
    return info


def map_create(
    map_type: int, name: str, key_size: int, value_size: int, max_entries: int, flags: int
) -> int:
    opts = BpfMapCreateOpts(sz=ctypes.sizeof(BpfMapCreateOpts), map_flags=flags)
    rc = lib().bpf_map_create(
        map_type, name.encode(), key_size, value_size, max_entries, ctypes.byref(opts)
    )
    return check(rc, f"bpf_map_create({name})")


class MapFd:
    """Raw byte-level access to a map by file descriptor."""

    def __init__(self, fd: int, key_size: int, value_size: int, name: str = "") -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        self.name = name

    @classmethod
    def from_fd(cls, fd: int) -> MapFd:
        info = map_info(fd)
        return cls(fd, info.key_size, info.value_size, info.name.decode())

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        rc = lib().bpf_map_update_elem(self.fd, key, value, flags)
        check(rc, f"update of map {self.name}")

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        buf = ctypes.create_string_buffer(value_size or self.value_size)
        rc = lib().bpf_map_lookup_elem(self.fd, key, buf)
        if rc < 0:
            if -rc == 2:  # ENOENT
                return None
            raise _fail(f"lookup in map {self.name}", rc)
        return buf.raw

    def delete(self, key: bytes) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, key)
        if rc < 0:
            if -rc == 2:
                return False
            raise _fail(f"delete from map {self.name}", rc)
        return True

    def iter_keys(self) -> Iterator[bytes]:
        prev: bytes | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            rc = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if rc < 0:
                if -rc == 2:
                    return
                raise _fail(f"iteration of map {self.name}", rc)
            prev = nxt.raw
            yield prev

    def update_batch(self, keys: bytes, values: bytes, count: int) -> None:
        """Writes count entries from packed key and value arrays in one syscall."""
        if count == 0:
            return
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        done = c_u32(count)
        rc = lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(done), ctypes.byref(opts))
        check(rc, f"batch update of map {self.name} ({done.value}/{count} written)")

    def lookup_batch(self, max_count: int, value_size: int | None = None) -> tuple[bytes, bytes, int]:
        """Up to max_count entries as packed key and value arrays, in as few syscalls as the kernel
        allows (BPF_MAP_LOOKUP_BATCH); returns (keys, values, count). value_size: per-CPU maps'
        values are the rounded-up value size times the possible CPUs."""
        vsize = value_size or self.value_size
        keys = ctypes.create_string_buffer(max(1, self.key_size * max_count))
        values = ctypes.create_string_buffer(max(1, vsize * max_count))
        # The batch token is a key for arrays and a bucket index for hashes: room for either.
        token_in = ctypes.create_string_buffer(max(8, self.key_size))
        token_out = ctypes.create_string_buffer(max(8, self.key_size))
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        total, first = 0, True
        while total < max_count:
            count = c_u32(max_count - total)
            rc = lib().bpf_map_lookup_batch(
                self.fd, None if first else token_in, token_out,
                ctypes.byref(keys, total * self.key_size), ctypes.byref(values, total * vsize),
                ctypes.byref(count), ctypes.byref(opts))
            if rc < 0 and -rc != 2:  # ENOENT: no more entries (count says how many came with it)
                raise _fail(f"batch lookup in map {self.name}", rc)
            total += count.value
            if rc < 0:
                break
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False
        return keys.raw[: total * self.key_size], values.raw[: total * vsize], total

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
