"""BPF_PROG_TEST_RUN: run an XDP program on given bytes, or as a live-frame generator."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from hyperion.kernel import libbpf

XDP_ACTIONS = {
    libbpf.XDP_ABORTED: "aborted",
    libbpf.XDP_DROP: "drop",
    libbpf.XDP_PASS: "pass",
    libbpf.XDP_TX: "tx",
    libbpf.XDP_REDIRECT: "redirect",
}
# The kernel refuses test frames shorter than an Ethernet header.
MIN_FRAME = 14


@dataclass(frozen=True)
class RunResult:
    action: str
    retval: int
    data_out: bytes
    duration_ns: int


def run_xdp(prog_fd: int, packet: bytes, repeat: int = 1, ingress_ifindex: int = 0,
            rx_queue_index: int = 0) -> RunResult:
    """Runs the program once (or repeat times) on packet; returns its XDP action and output frame.

    With ingress_ifindex (a device in this network namespace), the frame arrives on that device's
    rx_queue_index; the kernel refuses a queue the device does not have."""
    out = ctypes.create_string_buffer(max(len(packet), MIN_FRAME) + 512)
    data = ctypes.create_string_buffer(packet, len(packet))
    ctx = libbpf.XdpMd(data=0, data_end=len(packet), ingress_ifindex=ingress_ifindex,
                       rx_queue_index=rx_queue_index)
    opts = libbpf.BpfTestRunOpts(
        sz=ctypes.sizeof(libbpf.BpfTestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(packet),
        data_out=ctypes.cast(out, ctypes.c_void_p),
        data_size_out=len(out),
        repeat=repeat,
    )
    if ingress_ifindex:
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    libbpf.check(libbpf.lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return RunResult(
        XDP_ACTIONS.get(opts.retval, str(opts.retval)), opts.retval,
        out.raw[: opts.data_size_out], opts.duration,
    )


def run_live_frames(prog_fd: int, frame: bytes, ifindex: int, repeat: int, batch_size: int = 64) -> int:
    """Injects `repeat` copies of frame as if received on ifindex (BPF_F_TEST_XDP_LIVE_FRAMES).

    The program decides each frame's fate for real: XDP_TX sends it out of
    ifindex, so a program that returns XDP_TX turns this into a generator.
    Returns the kernel's reported duration in ns per repetition.
    """
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
    opts = libbpf.BpfTestRunOpts(
        sz=ctypes.sizeof(libbpf.BpfTestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(frame),
        ctx_in=ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=repeat,
        flags=libbpf.BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=batch_size,
    )
    libbpf.check(libbpf.lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "live-frames test run")
    return int(opts.duration)
