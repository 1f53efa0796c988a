"""Policy file model: YAML in, immutable validated Policy out, or a PolicyError that says why.

The policy is the operator's only interface to the data plane, so every rejection names the
field path (``slow_path.dns_rules[3].ttl``) and the offending value, and no pydantic, YAML or
Python traceback ever reaches the user.

Choices worth knowing:
- A key present with a null value (``fast_path:`` with everything commented out) means
  "use the default", exactly like an absent key.
- ``mode``, ``action``, ``on_failure`` and ``malformed_dns_action`` are case-insensitive.
- Duplicate IPs/CIDRs are dropped silently (first occurrence kept, order preserved);
  overlapping CIDRs are left alone. Duplicate redirect classes are an error.
- ``port`` and ``qtype`` also accept decimal strings ("53"); booleans are never numbers.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Hashable, Iterable
from enum import StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Annotated, ClassVar, Final, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from hyperion.durations import format_duration, parse_duration
from hyperion.policy.problems import Problem, ProblemListError, kind_of, show_value
from hyperion.protocols import PORT_PROTOCOLS, PROTOCOL_NUMBERS, protocol_name

QTYPE_NUMBERS: dict[str, int] = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "NAPTR": 35,
    "DS": 43,
    "DNSKEY": 48,
    "TLSA": 52,
    "SVCB": 64,
    "HTTPS": 65,
    "ANY": 255,
    "CAA": 257,
}


_QTYPE_NAMES: dict[int, str] = {v: k for k, v in QTYPE_NUMBERS.items()}


_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def _parse_network(value: object) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a CIDR like 192.0.2.0/24")
    text = value.strip()
    if "%" in text:
        raise ValueError(f"{show_value(value)} has a zone index (%...); the fast path matches addresses without zones")
    try:
        return ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        addr, slash, prefix = text.partition("/")
        if slash:
            try:
                parsed = ip_address(addr)
            except ValueError:
                pass
            else:
                top = parsed.max_prefixlen
                raise ValueError(
                    f"{show_value(value)} has an invalid prefix length {prefix!r} "
                    f"(IPv{parsed.version} allows /0 to /{top})"
                ) from None
        raise ValueError(f"{show_value(value)} is not a valid IPv4 or IPv6 network") from None
    raise ValueError(f"{show_value(value)} has host bits set (did you mean {loose}?)")


def _parse_address(value: object) -> IPv4Address | IPv6Address:
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected an IP address")
    text = value.strip()
    if "/" in text:
        raise ValueError(
            f"{show_value(value)} has a prefix length; drop_ips takes single addresses, "
            "put networks in drop_cidrs"
        )
    if "%" in text:
        raise ValueError(f"{show_value(value)} has a zone index (%...); the fast path matches addresses without zones")
    try:
        # inet_pton is ~7x faster than ip_address and as strict; it matters for
        # million-entry blocklists. Anything it refuses gets ip_address's verdict.
        if ":" in text:
            return IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError(f"{show_value(value)} is not a valid IPv4 or IPv6 address") from None


def _parse_never_block(value: object) -> IPv4Network | IPv6Network:
    """An address (taken as a /32 or /128) or a CIDR."""
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected an address or a CIDR")
    text = value.strip()
    if "/" in text:
        return _parse_network(value)
    if "%" in text:
        raise ValueError(f"{show_value(value)} has a zone index (%...); never_block matches addresses without zones")
    try:
        return ip_network(ip_address(text))
    except ValueError:
        raise ValueError(f"{show_value(value)} is not a valid IPv4 or IPv6 address or network") from None


def _parse_bool(value: object) -> bool:
    """true/false only: pydantic's lax mode would also take 'no', 'off' or 0."""
    if not isinstance(value, bool):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected true or false")
    return value


DEFAULT_MAX_BLOCKS_PER_SECOND = 10


MAX_BLOCKS_PER_SECOND_LIMIT = 100_000


