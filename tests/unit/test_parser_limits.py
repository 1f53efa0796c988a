"""The XDP parser and the slow path's parser share one header of limits and wire constants
(bpf/include/hyperion_parser.h). A limit overridden in one build only would split them: a frame
the fast path redirects (three VLAN tags, nine extension headers) would not parse in the worker.

Each built object reports what it was compiled with: the XDP object through its BTF (enum
hyp_parser_limit), the extension through module constants set in packet.c. Root-free.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType

from hyperion import _slowpath
from hyperion.kernel.abi import OBJECT_NAME, Abi, load_abi

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "bpf" / "include" / "hyperion_parser.h"
PARSERS = [ROOT / "bpf" / "lib" / "parsing.h", ROOT / "native" / "slowpath" / "packet.c"]


def split(abi: Abi, native: ModuleType) -> dict[str, tuple[int, int]]:
    """Limits on which the XDP object and the extension disagree: name -> (xdp, extension)."""
    extension = {"vlan_max_depth": native.VLAN_MAX_DEPTH, "ipv6_ext_max": native.IPV6_EXT_MAX}
    return {name: (abi.parser_limits.get(name, -1), value) for name, value in extension.items()
            if abi.parser_limits.get(name) != value}


def test_the_built_xdp_object_and_extension_parse_with_the_same_limits() -> None:
    abi = load_abi()
    assert set(abi.parser_limits) == {"vlan_max_depth", "ipv6_ext_max"}
    assert split(abi, _slowpath) == {}
    # QinQ (IEEE 802.1ad: two tags) must parse in both.
    assert abi.parser_limits["vlan_max_depth"] >= 2


def test_a_limit_overridden_in_one_build_only_is_caught(tmp_path: Path) -> None:
    """The guard above can fail: an XDP object built with -DHYP_VLAN_MAX_DEPTH=3 against the
    installed extension (built with the header's 2)."""
    override = _slowpath.VLAN_MAX_DEPTH + 1
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={tmp_path}",
                    f"EXTRA_BPF_CFLAGS=-DHYP_VLAN_MAX_DEPTH={override}", f"{tmp_path}/{OBJECT_NAME}"],
                   check=True, capture_output=True)
    overridden = Abi(tmp_path / OBJECT_NAME)
    assert split(overridden, _slowpath) == {"vlan_max_depth": (override, _slowpath.VLAN_MAX_DEPTH)}


def test_neither_parser_keeps_its_own_copy_of_a_limit_or_wire_constant() -> None:
    """The limits are defined once, and the parsers spell EtherTypes and the IPv6 fragment
    masks by name (a literal copy is where a split starts)."""
    defines = re.compile(r"^\s*#\s*define\s+(\w*(?:VLAN\w*(?:MAX|DEPTH)|EXT\w*MAX|MAX_(?:VLANS?|EXT)\w*))\b", re.M)
    literals = re.compile(r"0x(?:0800|86DD|8100|88A8|FFF8|1FFF|2000)\b", re.I)
    for path in [*PARSERS, *sorted((ROOT / "bpf").rglob("*.[ch]")), *sorted((ROOT / "native").rglob("*.[ch]"))]:
        if path == SHARED:
            continue
        text = path.read_text()
        assert defines.findall(text) == [], f"{path.relative_to(ROOT)} defines its own parser limit"
        if path in PARSERS:
            assert literals.findall(text) == [], f"{path.relative_to(ROOT)} spells a wire constant as a literal"
    assert {"HYP_VLAN_MAX_DEPTH", "HYP_IPV6_EXT_MAX"} <= set(defines.findall(SHARED.read_text()))
