"""The interface between the supervisor and its workers, Python side, defined here only: the control
block, the counters' names, the event record, the rule spec, the rules blob, and the messages on a
worker's stdin (commands) and stdout (messages). native/slowpath/control.h is the C side;
tests/unit/test_worker_protocol.py checks the two agree."""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import select
import struct
import zlib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

from hyperion import _slowpath
from hyperion.errors import HyperionError

REPORT_INTERVAL = 0.1


CONTROL_BYTES = 4096


# A rules blob: magic, the length of a JSON header, the header, then the databases' bytes in the
# order the header lists their lengths. 2: the spec is an object by field name (RuleSpec.to_json).
RULES_MAGIC = b"HYPRULE2"


_RULES_HEAD = struct.Struct("<8sI")


REQUIRED_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


RULES_MESSAGE_MAX = 4096  # a datagram on the rules socket: one small JSON object


# The fast path's maps a worker holds, as its command-line options (--NAME FD) -> the map. Optional
# ones (-1 when the program lacks the map): hyp_dns_tcp, where XDP hands TCP DNS connections over.
WORKER_MAP_FDS: dict[str, str] = {"xsk-map-fd": "xsk_map", "dyn4-fd": "hyp_dyn4", "dyn6-fd": "hyp_dyn6",
                                  "dns-tcp-fd": "hyp_dns_tcp"}
OPTIONAL_WORKER_MAPS: frozenset[str] = frozenset({"hyp_dns_tcp"})


PIPE_MESSAGE_MAX = select.PIPE_BUF  # a stdin command: written in one piece, or not at all


class ProtocolError(HyperionError, ValueError):
    """A worker message, command, rule spec or rules blob that does not follow this module (a
    ValueError too, as callers catch malformed input by that)."""


def encode_rules(generation: int, spec: RuleSpec, databases: _slowpath.SerializedDatabases) -> bytes:
    """What a worker needs to build a generation's Rules without compiling anything."""
    dns_db, class_dbs = databases
    body = b"".join([dns_db or b"", *(db or b"" for db in class_dbs)])
    # Hyperscan checks a database's header, not its contents: the checksum does.
    header = json.dumps({"generation": generation, "spec": spec.to_json(), "crc32": zlib.crc32(body),
                         "databases": [None if dns_db is None else len(dns_db),
                                       [None if db is None else len(db) for db in class_dbs]]},
                        separators=(",", ":")).encode()
    return b"".join([_RULES_HEAD.pack(RULES_MAGIC, len(header)), header, body])