def _parse_block_rate(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a whole number of blocks")
    if isinstance(value, str):
        if not _is_decimal(value.strip()):
            raise ValueError(f"{show_value(value)} is not a whole number of blocks")
        value = int(value.strip())
    if not 1 <= value <= MAX_BLOCKS_PER_SECOND_LIMIT:
        raise ValueError(f"{value} is out of range (1..{MAX_BLOCKS_PER_SECOND_LIMIT})")
    return value


def _is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() then rejects."""
    return text.isascii() and text.isdigit()


def _parse_protocol(value: object) -> int:
    """tcp/udp by name or number; anything else is rejected because it has no ports."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if _is_decimal(text):
            number = int(text)
        elif text in PROTOCOL_NUMBERS:
            if PROTOCOL_NUMBERS[text] in PORT_PROTOCOLS:
                return PROTOCOL_NUMBERS[text]
            raise ValueError(
                f"{show_value(value)} (protocol {PROTOCOL_NUMBERS[text]}) has no ports; "
                "only tcp and udp can be used here"
            )
        else:
            raise ValueError(f"{show_value(value)} is not a known protocol (use tcp, udp, 6 or 17)")
    if number is None:
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected tcp, udp, 6 or 17")
    if number in PORT_PROTOCOLS:
        return number
    if 0 <= number <= 255:
        raise ValueError(
            f"{show_value(value)} is a protocol without ports; only tcp (6) and udp (17) "
            "can be used here"
        )
    raise ValueError(f"{show_value(value)} is not an IP protocol number (0..255)")


def _parse_port(value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _is_decimal(value.strip()):
        number = int(value.strip())
    if number is None:
        raise ValueError(f"{show_value(value)} is not a port number (expected an integer 1..65535)")
    if not 1 <= number <= 65535:
        raise ValueError(f"{show_value(value)} is out of range for a port (1..65535)")
    return number


def _parse_qtype(value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip().upper()
        if text in QTYPE_NUMBERS:
            return QTYPE_NUMBERS[text]
        digits = text.removeprefix("TYPE")  # RFC 3597 generic form, e.g. TYPE65
        if _is_decimal(digits):
            number = int(digits)
    if number is None:
        known = ", ".join(QTYPE_NUMBERS)
        raise ValueError(f"{show_value(value)} is not a known DNS query type ({known}, or 1..65535)")
    if not 1 <= number <= 65535:
        raise ValueError(f"{show_value(value)} is out of range for a DNS query type (1..65535)")
    return number


def _parse_domain(value: object) -> str:
    """Exact name or leading-wildcard suffix, lower-cased, without the trailing dot."""
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a domain name")
    name = value.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise ValueError(f"{show_value(value)} is empty, expected a domain name like evil.com")
    suffix = name[2:] if name.startswith("*.") else name
    if "*" in suffix:
        raise ValueError(
            f"{show_value(value)}: '*' is only allowed as a whole leading label, as in *.evil.com"
        )
    if len(name) > 253:
        raise ValueError(f"{show_value(value)} is {len(name)} characters long; the DNS limit is 253")
    for label in suffix.split("."):
        if not label:
            raise ValueError(f"{show_value(value)} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise ValueError(
                f"{show_value(value)} has a {len(label)}-character label; the DNS limit is 63"
            )
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{show_value(value)} has label {label!r}; labels may only contain a-z, 0-9, "
                "'-' and '_' (write internationalized names in xn-- form)"
            )
    return name


def _check_unicode(value: str) -> None:
    """A JSON escape such as \\ud800 gives a lone surrogate, which no UTF-8 consumer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{show_value(value)} is not valid Unicode text ({exc.reason} at {exc.start})") from None


def _parse_regex(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a regular expression")
    if not value:
        raise ValueError(f"{show_value(value)}: regex must not be empty")
    _check_unicode(value)
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{show_value(value)} is not a valid regex: {exc}") from None
    return value


def _parse_literal(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a string")
    if not value:
        raise ValueError(f"{show_value(value)}: literal must not be empty")
    _check_unicode(value)
    return value


def _parse_ttl(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{show_value(value)} is {kind_of(value)}, expected a duration like 10m")
    return parse_duration(value)  # its message already quotes the value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


_H = TypeVar("_H", bound=Hashable)


def _dedupe(items: Iterable[_H]) -> tuple[_H, ...]:
    return tuple(dict.fromkeys(items))


def _qtype_name(number: int) -> str:
    return _QTYPE_NAMES.get(number, f"TYPE{number}")


IPNetwork = Annotated[IPv4Network | IPv6Network, PlainValidator(_parse_network)]


IPAddress = Annotated[IPv4Address | IPv6Address, PlainValidator(_parse_address)]


_Protocol = Annotated[int, PlainValidator(_parse_protocol)]


_Port = Annotated[int, PlainValidator(_parse_port)]


_QType = Annotated[int, PlainValidator(_parse_qtype)]


_Domain = Annotated[str, PlainValidator(_parse_domain)]


_Regex = Annotated[str, PlainValidator(_parse_regex)]


_Literal = Annotated[str, PlainValidator(_parse_literal)]


_Ttl = Annotated[float, PlainValidator(_parse_ttl)]


_NeverBlock = Annotated[IPv4Network | IPv6Network, PlainValidator(_parse_never_block)]


_StrictBool = Annotated[bool, PlainValidator(_parse_bool)]


_BlockRate = Annotated[int, PlainValidator(_parse_block_rate)]


# The words a policy may use, each set defined here once. Literals rather than enums: pydantic's
# literal_error names the allowed values, which the error messages quote, and the fields hold the
# plain strings every consumer compares and prints.
Mode = Literal["enforce", "monitor"]


OnFailure = Literal["pass", "drop"]


# Every action a rule can take; the slow path maps each to its native constant by name.
# "allow" is "pass" under the name DNS filters use: the query is delivered, no later rule applies.
Action = Literal["drop", "pass", "allow", "alert", "nxdomain", "refuse", "block_source"]


ACTIONS: Final[tuple[Action, ...]] = get_args(Action)


DnsAction = Action  # a DNS rule may take any of them


SignatureAction = Literal["drop", "alert", "block_source"]


MalformedDnsAction = Literal["drop", "pass", "alert"]


# Where the exact and "*.suffix" name rules run: in the XDP program (the default), or all of them in
# the AF_XDP slow path, as before the program judged names (an operator's override).
NameRulePlacement = Literal["xdp", "slow_path"]


# What a first fragment to a DNS class gets: dropped (resolvers do not fragment queries), or judged by
# the question it holds (which must be whole in it; Linux discards overlapping fragments, RFC 5722).
DnsFragmentPolicy = Literal["drop", "judge"]


# Actions after which the packet does not reach its destination (pass and allow deliver it).
STOPPING_ACTIONS: Final[frozenset[Action]] = frozenset({"drop", "block_source", "nxdomain", "refuse"})


DEFAULT_DNS_PORTS: Final[tuple[int, ...]] = (53,)


_CaseInsensitive = BeforeValidator(_lower)


class _Strict(BaseModel):
    """Frozen, unknown keys rejected; null for a field with a default means that default."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_alias=True,
        validate_by_name=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        defaulted = {
            field.alias or name
            for name, field in cls.model_fields.items()
            if field.default_factory is not None or field.default not in (None, PydanticUndefined)
        }
        return {k: v for k, v in data.items() if not (v is None and k in defaulted)}


def _check_ttl(action: Action, ttl_seconds: float | None) -> list[Problem]:
    if action == "block_source" and ttl_seconds is None:
        return [(("ttl",), "missing; action 'block_source' needs a ttl (e.g. ttl: 10m)")]
    if action != "block_source" and ttl_seconds is not None:
        return [
            (
                ("ttl",),
                f"{format_duration(ttl_seconds)!r} given, but ttl is only used with action "
                f"'block_source' (action is {action!r})",
            )
        ]
    return []


def _check_block_rate(action: Action, rate: int | None) -> list[Problem]:
    if action != "block_source" and rate is not None:
        return [(("max_blocks_per_second",), f"{rate} given, but it is only used with action 'block_source' "
                 f"(action is {action!r})")]
    return []


class TrafficClass(_Strict):
    """A transport protocol and destination port, e.g. tcp/8080."""

    protocol: _Protocol
    port: _Port

    def describe(self) -> str:
        return f"{protocol_name(self.protocol)}/{self.port}"


class RedirectClass(_Strict):
    """Traffic the fast path hands to the slow path; on_failure says what to do if it can't."""

    protocol: _Protocol
    port: _Port
    on_failure: Annotated[OnFailure, _CaseInsensitive] = "pass"

    def describe(self) -> str:
        return f"{protocol_name(self.protocol)}/{self.port} on_failure={self.on_failure}"


class FastPathSection(_Strict):
    """Per-packet XDP decisions on addresses and redirect classes."""

    allow_cidrs: tuple[IPNetwork, ...] = ()
    drop_ips: tuple[IPAddress, ...] = ()
    drop_cidrs: tuple[IPNetwork, ...] = ()
    redirect_ports: tuple[RedirectClass, ...] = ()

    @field_validator("allow_cidrs", "drop_ips", "drop_cidrs")
    @classmethod
    def _drop_duplicates(cls, value: tuple[Hashable, ...]) -> tuple[Hashable, ...]:
        return _dedupe(value)

    @field_validator("redirect_ports")
    @classmethod
    def _unique_classes(cls, value: tuple[RedirectClass, ...]) -> tuple[RedirectClass, ...]:
        first: dict[tuple[int, int], int] = {}
        problems: list[Problem] = []
        for index, item in enumerate(value):
            key = (item.protocol, item.port)
            if key in first:
                name = f"{protocol_name(item.protocol)}/{item.port}"
                problems.append(
                    ((index,), f"duplicate class {name!r} (already listed at [{first[key]}])")
                )
            else:
                first[key] = index
        if problems:
            raise ProblemListError(problems)
        return value


def _blocks_per_second(action: Action, block_rate: int | None) -> int | None:
    """The cap in force: the policy's, the default for block_source, None for other actions."""
    if action != "block_source":
        return None
    return block_rate if block_rate is not None else DEFAULT_MAX_BLOCKS_PER_SECOND


def _rule_problems(both: str | None, missing: str | None, action: Action, ttl_seconds: float | None,
                   block_rate: int | None) -> list[Problem]:
    """What is wrong with a rule as a whole: both patterns or neither (the message given), then
    its ttl and block rate against its action."""
    problems: list[Problem] = [((), both)] if both else [((), missing)] if missing else []
    return problems + _check_ttl(action, ttl_seconds) + _check_block_rate(action, block_rate)


def _rule_tail(ttl_seconds: float | None, block_rate: int | None) -> list[str]:
    """The ttl and block-rate words of a rule's one-line description."""
    return ([f"ttl={format_duration(ttl_seconds)}"] if ttl_seconds is not None else []) + (
        [f"max_blocks_per_second={block_rate}"] if block_rate is not None else [])


class DnsRule(_Strict):
    """Match a query name (exact/suffix or regex), optionally a qtype, and act on it."""

    match: _Domain | None = None
    regex: _Regex | None = None
    qtype: _QType | None = None
    action: Annotated[DnsAction, _CaseInsensitive]
    ttl_seconds: _Ttl | None = Field(default=None, alias="ttl")
    # Blocks this rule may insert per second (block_source; None there means the default).
    block_rate: _BlockRate | None = Field(default=None, alias="max_blocks_per_second")

    @property
    def max_blocks_per_second(self) -> int | None:
        return _blocks_per_second(self.action, self.block_rate)

    @model_validator(mode="after")
    def _consistent(self) -> DnsRule:
        both = None if self.match is None or self.regex is None else (
            f"has both match={self.match!r} and regex={show_value(self.regex)}; use exactly one")
        missing = "needs either 'match' (a domain) or 'regex'" if self.match is None and self.regex is None else None
        problems = _rule_problems(both, missing, self.action, self.ttl_seconds, self.block_rate)
        if problems:
            raise ProblemListError(problems)
        return self

    def describe(self) -> str:
        parts = [f"match={self.match}" if self.match is not None else f"regex={self.regex!r}"]
        if self.qtype is not None:
            parts.append(f"qtype={_qtype_name(self.qtype)}")
        parts.append(f"action={self.action}")
        return " ".join(parts + _rule_tail(self.ttl_seconds, self.block_rate))


class Signature(_Strict):
    """A payload pattern (literal or regex) scanned for in one traffic class."""

    class_: TrafficClass = Field(alias="class")
    literal: _Literal | None = None
    regex: _Regex | None = None
    action: Annotated[SignatureAction, _CaseInsensitive]
    ttl_seconds: _Ttl | None = Field(default=None, alias="ttl")
    block_rate: _BlockRate | None = Field(default=None, alias="max_blocks_per_second")

    @property
    def max_blocks_per_second(self) -> int | None:
        return _blocks_per_second(self.action, self.block_rate)

    @model_validator(mode="after")
    def _consistent(self) -> Signature:
        both = None if self.literal is None or self.regex is None else (
            f"has both literal={show_value(self.literal)} and regex={show_value(self.regex)}; use exactly one")
        missing = "needs either 'literal' or 'regex'" if self.literal is None and self.regex is None else None
        problems = _rule_problems(both, missing, self.action, self.ttl_seconds, self.block_rate)
        if problems:
            raise ProblemListError(problems)
        return self

    def describe(self) -> str:
        pattern = f"literal={self.literal!r}" if self.literal is not None else f"regex={self.regex!r}"
        parts = [self.class_.describe(), pattern, f"action={self.action}"]
        return " ".join(parts + _rule_tail(self.ttl_seconds, self.block_rate))


# Bounds on what Hyperscan compiles for one policy: compile time grows with them (1,500 regexes took
# about 10 s), and the daemon compiles every reload. Name rules (match:) are a hash table, not bounded here.
MAX_DNS_REGEX_RULES = 1000


MAX_SIGNATURES = 1000


MAX_PATTERN_BYTES = 128 * 1024  # regexes and literals together, UTF-8


class SlowPathSection(_Strict):
    """Userspace inspection of redirected traffic: DNS rules and payload signatures."""

    malformed_dns_action: Annotated[MalformedDnsAction, _CaseInsensitive] = "drop"
    # The ports whose redirect classes carry DNS (DNS classes): the name rules judge their queries.
    dns_ports: tuple[_Port, ...] = DEFAULT_DNS_PORTS
    dns_name_rules: Annotated[NameRulePlacement, _CaseInsensitive] = "xdp"
    dns_fragments: Annotated[DnsFragmentPolicy, _CaseInsensitive] = "drop"
    dns_rules: tuple[DnsRule, ...] = ()
    signatures: tuple[Signature, ...] = ()
    # Sources block_source never inserts (hyperion.neverblock adds the host's own addresses, gateways,
    # resolvers and fast_path.allow_cidrs unless never_block_defaults is false).
    never_block: tuple[_NeverBlock, ...] = ()
    never_block_defaults: _StrictBool = True

    @field_validator("never_block")
    @classmethod
    def _drop_duplicates(cls, value: tuple[Hashable, ...]) -> tuple[Hashable, ...]:
        return _dedupe(value)

    @field_validator("dns_ports")
    @classmethod
    def _unique_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        first: dict[int, int] = {}
        problems: list[Problem] = []
        for index, port in enumerate(value):
            if port in first:
                problems.append(((index,), f"duplicate port {port} (already listed at [{first[port]}])"))
            else:
                first[port] = index
        if problems:
            raise ProblemListError(problems)
        return value

    @model_validator(mode="after")
    def _compile_bounded(self) -> SlowPathSection:
        problems: list[Problem] = []
        regexes = [r.regex for r in self.dns_rules if r.regex is not None]
        patterns = regexes + [s.regex if s.regex is not None else s.literal or "" for s in self.signatures]
        if len(regexes) > MAX_DNS_REGEX_RULES:
            problems.append((("dns_rules",), f"{len(regexes)} regex rules; at most {MAX_DNS_REGEX_RULES} "
                             "(use match: for names, which is not bounded)"))
        if len(self.signatures) > MAX_SIGNATURES:
            problems.append((("signatures",), f"{len(self.signatures)} signatures; at most {MAX_SIGNATURES}"))
        total = sum(len(p.encode()) for p in patterns)
        if not problems and total > MAX_PATTERN_BYTES:
            problems.append(((), f"regexes and literals of dns_rules and signatures total {total} bytes; "
                             f"at most {MAX_PATTERN_BYTES}"))
        if problems:
            raise ProblemListError(problems)
        return self


class Section(StrEnum):
    """The policy's two sections: what the XDP program decides, and what the slow path inspects."""

    FAST_PATH = "fast_path"
    SLOW_PATH = "slow_path"


# The entries of the policy lists (PolicyList.entries).
PolicyEntry = IPv4Network | IPv6Network | IPv4Address | IPv6Address | RedirectClass | DnsRule | Signature


class PolicyList(StrEnum):
    """The six entry lists of a policy, in file order: summaries, diffs, the CLI and the compilers
    derive theirs from this one enumeration. Each value is the list's key in its section."""

    ALLOW_CIDRS = "allow_cidrs"
    DROP_IPS = "drop_ips"
    DROP_CIDRS = "drop_cidrs"
    REDIRECT_PORTS = "redirect_ports"
    DNS_RULES = "dns_rules"
    SIGNATURES = "signatures"

    @property
    def section(self) -> Section:
        """The section whose model has this list as a field."""
        return Section.FAST_PATH if self.value in FastPathSection.model_fields else Section.SLOW_PATH

    @property
    def path(self) -> str:
        """The list's path in the file, e.g. "fast_path.drop_ips"."""
        return f"{self.section.value}.{self.value}"

    def entries(self, policy: Policy) -> tuple[PolicyEntry, ...]:
        entries: tuple[PolicyEntry, ...] = getattr(getattr(policy, self.section.value), self.value)
        return entries


def render_entry(entry: PolicyEntry) -> str:
    """Stable one-line string for a list entry (summaries, diffs, logs, rule names)."""
    return entry.describe() if isinstance(entry, RedirectClass | DnsRule | Signature) else str(entry)


class Policy(_Strict):
    """A whole policy file. ``Policy()`` (and the YAML ``{}``) blocks nothing."""

    LISTS: ClassVar[tuple[PolicyList, ...]] = tuple(PolicyList)

    mode: Annotated[Mode, _CaseInsensitive] = "enforce"
    fast_path: FastPathSection = Field(default_factory=FastPathSection)
    slow_path: SlowPathSection = Field(default_factory=SlowPathSection)

    @model_validator(mode="after")
    def _dns_rules_seen(self) -> Policy:
        """A DNS rule no class can see would be inert: refuse it and say what to add."""
        if self.slow_path.dns_rules and not self.dns_classes():
            ports = self.slow_path.dns_ports
            fix = (f"add {{protocol: udp, port: {ports[0]}}} to fast_path.redirect_ports "
                   f"(DNS ports: {', '.join(str(p) for p in ports)}), or a redirected port to "
                   "slow_path.dns_ports") if ports else "slow_path.dns_ports is empty: list the DNS ports"
            raise ProblemListError([((Section.SLOW_PATH.value, PolicyList.DNS_RULES.value),
                                     f"no DNS class, so no query reaches these rules: {fix}")])
        return self

    def dns_classes(self) -> tuple[RedirectClass, ...]:
        """The redirect classes whose port is a DNS port: the name rules judge their queries."""
        ports = set(self.slow_path.dns_ports)
        return tuple(c for c in self.fast_path.redirect_ports if c.port in ports)

    def summary(self) -> dict[PolicyList, int]:
        """Entry count per list, in the order of PolicyList."""
        return {name: len(name.entries(self)) for name in PolicyList}
