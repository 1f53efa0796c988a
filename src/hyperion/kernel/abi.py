"""The kernel/user ABI, read from the compiled object's BTF.

bpf/include/hyperion_abi.h is the only definition of verdicts, reasons,
capacities and map layouts. This module reads them back from the BTF that
clang emitted for that header, so Python never holds a hand-kept copy:
ctypes structures are built from the BTF members and offsets.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

from hyperion.errors import AbiError
from hyperion.kernel import libbpf

# BTF kinds (include/uapi/linux/btf.h).
_KIND_INT, _KIND_PTR, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION, _KIND_ENUM = 1, 2, 3, 4, 5, 6
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT = 8, 9, 10, 11
_KIND_TYPE_TAG, _KIND_ENUM64 = 18, 19
_MODIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}

_INT_CTYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}

OBJECT_NAME = "hyperion.bpf.o"


def default_object_path() -> Path:
    """The BPF object built with the package (see setup.py)."""
    path = Path(str(resources.files("hyperion") / "_bpf" / OBJECT_NAME))
    if not path.is_file():
        raise AbiError(f"BPF object not found at {path}: build the package (make build)")
    return path


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size_type", ctypes.c_uint32)]


class _BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class _BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32), ("nelems", ctypes.c_uint32)]


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_type: int
    vlen: int
    kflag: bool
    address: int


class Btf:
    """Read-only view of the BTF types in an ELF object, via libbpf's btf__parse."""

    def __init__(self, path: Path) -> None:
        lib = libbpf.lib()
        self._handle = libbpf.check_ptr(lib.btf__parse(str(path).encode(), None), f"BTF of {path}")
        self.path = path
        self._by_name: dict[tuple[int, str], int] = {}
        for type_id in range(1, lib.btf__type_cnt(self._handle)):
            t = self._type(type_id)
            if t.name:
                self._by_name.setdefault((t.kind, t.name), type_id)

    def _type(self, type_id: int) -> _Type:
        lib = libbpf.lib()
        address = lib.btf__type_by_id(self._handle, type_id)
        raw = _BtfType.from_address(address)
        name = lib.btf__name_by_offset(self._handle, raw.name_off) or b""
        return _Type(
            kind=(raw.info >> 24) & 0x1F,
            name=name.decode(),
            size_type=raw.size_type,
            vlen=raw.info & 0xFFFF,
            kflag=bool(raw.info >> 31),
            address=address,
        )

    def _name(self, offset: int) -> str:
        return (libbpf.lib().btf__name_by_offset(self._handle, offset) or b"").decode()

    def find(self, kind: int, name: str) -> int:
        try:
            return self._by_name[(kind, name)]
        except KeyError:
            raise AbiError(f"{self.path}: no BTF type {name!r} (kind {kind})") from None

    def enum(self, name: str) -> dict[str, int]:
        t = self._type(self.find(_KIND_ENUM, name))
        base = t.address + ctypes.sizeof(_BtfType)
        members = (_BtfEnum * t.vlen).from_address(base)
        return {self._name(m.name_off): int(m.val) for m in members}

    def ctype(self, type_id: int) -> Any:
        """A ctypes type with the exact size and layout of a BTF type."""
        t = self._type(type_id)
        if t.kind in _MODIFIERS:
            return self.ctype(t.size_type)
        if t.kind in (_KIND_INT, _KIND_ENUM):
            return _INT_CTYPES[t.size_type]
        if t.kind == _KIND_ARRAY:
            arr = _BtfArray.from_address(t.address + ctypes.sizeof(_BtfType))
            return self.ctype(arr.type) * arr.nelems
        if t.kind == _KIND_STRUCT:
            return self.struct_by_id(type_id)
        raise AbiError(f"{self.path}: BTF type {t.name or type_id} (kind {t.kind}) not supported")

    def struct(self, name: str) -> type[ctypes.Structure]:
        return self.struct_by_id(self.find(_KIND_STRUCT, name))

    @cache  # noqa: B019 - Btf objects live for the process; one class per struct.
    def struct_by_id(self, type_id: int) -> type[ctypes.Structure]:
        t = self._type(type_id)
        members = (_BtfMember * t.vlen).from_address(t.address + ctypes.sizeof(_BtfType))
        fields: list[tuple[str, Any]] = []
        position = 0
        for index, member in enumerate(members):
            bit_offset = member.offset & 0xFFFFFF if t.kflag else member.offset
            if bit_offset % 8 or (t.kflag and member.offset >> 24):
                raise AbiError(f"{self.path}: bitfield in struct {t.name} is not supported")
            offset = bit_offset // 8
            if offset > position:
                fields.append((f"_pad{index}", ctypes.c_uint8 * (offset - position)))
            member_type = self.ctype(member.type)
            fields.append((self._name(member.name_off), member_type))
            position = offset + ctypes.sizeof(member_type)
        if t.size_type > position:
            fields.append(("_tail", ctypes.c_uint8 * (t.size_type - position)))
        cls = type(t.name or f"btf_{type_id}", (ctypes.Structure,), {"_pack_": 1, "_fields_": fields})
        if ctypes.sizeof(cls) != t.size_type:
            raise AbiError(f"{self.path}: struct {t.name} is {t.size_type} bytes in BTF, "
                           f"{ctypes.sizeof(cls)} as built")
        return cls


