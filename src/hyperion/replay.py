"""`hyperion replay`: try a policy on a capture before deploying it.

Every packet of a pcap/pcapng runs through the real compiled XDP program with
BPF_PROG_TEST_RUN (no interface, no traffic). Packets the fast path would
redirect are then judged by the same native slow-path engine the AF_XDP
workers use (Rules.inspect). Nothing leaves the machine.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dpkt

from hyperion.daemon.events import EventDecoder, EventReader, EventRecord
from hyperion.errors import HyperionError
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import MIN_FRAME, run_xdp
from hyperion.policy.compiler import PolicyCompiler, fast_path_rule_name
from hyperion.policy.model import Policy
from hyperion.slowpath.rules import ACTION_NAMES, compile_rules

# Fast-path reasons -> the stage that decided.
STAGES = {
    "allowlist": "allowlist", "blocklist_cidr": "blocklist_cidr", "blocklist_ip": "blocklist_ip",
    "blocklist_dynamic": "blocklist_dynamic", "fragment": "fragment", "non_ip": "non_ip", "no_match": "default",
    "no_config": "default", "redirect_class": "redirect", "redirect_failed": "redirect",
    **{f"dns_{name}": "dns" for name in ("no_match", "drop", "nxdomain", "refused", "unanswerable", "allow", "alert",
                                         "malformed", "qdcount", "not_query")},
}
REDIRECTED = {"redirect_class", "redirect_failed"}


@dataclass(frozen=True)
class Verdict:
    index: int
    verdict: str
    stage: str
    reason: str
    rule: str | None


class CaptureError(HyperionError):
    """The capture cannot be read."""


LINKTYPE_ETHERNET = 1
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # a section header block


def read_frames(capture: Path) -> Iterator[bytes]:
    """Raw frames of a pcap or pcapng file (Ethernet link type), undissected."""
    try:
        stream = capture.open("rb")
    except OSError as exc:
        raise CaptureError(f"{capture}: cannot read capture: {exc.strerror}") from None
    with stream:
        try:
            magic = stream.read(4)
            stream.seek(0)
            reader = dpkt.pcapng.Reader(stream) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(stream)
        except (ValueError, dpkt.Error) as exc:  # dpkt says "invalid tcpdump header" and the like
            raise CaptureError(f"{capture}: cannot read capture: {exc}") from None
        linktype = reader.datalink()
        if linktype != LINKTYPE_ETHERNET:
            raise CaptureError(f"{capture}: link type {linktype}; only Ethernet captures can be replayed")
        try:
            for _timestamp, data in reader:
                yield bytes(data)
        except (ValueError, dpkt.Error) as exc:
            raise CaptureError(f"{capture}: truncated or corrupt capture: {exc}") from None


class Replayer:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.fastpath, self.prog_fd = FastPath.load_detached()
        try:
            self.fastpath.apply(PolicyCompiler(self.fastpath.abi, self.fastpath.capacities()).compile(policy))
            # Every drop reports its rule through the event ring: no budget in a replay.
            self.fastpath.set_event_rate(2**32 - 1)
            self._events: list[EventRecord] = []
            self._reader = EventReader(self.fastpath.maps["hyp_events"].fd, EventDecoder(self.fastpath.abi),
                                       self._events.append)
            self.slow = compile_rules(policy)
        except BaseException:
            self.fastpath.close()
            raise

    def close(self) -> None:
        self._reader.close()
        self.fastpath.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def judge(self, index: int, frame: bytes) -> Verdict:
        if len(frame) < MIN_FRAME:
            # The kernel refuses such frames before the program; on a wire the program would see them.
            return Verdict(index, "drop", "parse", "truncated_eth", None)
        before = self.fastpath.counters()
        run_xdp(self.prog_fd, frame)
        after = self.fastpath.counters()
        moved = [key for key, (packets, _) in after.items() if packets != before.get(key, (0, 0))[0]]
        if len(moved) != 1:
            raise HyperionError(f"packet {index}: expected one counter to move, saw {moved}")
        verdict, reason = moved[0]
        self._events.clear()
        self._reader.poll(0)
        rule_id = self._events[-1]["rule_id"] if self._events else 0
        rule = fast_path_rule_name(self.policy, reason, rule_id) if rule_id else None
        if reason in REDIRECTED or verdict == "would_redirect":
            # In production a worker would have it: judge it as the worker would.
            decision = self.slow.rules.inspect(frame)
            action = ACTION_NAMES[decision["action"]]
            slow_rule = self.slow.labels[decision["rule"]] if decision["rule"] is not None else None
            slow_reason = "malformed_dns" if decision["malformed_dns"] else "rule" if slow_rule else "no_match"
            return Verdict(index, action, "slowpath", slow_reason, slow_rule or rule)
        stage = STAGES.get(reason, "parse")
        return Verdict(index, verdict, stage, reason, rule)

    def replay(self, capture: Path) -> Iterator[Verdict]:
        for index, frame in enumerate(read_frames(capture)):
            yield self.judge(index, frame)


def summarize(verdicts: list[Verdict]) -> Counter[tuple[str, str, str]]:
    return Counter((v.verdict, v.stage, v.reason) for v in verdicts)


def as_json(verdict: Verdict) -> dict[str, Any]:
    return asdict(verdict)


def check_capture(path: str) -> Path:
    capture = Path(path)
    if not capture.is_file() or not os.access(capture, os.R_OK):
        raise CaptureError(f"{path}: no such readable file")
    return capture
