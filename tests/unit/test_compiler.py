"""Policy -> map images, without the kernel: layouts, rule ids, capacity refusals."""

from __future__ import annotations

import pytest

from hyperion.errors import CapacityError
from hyperion.kernel.abi import Abi
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy

POLICY = """
fast_path:
  allow_cidrs: ["192.0.2.0/28", "2001:db8:1::/48"]
  drop_ips: ["198.51.100.42", "198.51.100.42", "2001:db8::1"]
  drop_cidrs: ["203.0.113.0/24"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
    - {protocol: 6, port: 8080}
"""


def test_images_hold_packed_keys_and_rule_ids(abi: Abi) -> None:
    compiled = PolicyCompiler(abi, {}).compile(parse_policy(POLICY))
    assert compiled.mode == abi.modes["enforce"]
    assert compiled.entry_counts() == {
        "hyp_allow4": 1, "hyp_allow6": 1, "hyp_bcidr4": 1, "hyp_bcidr6": 0,
        "hyp_bip4": 1, "hyp_bip6": 1, "hyp_classes": 2, "hyp_dns_short": 0, "hyp_dns_long": 0,
    }
    allow4 = compiled.images["hyp_allow4"]
    assert allow4.keys == (28).to_bytes(4, "little") + bytes([192, 0, 2, 0])
    assert allow4.values == (1).to_bytes(4, "little")
    assert compiled.images["hyp_bip4"].keys == bytes([198, 51, 100, 42])
    classes = compiled.images["hyp_classes"]
    # (port, protocol, pad) -> (class id, fallback, flags, reserved): udp/53 is a DNS class with nothing
    # for the slow path (no rules), tcp/8080 an ordinary redirect class
    assert classes.keys == (53).to_bytes(2, "little") + b"\x11\x00" + (8080).to_bytes(2, "little") + b"\x06\x00"
    assert classes.values == (1).to_bytes(4, "little") + (abi.fallbacks["drop"]).to_bytes(4, "little") + \
        (abi.class_flags["dns"]).to_bytes(4, "little") + bytes(4) + \
        (2).to_bytes(4, "little") + (abi.fallbacks["pass"]).to_bytes(4, "little") + \
        (abi.class_flags["slowpath"]).to_bytes(4, "little") + bytes(4)


def test_monitor_mode_compiles(abi: Abi) -> None:
    assert PolicyCompiler(abi, {}).compile(parse_policy("mode: monitor")).mode == abi.modes["monitor"]


def test_policy_larger_than_a_map_is_refused(abi: Abi) -> None:
    ips = ", ".join(f'"198.51.100.{i}"' for i in range(1, 6))
    policy = parse_policy(f"fast_path:\n  drop_ips: [{ips}]\n")
    with pytest.raises(CapacityError, match=r"fast_path.drop_ips: 5 entries for map hyp_bip4, .* at most 4"):
        PolicyCompiler(abi, {"hyp_bip4": 4}).compile(policy)
    assert PolicyCompiler(abi, {"hyp_bip4": 5}).compile(policy).entry_counts()["hyp_bip4"] == 5