_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def packer(cls: type[ctypes.Structure]) -> struct.Struct:
    """A struct.Struct packing the fields of a BTF-built structure in order.

    Integer fields take ints, byte arrays take bytes; padding and fields named
    reserved*/pad* (the ABI header's convention) are zero-filled. Much faster
    than filling ctypes objects for million-entry policies.
    """
    fmt = "="
    for field in cls._fields_:
        name, ctype = field[0], cast(Any, field[1])
        size = ctypes.sizeof(ctype)
        if name.startswith(("_", "reserved", "pad")):
            fmt += f"{size}x"
        elif isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            element: Any = ctype._type_
            if ctypes.sizeof(element) != 1:
                raise AbiError(f"field {cls.__name__}.{name}: only byte arrays can be packed")
            fmt += f"{size}s"
        else:
            fmt += _STRUCT_CODES[size]
    packed = struct.Struct(fmt)
    if packed.size != ctypes.sizeof(cls):
        raise AbiError(f"packer for {cls.__name__} is {packed.size} bytes, struct is {ctypes.sizeof(cls)}")
    return packed


def _labels(members: dict[str, int], prefix: str) -> dict[int, str]:
    """Enumerator values to metric labels: HYP_REASON_BAD_IHL -> 'bad_ihl'."""
    return {
        value: name[len(prefix):].lower()
        for name, value in members.items()
        if name.startswith(prefix) and not name.endswith("__MAX")
    }


def _by_label(members: dict[str, int], prefix: str) -> dict[str, int]:
    """Metric-style label -> enumerator value: HYP_DNS_NXDOMAIN -> 'nxdomain': 2."""
    return {label: value for value, label in _labels(members, prefix).items()}


class Abi:
    """Enums, capacities and struct layouts of one compiled object."""

    def __init__(self, object_path: Path) -> None:
        self.object_path = object_path
        self.btf = Btf(object_path)
        verdict = self.btf.enum("hyp_verdict")
        reason = self.btf.enum("hyp_reason")
        self.verdicts = _labels(verdict, "HYP_VERDICT_")
        self.reasons = _labels(reason, "HYP_REASON_")
        self.verdict_count = verdict["HYP_VERDICT__MAX"]
        self.reason_count = reason["HYP_REASON__MAX"]
        self.modes = {label: value for value, label in _labels(self.btf.enum("hyp_mode"), "HYP_MODE_").items()}
        self.fallbacks = {
            label: value for value, label in _labels(self.btf.enum("hyp_fallback"), "HYP_FALLBACK_").items()
        }
        # By name: capacities may share a value (block_cidr and event_ring_bytes are both 262144).
        self.capacity = {
            name[len("HYP_CAP_"):].lower(): value for name, value in self.btf.enum("hyp_capacity").items()
            if name.startswith("HYP_CAP_")
        }
        # hyp_policy_map index -> pinned map name.
        self.policy_maps = {
            value: f"hyp_{label}"
            for value, label in _labels(self.btf.enum("hyp_policy_map"), "HYP_PMAP_").items()
        }
        # The DNS stage: label -> value ('drop' -> HYP_DNS_DROP, 'exact' -> HYP_DNS_EXACT, ...).
        self.dns_actions = _by_label(self.btf.enum("hyp_dns_action"), "HYP_DNS_")
        self.dns_kinds = _by_label(self.btf.enum("hyp_dns_kind"), "HYP_DNS_")
        self.dns_rule_flags = _by_label(self.btf.enum("hyp_dns_rule_flag"), "HYP_DNS_F_")
        self.class_flags = _by_label(self.btf.enum("hyp_class_flag"), "HYP_CLASS_F_")
        self.dns_fragment_policies = _by_label(self.btf.enum("hyp_dns_fragment_policy"), "HYP_DNS_FRAG_")
        self.queue_states = _labels(self.btf.enum("hyp_queue_state_id"), "HYP_QSTATE_")
        self.queue_reasons = _labels(self.btf.enum("hyp_queue_reason"), "HYP_QREASON_")
        # Parser limits (bpf/include/hyperion_parser.h): 'vlan_max_depth', 'ipv6_ext_max'.
        self.parser_limits = {
            name[len("HYP_PLIMIT_"):].lower(): value for name, value in self.btf.enum("hyp_parser_limit").items()
        }
        self.Counter = self.btf.struct("hyp_counter")
        self.Config = self.btf.struct("hyp_config")
        self.Settings = self.btf.struct("hyp_settings")
        self.LpmV4Key = self.btf.struct("hyp_lpm_v4_key")
        self.LpmV6Key = self.btf.struct("hyp_lpm_v6_key")
        self.IpV4Key = self.btf.struct("hyp_ip_v4_key")
        self.IpV6Key = self.btf.struct("hyp_ip_v6_key")
        self.RuleValue = self.btf.struct("hyp_rule_value")
        self.DynBlock = self.btf.struct("hyp_dyn_block")
        self.ClassKey = self.btf.struct("hyp_class_key")
        self.ClassValue = self.btf.struct("hyp_class_value")
        self.DnsKeyShort = self.btf.struct("hyp_dns_key_short")
        self.DnsKey = self.btf.struct("hyp_dns_key")
        self.DnsRule = self.btf.struct("hyp_dns_rule")
        self.QueueCounter = self.btf.struct("hyp_queue_counter")
        self.ClassCounter = self.btf.struct("hyp_class_counter")
        self.EventState = self.btf.struct("hyp_event_state")
        self.Event = self.btf.struct("hyp_event")
        self.QueueState = self.btf.struct("hyp_queue_state")

    def verdict_value(self, label: str) -> int:
        return {v: k for k, v in self.verdicts.items()}[label]

    def reason_value(self, label: str) -> int:
        return {v: k for k, v in self.reasons.items()}[label]

    def counter_index(self, verdict: str, reason: str) -> int:
        """Index into hyp_counters, as the program computes it."""
        return self.verdict_value(verdict) * self.reason_count + self.reason_value(reason)


@cache
def load_abi(object_path: Path | None = None) -> Abi:
    return Abi(object_path or default_object_path())
