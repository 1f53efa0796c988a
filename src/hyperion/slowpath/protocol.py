"""The interface between the supervisor and its workers: the control block, the rules blob, message limits."""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import select
import struct
import zlib
from typing import Any

from hyperion import _slowpath

REPORT_INTERVAL = 0.1


CONTROL_BYTES = 4096


# A rules blob: magic, the length of a JSON header, the header, then the databases' bytes in the
# order the header lists their lengths.
RULES_MAGIC = b"HYPRULE1"


_RULES_HEAD = struct.Struct("<8sI")


REQUIRED_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


RULES_MESSAGE_MAX = 4096  # a datagram on the rules socket: one small JSON object


PIPE_MESSAGE_MAX = select.PIPE_BUF  # a stdin command: written in one piece, or not at all


def encode_rules(generation: int, spec: list[Any], databases: _slowpath.SerializedDatabases) -> bytes:
    """What a worker needs to build a generation's Rules without compiling anything."""
    dns_db, class_dbs = databases
    body = b"".join([dns_db or b"", *(db or b"" for db in class_dbs)])
    # Hyperscan checks a database's header, not its contents: the checksum does.
    header = json.dumps({"generation": generation, "spec": spec, "crc32": zlib.crc32(body),
                         "databases": [None if dns_db is None else len(dns_db),
                                       [None if db is None else len(db) for db in class_dbs]]},
                        separators=(",", ":")).encode()
    return b"".join([_RULES_HEAD.pack(RULES_MAGIC, len(header)), header, body])


def decode_rules(blob: bytes) -> dict[str, Any]:
    """A rules blob -> a "rules" command (spec, generation, serialized databases); ValueError if malformed."""
    try:
        magic, size = _RULES_HEAD.unpack_from(blob)
        if magic != RULES_MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        header = json.loads(blob[_RULES_HEAD.size:_RULES_HEAD.size + size])
        offset = _RULES_HEAD.size + size
        if zlib.crc32(blob[offset:]) != header["crc32"]:
            raise ValueError("checksum of the databases does not match")
        dns_len, class_lens = header["databases"]

        def take(length: int | None) -> bytes | None:
            nonlocal offset
            if length is None:
                return None
            if length < 0 or offset + length > len(blob):
                raise ValueError("a database runs past the end")
            offset += length
            return blob[offset - length:offset]

        databases = (take(dns_len), [take(n) for n in class_lens])
        if offset != len(blob):
            raise ValueError(f"{len(blob) - offset} bytes after the last database")
        return {"cmd": "rules", "generation": int(header["generation"]), "spec": header["spec"],
                "databases": databases}
    except (struct.error, KeyError, TypeError) as exc:
        raise ValueError(f"rules blob: malformed ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise ValueError(f"rules blob: {exc}") from None


def read_rules_memfd(fd: int) -> dict[str, Any]:
    """A sealed memfd's rules blob (sealed: it cannot change while it is parsed). Closes fd."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            raise ValueError(f"rules memfd is not sealed (seals {seals:#x})")
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
            return decode_rules(bytes(view))
    finally:
        os.close(fd)


class ControlLayout(ctypes.Structure):
    """struct sp_control (native/slowpath/control.h); tests/test_limits.py checks every offset
    against the extension's CONTROL_LAYOUT (offsetof in C)."""

    _fields_ = [
        ("heartbeat_ns", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("loops", ctypes.c_uint64),
        ("stat_count", ctypes.c_uint64),
        ("stats", ctypes.c_uint64 * len(_slowpath.STAT_NAMES)),
        ("latency", ctypes.c_uint64 * len(_slowpath.LATENCY_BOUNDS)),
    ]


class ControlBlock:
    """The one place Python reads and writes the control block shared by a supervisor and its worker:
    the native loop's heartbeat, the fault-injection flags, and its counters, which the loop writes
    as it handles packets (so a scrape sees every packet already answered)."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer

    def _word(self, name: str) -> int:
        offset = getattr(ControlLayout, name).offset
        return int.from_bytes(self.buffer[offset:offset + 8], "little")

    def heartbeat_ns(self) -> int:
        return self._word("heartbeat_ns")

    def toggle_flag(self, flag: int) -> None:
        offset = ControlLayout.flags.offset
        self.buffer[offset:offset + 8] = (self._word("flags") ^ flag).to_bytes(8, "little")

    def counters(self) -> dict[str, Any]:
        """The worker's counters and latency buckets, as Queue.stats() names them (empty before the
        worker's Queue exists)."""
        raw = self.buffer[:ctypes.sizeof(ControlLayout)]
        if len(raw) < ctypes.sizeof(ControlLayout):
            return {}
        layout = ControlLayout.from_buffer_copy(raw)
        if layout.stat_count != len(_slowpath.STAT_NAMES):
            return {}
        stats: dict[str, Any] = dict(zip(_slowpath.STAT_NAMES, layout.stats, strict=True))
        stats["latency_buckets"] = list(zip(_slowpath.LATENCY_BOUNDS, layout.latency, strict=True))
        return stats
