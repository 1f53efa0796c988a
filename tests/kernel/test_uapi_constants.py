"""The kernel UAPI constants Python spells out (hyperion.kernel.libbpf), checked against the running
kernel's own BTF (/sys/kernel/btf/vmlinux): the kernel is the reference, not a header copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion.kernel import libbpf
from hyperion.kernel.abi import Btf

VMLINUX = Path("/sys/kernel/btf/vmlinux")


@pytest.mark.parametrize(("name", "value"), [("BPF_XDP", libbpf.BPF_XDP),
                                             ("BPF_TCX_INGRESS", libbpf.BPF_TCX_INGRESS)])
def test_attach_types_match_the_kernel(kernel: None, name: str, value: int) -> None:
    assert Btf(VMLINUX).enum("bpf_attach_type")[name] == value