def decode_rules(blob: bytes) -> RulesCommand:
    """A rules blob -> a "rules" command (generation, spec, serialized databases); ProtocolError (a
    ValueError) if malformed."""
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
        return RulesCommand(int(header["generation"]), RuleSpec.from_json(header["spec"]), databases)
    except (struct.error, KeyError, TypeError) as exc:
        raise ProtocolError(f"rules blob: malformed ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise ProtocolError(f"rules blob: {exc}") from None


def read_rules_memfd(fd: int) -> RulesCommand:
    """A sealed memfd's rules blob (sealed: it cannot change while it is parsed). Closes fd."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            raise ProtocolError(f"rules memfd is not sealed (seals {seals:#x})")
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
            return decode_rules(bytes(view))
    finally:
        os.close(fd)


# ---- the counters and the control block (control.h: SP_STATS, struct sp_control) ----------------


class StatName(StrEnum):
    """A worker's counters, in control.h's order (SP_STATS): Queue.stats() and the control block
    name them so."""

    RX = "rx"
    PASSED = "passed"
    DROPPED = "dropped"
    ALERTED = "alerted"
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"
    BLOCKED_SOURCES = "blocked_sources"
    MALFORMED_DNS = "malformed_dns"
    DNS_INSPECTED = "dns_inspected"
    NOT_PARSED = "not_parsed"
    TX_SENT = "tx_sent"
    TX_FAILED = "tx_failed"
    DELIVER_ERRORS = "deliver_errors"
    BLOCK_ERRORS = "block_errors"
    EVENTS_LOST = "events_lost"
    BATCHES = "batches"
    BUSY_NS = "busy_ns"
    BLOCK_NEVER_BLOCK = "block_never_block"
    BLOCK_RATE_LIMITED = "block_rate_limited"
    BLOCK_NOT_ESTABLISHED = "block_not_established"
    CSUM_COMPLETED = "csum_completed"
    CSUM_BAD = "csum_bad"
    # DNS over TCP (native/slowpath/tcp_stream.c): whole messages judged, payload segments dropped
    # because their connection is unknown (midstream), not at B (out_of_order) or ended; in-stream
    # answers; connections handed over by XDP (hyp_dns_tcp); connections forgotten idle or evicted.
    DNS_TCP_MESSAGES = "dns_tcp_messages"
    DNS_TCP_MIDSTREAM = "dns_tcp_midstream"
    DNS_TCP_OUT_OF_ORDER = "dns_tcp_out_of_order"
    DNS_TCP_ENDED = "dns_tcp_ended"
    DNS_TCP_ANSWERED = "dns_tcp_answered"
    DNS_TCP_HANDOFF = "dns_tcp_handoff"
    DNS_TCP_EXPIRED = "dns_tcp_expired"
    DNS_TCP_EVICTED = "dns_tcp_evicted"


STAT_NAMES: tuple[str, ...] = tuple(name.value for name in StatName)


LATENCY_BUCKETS = 10  # SP_LATENCY_BUCKETS; the bounds themselves are the extension's LATENCY_BOUNDS


class ControlLayout(ctypes.Structure):
    """struct sp_control (native/slowpath/control.h), read and written by field name."""

    _fields_ = [
        ("heartbeat_ns", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("loops", ctypes.c_uint64),
        ("stat_count", ctypes.c_uint64),
        ("stats", ctypes.c_uint64 * len(STAT_NAMES)),
        ("latency", ctypes.c_uint64 * LATENCY_BUCKETS),
    ]


class ControlBlock:
    """The one place Python reads and writes the control block shared by a supervisor and its worker:
    the native loop's heartbeat, the fault-injection flags, and its counters, which the loop writes
    as it handles packets (so a scrape sees every packet already answered)."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer

    def _snapshot(self) -> ControlLayout | None:
        """A copy of the whole block, read by field name (None while it is smaller than the struct).
        A copy, not a view: a view would keep the mapping exported, and the supervisor closes it
        when the worker ends."""
        raw = self.buffer[:ctypes.sizeof(ControlLayout)]
        if len(raw) < ctypes.sizeof(ControlLayout):
            return None
        return ControlLayout.from_buffer_copy(raw)

    def _word(self, name: str) -> int:
        snapshot = self._snapshot()
        return 0 if snapshot is None else int(getattr(snapshot, name))

    def heartbeat_ns(self) -> int:
        return self._word("heartbeat_ns")

    def toggle_flag(self, flag: int) -> None:
        offset = ControlLayout.flags.offset
        self.buffer[offset:offset + 8] = (self._word("flags") ^ flag).to_bytes(8, "little")

    def counters(self) -> dict[str, Any]:
        """The worker's counters and latency buckets, as Queue.stats() names them (empty before the
        worker's Queue exists)."""
        layout = self._snapshot()
        if layout is None or layout.stat_count != len(STAT_NAMES):
            return {}
        stats: dict[str, Any] = dict(zip(STAT_NAMES, layout.stats, strict=True))
        stats["latency_buckets"] = list(zip(_slowpath.LATENCY_BOUNDS, layout.latency, strict=True))
        return stats


# ---- the event record (control.h: SP_EVENT_FIELDS, struct sp_event) -----------------------------


class Event(NamedTuple):
    """A packet a rule matched (or malformed DNS), as the worker's loop recorded it."""

    rule: int | None       # rule index in its generation's rules, None for malformed DNS
    action: int            # _slowpath.DROP, ...
    malformed: int
    ip_version: int        # 0: not parsed (then the addresses mean nothing)
    protocol: int
    src_port: int
    dst_port: int
    qtype: int
    saddr: bytes           # 4 or 16 bytes
    daddr: bytes
    qname: str

    @classmethod
    def from_native(cls, record: tuple[Any, ...]) -> Event:
        """One tuple of Queue.drain_events(), its fields in control.h's order."""
        if len(record) != len(cls._fields):
            raise ProtocolError(f"event record: {len(record)} fields, expected {len(cls._fields)}")
        return cls(*record)

    def to_json(self) -> list[Any]:
        """For a report: in field order, the addresses in hex."""
        return [value.hex() if isinstance(value, bytes) else value for value in self]

    @classmethod
    def from_json(cls, data: Any) -> Event:
        if not isinstance(data, list) or len(data) != len(cls._fields):
            raise ProtocolError(f"event: expected a list of {len(cls._fields)} fields, got {data!r:.80}")
        values = dict(zip(cls._fields, data, strict=True))
        try:
            for name in ("saddr", "daddr"):
                values[name] = bytes.fromhex(values[name])
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"event: bad address ({exc})") from None
        return cls(**values)


