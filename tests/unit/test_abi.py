"""The ABI has one definition (bpf/include/hyperion_abi.h); Python reads it from the object's BTF.

These tests fail if the compiled object and the header disagree (a stale
build), or if Python code names a map, verdict or reason the object lacks.
"""

from __future__ import annotations

import ctypes
import re

import pytest

from hyperion.errors import AbiError
from hyperion.fastpath import loader
from hyperion.kernel.abi import Abi, packer
from hyperion.policy import compiler
from tests.support.paths import BPF_DIR

HEADER = BPF_DIR / "include" / "hyperion_abi.h"


def header_enum(name: str) -> dict[str, int]:
    """Explicitly numbered enumerators of one enum in the header (the header numbers them all)."""
    body = re.search(rf"enum {name} {{(.*?)}};", HEADER.read_text(), re.S)
    assert body, f"enum {name} not in {HEADER}"
    return {m[0]: int(m[1]) for m in re.findall(r"^\s*(HYP_\w+)\s*=\s*(\d+),", body[1], re.M)}


@pytest.mark.parametrize("enum", ["hyp_verdict", "hyp_reason", "hyp_mode", "hyp_fallback", "hyp_policy_map"])
def test_object_enums_match_the_header(abi: Abi, enum: str) -> None:
    in_object = abi.btf.enum(enum)
    in_header = header_enum(enum)
    assert in_header, f"no numbered enumerators parsed from enum {enum}"
    assert {k: v for k, v in in_object.items() if not k.endswith("__MAX")} == in_header


def test_reasons_are_dense_and_labels_unique(abi: Abi) -> None:
    assert sorted(abi.reasons) == list(range(abi.reason_count))
    assert len(set(abi.reasons.values())) == abi.reason_count
    assert sorted(abi.verdicts) == list(range(abi.verdict_count))


@pytest.mark.parametrize("struct_name,size", [
    ("hyp_counter", 16), ("hyp_config", 8), ("hyp_lpm_v4_key", 8), ("hyp_lpm_v6_key", 20),
    ("hyp_ip_v4_key", 4), ("hyp_ip_v6_key", 16), ("hyp_dyn_block", 16), ("hyp_class_key", 4),
    ("hyp_class_value", 16),
])
def test_struct_layouts_built_from_btf(abi: Abi, struct_name: str, size: int) -> None:
    cls = abi.btf.struct(struct_name)
    assert ctypes.sizeof(cls) == size


def test_lpm_key_layout_is_prefix_then_address(abi: Abi) -> None:
    assert abi.LpmV4Key.prefixlen.offset == 0 and abi.LpmV4Key.addr.offset == 4
    assert packer(abi.LpmV4Key).pack(24, bytes([192, 0, 2, 0])) == (24).to_bytes(4, "little") + b"\xc0\x00\x02\x00"


def test_every_map_python_uses_exists_in_the_object(abi: Abi) -> None:
    obj = loader.BpfObject(abi.object_path)
    try:
        names = {name for name, _ in obj.maps()}
        templates = obj.inner_templates()
    finally:
        obj.close()
    used = {"hyp_counters", "hyp_config", "hyp_settings", "hyp_dyn4", "hyp_dyn6", "xsk_map",
            compiler.CLASSES_MAP, *compiler.ALLOW[1:], *compiler.DROP_CIDRS[1:], *compiler.DROP_IPS[1:]}
    assert used <= names
    # Every generation map is a policy map and vice versa.
    assert set(templates) == set(abi.policy_maps.values())


def test_missing_btf_type_is_a_clear_error(abi: Abi) -> None:
    with pytest.raises(AbiError, match="no BTF type 'hyp_nonexistent'"):
        abi.btf.struct("hyp_nonexistent")


def test_capacities_sharing_a_value_are_all_kept(abi: Abi) -> None:
    assert abi.capacity["block_cidr"] == abi.capacity["event_ring_bytes"] == 262144
    assert {"allow", "block_cidr", "block_ip", "dyn_block", "classes", "class_stats", "event_ring_bytes",
            "queues", "generations"} <= set(abi.capacity)
