"""The lab tools: `hyperion sandbox` (pair and gateway topologies, idempotent, crash-safe cleanup)
and `hyperion generate` (live frames: UDP, TCP SYN, DNS, IPv4/IPv6, sources spread exactly)."""

from __future__ import annotations

import pytest

from hyperion.errors import HyperionError
from hyperion.lab.generator import Generator, TrafficSpec, source_addresses
from hyperion.lab.sandbox import HOST_V4, HOST_V6


def test_sources_are_documentation_addresses_only() -> None:
    assert source_addresses("2001:db8:ff00::/126") == ["2001:db8:ff00::", *(f"2001:db8:ff00::{i}" for i in range(1, 4))]
    assert source_addresses("198.51.100.7", 3) == ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
    with pytest.raises(HyperionError, match="documentation"):
        source_addresses("203.0.113.250", 10)  # runs past 203.0.113.255
    with pytest.raises(HyperionError, match="documentation"):
        TrafficSpec(dst="2001:db9::1", dst_mac="02:00:00:00:00:02", sources=("2001:db8::1",)).frames()


def test_traffic_spec_builds_one_template_per_dns_name() -> None:
    spec = TrafficSpec(dst=HOST_V4, dst_mac="02:00:00:00:00:02", sources=("192.0.2.2",), protocol="dns",
                       dns_names=("a.test", "b.test"))
    frames = spec.frames()
    assert len(frames) == 2 and b"\x01a\x04test" in frames[0] and b"\x01b\x04test" in frames[1]
    assert int.from_bytes(frames[0][36:38], "big") == 53  # UDP destination port
    syn = TrafficSpec(dst=HOST_V6, dst_mac="02:00:00:00:00:02", sources=("2001:db8:1::2",), protocol="tcp",
                      size=128).frames()[0]
    assert len(syn) == 128 and syn[20] == 6 and syn[54 + 13] == 0x02  # IPv6 next header TCP, flags SYN


def test_every_load_loop_is_bounded() -> None:
    with pytest.raises(HyperionError, match="count"):
        Generator.send(object.__new__(Generator), [b"x" * 64], count=10**9)  # type: ignore[arg-type]
    with pytest.raises(HyperionError, match="duration"):
        Generator.send(object.__new__(Generator), [b"x" * 64], duration=3600)  # type: ignore[arg-type]
    with pytest.raises(HyperionError, match="count, a duration"):
        Generator.send(object.__new__(Generator), [b"x" * 64])  # type: ignore[arg-type]