# ---- the rule spec (control.h: SP_RULE_SPEC_FIELDS, the Rules constructor's arguments) ----------


RuleEntry = tuple[int, int, float]                 # action, qtype (0: any), block_source TTL in seconds
NameEntry = tuple[int, int, str]                   # rule index, _slowpath.EXACT | SUFFIX, name
PatternEntry = tuple[int, str]                     # rule index, Hyperscan pattern
ClassEntry = tuple[int, int, list[PatternEntry]]   # IP protocol, port, its signatures
RangeEntry = tuple[int, str, str]                  # IP version, first and last address in hex
DnsClassEntry = tuple[int, int]                    # IP protocol (UDP, or TCP: not parsed yet), DNS port


@dataclass(frozen=True)
class RuleSpec:
    """The Rules constructor's arguments, in its order: what a worker builds its Rules from, so it
    needs neither the policy model nor its validation. Plain JSON in the rules blob."""

    rules: list[RuleEntry] = field(default_factory=list)
    names: list[NameEntry] = field(default_factory=list)
    dns_regex: list[PatternEntry] = field(default_factory=list)
    classes: list[ClassEntry] = field(default_factory=list)
    malformed_action: int = _slowpath.DROP
    never_block: list[RangeEntry] = field(default_factory=list)
    block_limits: list[int] = field(default_factory=list)
    # The DNS classes: (protocol, port) of the redirect classes whose port is a DNS port (empty: no
    # packet is parsed as DNS).
    dns_classes: list[DnsClassEntry] = field(default_factory=list)
    # What a first fragment to a DNS class gets: _slowpath.FRAG_DROP or FRAG_JUDGE (enum
    # hyp_dns_fragment_policy).
    dns_fragments: int = _slowpath.FRAG_DROP

    def to_args(self) -> tuple[list[RuleEntry], list[NameEntry], list[PatternEntry], list[ClassEntry], int,
                               list[RangeEntry], list[int], list[DnsClassEntry], int]:
        """Positional arguments of _slowpath.Rules (the optional databases keyword apart), typed so
        that mypy checks them against the extension's stub."""
        return (self.rules, self.names, self.dns_regex, self.classes, self.malformed_action, self.never_block,
                self.block_limits, self.dns_classes, self.dns_fragments)

    def build(self, databases: _slowpath.SerializedDatabases | None = None) -> _slowpath.Rules:
        """The native rule set; with the supervisor's serialized databases Hyperscan compiles nothing."""
        return _slowpath.Rules(*self.to_args(), databases=databases)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> RuleSpec:
        """From to_json() after a JSON round trip (tuples arrive as lists); ProtocolError naming
        the field that is missing or malformed."""
        expected = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(expected):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ProtocolError(f"rule spec: expected the fields {expected}, got {got}")
        name = ""
        try:
            name = "rules"
            rules = [(int(a), int(q), float(t)) for a, q, t in data[name]]
            name = "names"
            names = [(int(i), int(k), str(n)) for i, k, n in data[name]]
            name = "dns_regex"
            dns_regex = [(int(i), str(p)) for i, p in data[name]]
            name = "classes"
            classes = [(int(p), int(port), [(int(i), str(x)) for i, x in pats]) for p, port, pats in data[name]]
            name = "malformed_action"
            malformed_action = int(data[name])
            name = "never_block"
            never_block = [(int(v), str(lo), str(hi)) for v, lo, hi in data[name]]
            name = "block_limits"
            block_limits = [int(n) for n in data[name]]
            name = "dns_classes"
            dns_classes = [(int(p), int(port)) for p, port in data[name]]
            name = "dns_fragments"
            dns_fragments = int(data[name])
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"rule spec: {name}: malformed ({exc})") from None
        return cls(rules, names, dns_regex, classes, malformed_action, never_block, block_limits, dns_classes,
                   dns_fragments)


