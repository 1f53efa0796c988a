"""Type stub of the C extension (native/slowpath/module.c)."""

from collections.abc import Callable
from typing import Any, Literal, TypedDict

DROP: int
PASS: int
ALLOW: int  # the same native action as PASS
FRAG_DROP: int  # enum hyp_dns_fragment_policy
FRAG_JUDGE: int
ALERT: int
NXDOMAIN: int
REFUSE: int
BLOCK_SOURCE: int
EXACT: int
SUFFIX: int
UMEM_FRAME_SIZE: int
VLAN_MAX_DEPTH: int  # parser limits packet.c was built with (bpf/include/hyperion_parser.h)
IPV6_EXT_MAX: int
DNS_TCP_XDP: int  # enum hyp_dns_tcp_state
DNS_TCP_SLOWPATH: int
DNS_TCP_ENDED: int
STAT_NAMES: tuple[str, ...]
LATENCY_BOUNDS: tuple[float, ...]
CONTROL_LAYOUT: dict[str, int]
EVENT_FIELDS: tuple[str, ...]
RULE_SPEC_FIELDS: tuple[str, ...]

def parse_dns(message: bytes, /) -> tuple[str, int] | None: ...
def compile_count() -> int: ...

# Rules.serialize(): the DNS regex database and one per signature class (None where a set is empty).
SerializedDatabases = tuple[bytes | None, list[bytes | None]]

def complete_checksum(
    frame: bytes, /
) -> tuple[Literal["not_parsed", "not_checked", "valid", "absent", "completed", "bad"], bytes]: ...

class Rules:
    def __init__(
        self,
        rules: list[tuple[int, int, float]],
        names: list[tuple[int, int, str]],
        dns_regex: list[tuple[int, str]],
        classes: list[tuple[int, int, list[tuple[int, str]]]],
        malformed_action: int = ...,
        never_block: list[tuple[int, str, str]] = ...,
        block_limits: list[int] = ...,
        dns_classes: list[tuple[int, int]] = ...,
        dns_fragments: int = ...,
        databases: SerializedDatabases | None = ...,
    ) -> None: ...
    def serialize(self) -> SerializedDatabases: ...
    def inspect(self, frame: bytes, /) -> dict[str, Any]: ...
    def hits(self) -> list[int]: ...
    def matched(self) -> list[tuple[int, int]]: ...
    def never_blocked(self, address: bytes, /) -> bool: ...
    def block_limits(self) -> list[int]: ...

class Queue:
    def __init__(
        self,
        ifname: str,
        queue_id: int,
        xsk_map_fd: int,
        rules: Rules,
        dyn4_fd: int = ...,
        dyn6_fd: int = ...,
        deliver_fd: int = ...,
        frames: int = ...,
        ring_size: int = ...,
        zerocopy: bool = ...,
        events: bool = ...,
        inspect: bool = ...,
        control: Any = ...,
        dns_tcp_fd: int = ...,
        deliver_frames: bool = ...,
    ) -> None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def set_rules(self, rules: Rules, /) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def drain_events(self) -> list[tuple[int | None, int, int, int, int, int, int, int, bytes, bytes, str]]: ...
    def register(self) -> None: ...
    def fileno(self) -> int: ...

class TcpSegmentDecision(TypedDict):
    """DnsTcpStreams.segment(): what the workers do with one TCP segment of a DNS class."""

    verdict: Literal["deliver", "drop", "answer"]
    cause: Literal["no_data", "data", "midstream", "out_of_order", "ended", "rule"]
    action: int | None      # cause "rule": the deciding message's action
    rule: int | None        # its rule index (None: malformed)
    malformed: bool
    messages: int           # whole messages judged in this segment
    qname: str | None
    answer: bytes | None    # verdict "answer": the in-stream answer frame (AF_XDP TX)

class DnsTcpStreams:
    def __init__(
        self,
        rules: Rules,
        *,
        capacity: int = ...,
        idle_timeout: float = ...,
        max_message: int = ...,
        dns_tcp_fd: int = ...,
        handoff: Callable[[bytes], tuple[int, int] | None] | None = ...,
        established: Callable[[], bool] | None = ...,
    ) -> None: ...
    def segment(self, frame: bytes, now: float | None = ...) -> TcpSegmentDecision: ...
    def set_rules(self, rules: Rules, /) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def __len__(self) -> int: ...
