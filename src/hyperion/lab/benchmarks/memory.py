"""Kernel memory of a program's maps: what `bpftool map show` reports as memlock.

The kernel reports each map's memory use in /proc/<pid>/fdinfo/<fd> ("memlock:"). A program's
maps are listed in its bpf_prog_info; the policy maps are map-in-maps, whose inner maps (the
blocklists themselves) are found by looking up each slot of the outer map.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from hyperion.kernel import libbpf

_MAP_IN_MAP = (libbpf.BPF_MAP_TYPE_ARRAY_OF_MAPS, 13)  # 13: BPF_MAP_TYPE_HASH_OF_MAPS
_MAX_MAPS = 64


def map_memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def program_map_ids(prog_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * _MAX_MAPS)()
    info = libbpf.BpfProgInfo()
    info.nr_map_ids = _MAX_MAPS
    info.map_ids = ctypes.addressof(ids)
    libbpf.info_by_fd(prog_fd, info, "program info")
    return list(ids[: min(info.nr_map_ids, _MAX_MAPS)])


def _by_id(map_id: int) -> int:
    return libbpf.check(libbpf.lib().bpf_map_get_fd_by_id(map_id), f"map {map_id}")


def program_map_memory(prog_fd: int) -> dict[str, Any]:
    """{"total_bytes", "inner_bytes", "maps": {name: bytes}}; inner maps are named outer[slot]."""
    maps: dict[str, int] = {}
    inner_total = 0
    for map_id in program_map_ids(prog_fd):
        fd = _by_id(map_id)
        try:
            info = libbpf.map_info(fd)
            name = info.name.decode() or f"id{map_id}"
            maps[name] = map_memlock(fd)
            if info.type in _MAP_IN_MAP:
                outer = libbpf.MapFd(fd, info.key_size, info.value_size, name)
                for key in list(outer.iter_keys()):
                    value = outer.lookup(key)
                    if value is None:
                        continue
                    inner_fd = _by_id(int.from_bytes(value[:4], "little"))
                    try:
                        size = map_memlock(inner_fd)
                    finally:
                        os.close(inner_fd)
                    maps[f"{name}[{int.from_bytes(key[:4], 'little')}]"] = size
                    inner_total += size
        finally:
            os.close(fd)
    return {"total_bytes": sum(maps.values()), "inner_bytes": inner_total, "maps": maps}