# ---- commands: a worker's stdin, and the rules socket -------------------------------------------


class CommandType(StrEnum):
    RULES = "rules"
    REGISTER = "register"
    STOP = "stop"


@dataclass(frozen=True)
class RulesCommand:
    """A generation's rules. From a rules blob it carries the serialized databases too; on stdin
    (where nothing large may go) only the spec."""

    type: ClassVar[CommandType] = CommandType.RULES
    generation: int
    spec: RuleSpec
    databases: _slowpath.SerializedDatabases | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cmd": self.type.value, "generation": self.generation, "spec": self.spec.to_json()}


@dataclass(frozen=True)
class RegisterCommand:
    """(Re)write the socket's xsk_map entry."""

    type: ClassVar[CommandType] = CommandType.REGISTER

    def to_json(self) -> dict[str, Any]:
        return {"cmd": self.type.value}


@dataclass(frozen=True)
class StopCommand:
    type: ClassVar[CommandType] = CommandType.STOP

    def to_json(self) -> dict[str, Any]:
        return {"cmd": self.type.value}


Command = RulesCommand | RegisterCommand | StopCommand


def encode_command(command: Command) -> bytes:
    """One line for a worker's stdin."""
    return (json.dumps(command.to_json(), separators=(",", ":")) + "\n").encode()


def decode_command(line: str | bytes) -> Command:
    """A stdin line -> its command; ProtocolError if it is not one."""
    data = _json_object(line, "command")
    try:
        kind = CommandType(str(data.get("cmd")))
    except ValueError:
        raise ProtocolError(f"command: unknown cmd {data.get('cmd')!r}") from None
    if kind is CommandType.RULES:
        return RulesCommand(_int_field(data, "generation", "rules command"), RuleSpec.from_json(data.get("spec")))
    if kind is CommandType.REGISTER:
        return RegisterCommand()
    return StopCommand()


@dataclass(frozen=True)
class RulesOffer:
    """A datagram on the rules socket: its generation, with the sealed memfd as SCM_RIGHTS."""

    type: ClassVar[CommandType] = CommandType.RULES
    generation: int

    def encode(self) -> bytes:
        return json.dumps({"cmd": self.type.value, "generation": self.generation}).encode()

    @classmethod
    def decode(cls, data: bytes) -> RulesOffer:
        message = _json_object(data, "rules offer")
        if message.get("cmd") != cls.type.value:
            raise ProtocolError(f"rules offer: cmd {message.get('cmd')!r}")
        return cls(_int_field(message, "generation", "rules offer"))


# ---- messages: a worker's stdout ----------------------------------------------------------------


class MessageType(StrEnum):
    READY = "ready"
    REPORT = "report"
    RETIRED = "retired"
    RULES_APPLIED = "rules_applied"
    REGISTERED = "registered"
    EXITING = "exiting"
    ERROR = "error"


@dataclass(frozen=True)
class Ready:
    """The socket is bound and in xsk_map."""

    type: ClassVar[MessageType] = MessageType.READY
    zerocopy: bool
    generation: int
    compiles: int  # Hyperscan compiles the worker did to start (0: it took the supervisor's databases)


# (rule index, matches) of the rules that matched, by index (Rules.matched()): a report lists these,
# not every rule, since a policy may hold a million rules of which few match.
RuleHits = list[tuple[int, int]]


@dataclass(frozen=True)
class Report:
    """Every REPORT_INTERVAL: the Queue's stats, the hits of the generation in force, new events."""

    type: ClassVar[MessageType] = MessageType.REPORT
    generation: int
    stats: dict[str, Any]
    hits: RuleHits
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Retired:
    """A replaced rule set's final hits."""

    type: ClassVar[MessageType] = MessageType.RETIRED
    generation: int
    hits: RuleHits


@dataclass(frozen=True)
class RulesApplied:
    type: ClassVar[MessageType] = MessageType.RULES_APPLIED
    generation: int


@dataclass(frozen=True)
class Registered:
    type: ClassVar[MessageType] = MessageType.REGISTERED


@dataclass(frozen=True)
class Exiting:
    """Sent on a stop signal before the socket closes (which removes its xsk_map entry)."""

    type: ClassVar[MessageType] = MessageType.EXITING
    signal: str


@dataclass(frozen=True)
class Error:
    type: ClassVar[MessageType] = MessageType.ERROR
    message: str
    fatal: bool = False  # the worker exits


WorkerMessage = Ready | Report | Retired | RulesApplied | Registered | Exiting | Error


def encode_message(message: WorkerMessage) -> str:
    """One line for a worker's stdout."""
    data: dict[str, Any] = {"type": message.type.value}
    for f in fields(message):
        data[f.name] = getattr(message, f.name)
    if isinstance(message, Report):
        data["events"] = [event.to_json() for event in message.events]
    return json.dumps(data, separators=(",", ":")) + "\n"


def decode_message(line: str | bytes) -> WorkerMessage:
    """A stdout line -> its message; ProtocolError naming what is wrong."""
    data = _json_object(line, "worker message")
    try:
        kind = MessageType(str(data.get("type")))
    except ValueError:
        raise ProtocolError(f"worker message: unknown type {data.get('type')!r}") from None
    what = f"{kind.value} message"
    if kind is MessageType.READY:
        return Ready(bool(data.get("zerocopy")), _int_field(data, "generation", what),
                     _int_field(data, "compiles", what))
    if kind is MessageType.REPORT:
        stats, events = data.get("stats"), data.get("events", [])
        if not isinstance(stats, dict) or not isinstance(events, list):
            raise ProtocolError(f"{what}: stats must be an object and events a list")
        return Report(_int_field(data, "generation", what), stats, _hits(data, what),
                      [Event.from_json(e) for e in events])
    if kind is MessageType.RETIRED:
        return Retired(_int_field(data, "generation", what), _hits(data, what))
    if kind is MessageType.RULES_APPLIED:
        return RulesApplied(_int_field(data, "generation", what))
    if kind is MessageType.REGISTERED:
        return Registered()
    if kind is MessageType.EXITING:
        return Exiting(str(data.get("signal")))
    return Error(str(data.get("message")), bool(data.get("fatal", False)))


def _json_object(line: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"{what}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _int_field(data: dict[str, Any], name: str, what: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what}: {name} must be an integer, got {value!r}")
    return value


def _hits(data: dict[str, Any], what: str) -> RuleHits:
    hits = data.get("hits")
    if not isinstance(hits, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, int) and not isinstance(n, bool)
                                                              and n >= 0 for n in pair) for pair in hits):
        raise ProtocolError(f"{what}: hits must be a list of [rule index, matches] pairs")
    return [(index, count) for index, count in hits]
