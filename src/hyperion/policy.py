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

import difflib
import errno
import json
import os
import re
import reprlib
import socket
import stat
from collections.abc import Hashable, Iterable, Mapping
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticUndefined

from hyperion.durations import format_duration, parse_duration
from hyperion.errors import PolicyError

__all__ = [
    "PROTOCOL_NUMBERS",
    "QTYPE_NUMBERS",
    "DnsAction",
    "DnsRule",
    "FastPath",
    "IPAddress",
    "IPNetwork",
    "MalformedDnsAction",
    "Mode",
    "OnFailure",
    "Policy",
    "RedirectClass",
    "Signature",
    "SignatureAction",
    "SlowPath",
    "TrafficClass",
    "load_policy",
    "parse_policy",
    "policy_diff",
]

_MAX_SHOWN = 60  # longest repr of a bad value quoted in an error line
_MAX_PROBLEMS = 50  # a policy with thousands of bad entries should not flood the terminal
# YAML aliases may add at most this many nodes to a document (beyond its own): a "billion laughs"
# document is a few hundred bytes that expand to 10^9 nodes.
_MAX_ALIAS_EXPANSION = 1_000_000
# Bounded repr for containers: an aliased value can be a DAG of 10^9 leaves.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = _MAX_SHOWN, _MAX_SHOWN, _MAX_SHOWN

PROTOCOL_NUMBERS: dict[str, int] = {"tcp": 6, "udp": 17}
_PORTLESS_PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
}
_PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOL_NUMBERS.items()}

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


class _ProblemListError(ValueError):
    """Problems found by a cross-field check, each at a path relative to the checked object.

    Pydantic keeps the raised ValueError in the error context, which lets a model-level
    validator report ``[2]`` or ``ttl`` instead of only the model's own location.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def _show(value: object) -> str:
    """repr() of a user value, truncated so one error line stays readable."""
    text = _REPR.repr(value) if isinstance(value, list | tuple | dict | set | frozenset) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _kind(value: object) -> str:
    """Name a YAML value's type the way a policy author would, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- field parsers
# Each raises ValueError whose text starts with the bad value; the loader prefixes the path.


def _parse_network(value: object) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a CIDR like 192.0.2.0/24")
    text = value.strip()
    if "%" in text:
        raise ValueError(f"{_show(value)} has a zone index (%...); the fast path matches addresses without zones")
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
                    f"{_show(value)} has an invalid prefix length {prefix!r} "
                    f"(IPv{parsed.version} allows /0 to /{top})"
                ) from None
        raise ValueError(f"{_show(value)} is not a valid IPv4 or IPv6 network") from None
    raise ValueError(f"{_show(value)} has host bits set (did you mean {loose}?)")


def _parse_address(value: object) -> IPv4Address | IPv6Address:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected an IP address")
    text = value.strip()
    if "/" in text:
        raise ValueError(
            f"{_show(value)} has a prefix length; drop_ips takes single addresses, "
            "put networks in drop_cidrs"
        )
    if "%" in text:
        raise ValueError(f"{_show(value)} has a zone index (%...); the fast path matches addresses without zones")
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
        raise ValueError(f"{_show(value)} is not a valid IPv4 or IPv6 address") from None


def _parse_never_block(value: object) -> IPv4Network | IPv6Network:
    """An address (taken as a /32 or /128) or a CIDR."""
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected an address or a CIDR")
    text = value.strip()
    if "/" in text:
        return _parse_network(value)
    if "%" in text:
        raise ValueError(f"{_show(value)} has a zone index (%...); never_block matches addresses without zones")
    try:
        return ip_network(ip_address(text))
    except ValueError:
        raise ValueError(f"{_show(value)} is not a valid IPv4 or IPv6 address or network") from None


def _parse_bool(value: object) -> bool:
    """true/false only: pydantic's lax mode would also take 'no', 'off' or 0."""
    if not isinstance(value, bool):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected true or false")
    return value


DEFAULT_MAX_BLOCKS_PER_SECOND = 10
MAX_BLOCKS_PER_SECOND_LIMIT = 100_000


def _parse_block_rate(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a whole number of blocks")
    if isinstance(value, str):
        if not _is_decimal(value.strip()):
            raise ValueError(f"{_show(value)} is not a whole number of blocks")
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
            return PROTOCOL_NUMBERS[text]
        elif text in _PORTLESS_PROTOCOLS:
            raise ValueError(
                f"{_show(value)} (protocol {_PORTLESS_PROTOCOLS[text]}) has no ports; "
                "only tcp and udp can be used here"
            )
        else:
            raise ValueError(f"{_show(value)} is not a known protocol (use tcp, udp, 6 or 17)")
    if number is None:
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected tcp, udp, 6 or 17")
    if number in _PROTOCOL_NAMES:
        return number
    if 0 <= number <= 255:
        raise ValueError(
            f"{_show(value)} is a protocol without ports; only tcp (6) and udp (17) "
            "can be used here"
        )
    raise ValueError(f"{_show(value)} is not an IP protocol number (0..255)")


def _parse_port(value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _is_decimal(value.strip()):
        number = int(value.strip())
    if number is None:
        raise ValueError(f"{_show(value)} is not a port number (expected an integer 1..65535)")
    if not 1 <= number <= 65535:
        raise ValueError(f"{_show(value)} is out of range for a port (1..65535)")
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
        raise ValueError(f"{_show(value)} is not a known DNS query type ({known}, or 1..65535)")
    if not 1 <= number <= 65535:
        raise ValueError(f"{_show(value)} is out of range for a DNS query type (1..65535)")
    return number


def _parse_domain(value: object) -> str:
    """Exact name or leading-wildcard suffix, lower-cased, without the trailing dot."""
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a domain name")
    name = value.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise ValueError(f"{_show(value)} is empty, expected a domain name like evil.com")
    suffix = name[2:] if name.startswith("*.") else name
    if "*" in suffix:
        raise ValueError(
            f"{_show(value)}: '*' is only allowed as a whole leading label, as in *.evil.com"
        )
    if len(name) > 253:
        raise ValueError(f"{_show(value)} is {len(name)} characters long; the DNS limit is 253")
    for label in suffix.split("."):
        if not label:
            raise ValueError(f"{_show(value)} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise ValueError(
                f"{_show(value)} has a {len(label)}-character label; the DNS limit is 63"
            )
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{_show(value)} has label {label!r}; labels may only contain a-z, 0-9, "
                "'-' and '_' (write internationalized names in xn-- form)"
            )
    return name


def _check_unicode(value: str) -> None:
    """A JSON escape such as \\ud800 gives a lone surrogate, which no UTF-8 consumer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{_show(value)} is not valid Unicode text ({exc.reason} at {exc.start})") from None


def _parse_regex(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a regular expression")
    if not value:
        raise ValueError(f"{_show(value)}: regex must not be empty")
    _check_unicode(value)
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{_show(value)} is not a valid regex: {exc}") from None
    return value


def _parse_literal(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a string")
    if not value:
        raise ValueError(f"{_show(value)}: literal must not be empty")
    _check_unicode(value)
    return value


def _parse_ttl(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{_show(value)} is {_kind(value)}, expected a duration like 10m")
    return parse_duration(value)  # its message already quotes the value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _dedupe(items: Iterable[Hashable]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


def _protocol_name(number: int) -> str:
    return _PROTOCOL_NAMES.get(number, str(number))


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

Mode = Annotated[Literal["enforce", "monitor"], BeforeValidator(_lower)]
OnFailure = Annotated[Literal["pass", "drop"], BeforeValidator(_lower)]
MalformedDnsAction = Annotated[Literal["drop", "pass", "alert"], BeforeValidator(_lower)]
DnsAction = Annotated[
    Literal["drop", "pass", "alert", "nxdomain", "refuse", "block_source"],
    BeforeValidator(_lower),
]
SignatureAction = Annotated[Literal["drop", "alert", "block_source"], BeforeValidator(_lower)]


# --------------------------------------------------------------------------------- models


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


def _check_ttl(action: str, ttl_seconds: float | None) -> list[tuple[tuple[str | int, ...], str]]:
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


def _check_block_rate(action: str, rate: int | None) -> list[tuple[tuple[str | int, ...], str]]:
    if action != "block_source" and rate is not None:
        return [(("max_blocks_per_second",), f"{rate} given, but it is only used with action 'block_source' "
                 f"(action is {action!r})")]
    return []


class TrafficClass(_Strict):
    """A transport protocol and destination port, e.g. tcp/8080."""

    protocol: _Protocol
    port: _Port

    def describe(self) -> str:
        return f"{_protocol_name(self.protocol)}/{self.port}"


class RedirectClass(_Strict):
    """Traffic the fast path hands to the slow path; on_failure says what to do if it can't."""

    protocol: _Protocol
    port: _Port
    on_failure: OnFailure = "pass"

    def describe(self) -> str:
        return f"{_protocol_name(self.protocol)}/{self.port} on_failure={self.on_failure}"


class FastPath(_Strict):
    """Per-packet XDP decisions on addresses and redirect classes."""

    allow_cidrs: tuple[IPNetwork, ...] = ()
    drop_ips: tuple[IPAddress, ...] = ()
    drop_cidrs: tuple[IPNetwork, ...] = ()
    redirect_ports: tuple[RedirectClass, ...] = ()

    @field_validator("allow_cidrs", "drop_ips", "drop_cidrs")
    @classmethod
    def _drop_duplicates(cls, value: tuple[Hashable, ...]) -> tuple[Any, ...]:
        return _dedupe(value)

    @field_validator("redirect_ports")
    @classmethod
    def _unique_classes(cls, value: tuple[RedirectClass, ...]) -> tuple[RedirectClass, ...]:
        first: dict[tuple[int, int], int] = {}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for index, item in enumerate(value):
            key = (item.protocol, item.port)
            if key in first:
                name = f"{_protocol_name(item.protocol)}/{item.port}"
                problems.append(
                    ((index,), f"duplicate class {name!r} (already listed at [{first[key]}])")
                )
            else:
                first[key] = index
        if problems:
            raise _ProblemListError(problems)
        return value


def _blocks_per_second(action: str, block_rate: int | None) -> int | None:
    """The cap in force: the policy's, the default for block_source, None for other actions."""
    if action != "block_source":
        return None
    return block_rate if block_rate is not None else DEFAULT_MAX_BLOCKS_PER_SECOND


class DnsRule(_Strict):
    """Match a query name (exact/suffix or regex), optionally a qtype, and act on it."""

    match: _Domain | None = None
    regex: _Regex | None = None
    qtype: _QType | None = None
    action: DnsAction
    ttl_seconds: _Ttl | None = Field(default=None, alias="ttl")
    # Blocks this rule may insert per second (block_source; None there means the default).
    block_rate: _BlockRate | None = Field(default=None, alias="max_blocks_per_second")

    @property
    def max_blocks_per_second(self) -> int | None:
        return _blocks_per_second(self.action, self.block_rate)

    @model_validator(mode="after")
    def _consistent(self) -> DnsRule:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.match is not None and self.regex is not None:
            problems.append(
                (
                    (),
                    f"has both match={self.match!r} and regex={_show(self.regex)}; use exactly one",
                )
            )
        elif self.match is None and self.regex is None:
            problems.append(((), "needs either 'match' (a domain) or 'regex'"))
        problems += _check_ttl(self.action, self.ttl_seconds)
        problems += _check_block_rate(self.action, self.block_rate)
        if problems:
            raise _ProblemListError(problems)
        return self

    def describe(self) -> str:
        parts = [f"match={self.match}" if self.match is not None else f"regex={self.regex!r}"]
        if self.qtype is not None:
            parts.append(f"qtype={_qtype_name(self.qtype)}")
        parts.append(f"action={self.action}")
        if self.ttl_seconds is not None:
            parts.append(f"ttl={format_duration(self.ttl_seconds)}")
        if self.block_rate is not None:
            parts.append(f"max_blocks_per_second={self.block_rate}")
        return " ".join(parts)


class Signature(_Strict):
    """A payload pattern (literal or regex) scanned for in one traffic class."""

    class_: TrafficClass = Field(alias="class")
    literal: _Literal | None = None
    regex: _Regex | None = None
    action: SignatureAction
    ttl_seconds: _Ttl | None = Field(default=None, alias="ttl")
    block_rate: _BlockRate | None = Field(default=None, alias="max_blocks_per_second")

    @property
    def max_blocks_per_second(self) -> int | None:
        return _blocks_per_second(self.action, self.block_rate)

    @model_validator(mode="after")
    def _consistent(self) -> Signature:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.literal is not None and self.regex is not None:
            problems.append(
                (
                    (),
                    f"has both literal={_show(self.literal)} and regex={_show(self.regex)}; "
                    "use exactly one",
                )
            )
        elif self.literal is None and self.regex is None:
            problems.append(((), "needs either 'literal' or 'regex'"))
        problems += _check_ttl(self.action, self.ttl_seconds)
        problems += _check_block_rate(self.action, self.block_rate)
        if problems:
            raise _ProblemListError(problems)
        return self

    def describe(self) -> str:
        pattern = (
            f"literal={self.literal!r}" if self.literal is not None else f"regex={self.regex!r}"
        )
        parts = [self.class_.describe(), pattern, f"action={self.action}"]
        if self.ttl_seconds is not None:
            parts.append(f"ttl={format_duration(self.ttl_seconds)}")
        if self.block_rate is not None:
            parts.append(f"max_blocks_per_second={self.block_rate}")
        return " ".join(parts)


# Bounds on what Hyperscan compiles for one policy: compile time grows with them (1,500 regexes took
# about 10 s), and the daemon compiles every reload. Name rules (match:) are a hash table, not bounded here.
MAX_DNS_REGEX_RULES = 1000
MAX_SIGNATURES = 1000
MAX_PATTERN_BYTES = 128 * 1024  # regexes and literals together, UTF-8


class SlowPath(_Strict):
    """Userspace inspection of redirected traffic: DNS rules and payload signatures."""

    malformed_dns_action: MalformedDnsAction = "drop"
    dns_rules: tuple[DnsRule, ...] = ()
    signatures: tuple[Signature, ...] = ()
    # Sources block_source never inserts (hyperion.neverblock adds the host's own addresses, gateways,
    # resolvers and fast_path.allow_cidrs unless never_block_defaults is false).
    never_block: tuple[_NeverBlock, ...] = ()
    never_block_defaults: _StrictBool = True

    @field_validator("never_block")
    @classmethod
    def _drop_duplicates(cls, value: tuple[Hashable, ...]) -> tuple[Any, ...]:
        return _dedupe(value)

    @model_validator(mode="after")
    def _compile_bounded(self) -> SlowPath:
        problems: list[tuple[tuple[str | int, ...], str]] = []
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
            raise _ProblemListError(problems)
        return self


class Policy(_Strict):
    """A whole policy file. ``Policy()`` (and the YAML ``{}``) blocks nothing."""

    LISTS: ClassVar[tuple[str, ...]] = (
        "allow_cidrs",
        "drop_ips",
        "drop_cidrs",
        "redirect_ports",
        "dns_rules",
        "signatures",
    )

    mode: Mode = "enforce"
    fast_path: FastPath = Field(default_factory=FastPath)
    slow_path: SlowPath = Field(default_factory=SlowPath)

    def summary(self) -> dict[str, int]:
        """Entry count per list, keyed as in Policy.LISTS."""
        fast, slow = self.fast_path, self.slow_path
        return {
            "allow_cidrs": len(fast.allow_cidrs),
            "drop_ips": len(fast.drop_ips),
            "drop_cidrs": len(fast.drop_cidrs),
            "redirect_ports": len(fast.redirect_ports),
            "dns_rules": len(slow.dns_rules),
            "signatures": len(slow.signatures),
        }


def _rendered(policy: Policy) -> dict[str, list[str]]:
    """Stable one-line string per entry, per list (used for summaries, diffs and logs)."""
    fast, slow = policy.fast_path, policy.slow_path
    return {
        "allow_cidrs": [str(n) for n in fast.allow_cidrs],
        "drop_ips": [str(a) for a in fast.drop_ips],
        "drop_cidrs": [str(n) for n in fast.drop_cidrs],
        "redirect_ports": [r.describe() for r in fast.redirect_ports],
        "dns_rules": [r.describe() for r in slow.dns_rules],
        "signatures": [s.describe() for s in slow.signatures],
    }


def policy_diff(old: Policy, new: Policy) -> dict[str, dict[str, list[str]]]:
    """Per list, the entries ``added`` in ``new`` and ``removed`` from ``old``.

    Entries compare by their rendered string, so a pure reordering is not a change, and
    ``mode``/``malformed_dns_action`` are not reported (compare them directly).
    """
    before, after = _rendered(old), _rendered(new)
    diff: dict[str, dict[str, list[str]]] = {}
    for name in Policy.LISTS:
        old_set, new_set = set(before[name]), set(after[name])
        diff[name] = {
            "added": [e for e in dict.fromkeys(after[name]) if e not in old_set],
            "removed": [e for e in dict.fromkeys(before[name]) if e not in new_set],
        }
    return diff


# ------------------------------------------------------------------------------ loading


# libyaml's parser when PyYAML was built with it: ~20x faster, which is what makes a
# million-entry policy load in seconds rather than a minute. Same safe semantics.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """safe_load semantics, but a key repeated in one mapping is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately be overridden; complex keys are rejected later.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node, deep=False)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {_show(key)} (first defined on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        mapping: dict[Hashable, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer int() refuses (more digits than sys.get_int_max_str_digits()) is a YAML error."""
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer of {len(node.value)} characters is too long", node.start_mark
            ) from None

    def get_single_data(self) -> Any:
        """Composes the document, refuses alias bombs and recursive aliases, then constructs it."""
        node = self.get_single_node()
        if node is None:
            return None
        if getattr(self, "has_anchors", True):  # no anchor, no alias: skip the walk (large policies)
            _check_aliases(node)
        return self.construct_document(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _check_aliases(root: yaml.Node) -> None:
    """Counts the nodes of the document with every alias expanded (each distinct node once,
    shared ones by reference): more than _MAX_ALIAS_EXPANSION beyond its distinct nodes, or an
    alias inside its own anchor, is an error. Iterative: libyaml allows 1000 levels of nesting."""
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if children_done:
            open_nodes.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            if expanded[key] - len(expanded) > _MAX_ALIAS_EXPANSION:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand the document beyond {_MAX_ALIAS_EXPANSION:,} more nodes "
                    "(an alias bomb?)", node.start_mark)
            continue
        if key in expanded:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise yaml.constructor.ConstructorError(
                    None, None, "an alias refers to a node that contains it (recursive document)", child.start_mark)
            if id(child) not in expanded:
                stack.append((child, False))


class _DuplicateJsonKeyError(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key is an error, as in YAML documents."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateJsonKeyError(f"duplicate key {_show(key)}")
        mapping[key] = value
    return mapping


def _load_yaml(text: str) -> object:
    """yaml.safe_load with the duplicate-key check.

    A document that is plain JSON (YAML's subset) is parsed by the json module
    first: generated million-entry blocklists load in a fraction of YAML's time.
    """
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except _DuplicateJsonKeyError as exc:
            raise yaml.YAMLError(str(exc)) from None
        except ValueError:
            pass  # YAML flow style such as {mode: monitor}: not JSON, parse as YAML
    loader = _StrictLoader(text)
    loader.has_anchors = "&" in text
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _invalid(source: str, lines: list[str]) -> PolicyError:
    count = len(lines)
    if count > _MAX_PROBLEMS:
        lines = [*lines[:_MAX_PROBLEMS], f"... and {count - _MAX_PROBLEMS} more problems"]
    noun = "problem" if count == 1 else "problems"
    return PolicyError("\n  ".join([f"{source}: invalid policy ({count} {noun})", *lines]))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(p for p in (exc.context, exc.problem) if p) or "YAML error"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
        return what
    return f"YAML error: {exc}"


def _format_loc(loc: Iterable[str | int]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class whose field list applies at ``loc`` (for "allowed keys" hints)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _error_lines(error: ErrorDetails) -> list[tuple[tuple[str | int, ...], str]]:
    """Turn one pydantic error into (location, message) lines a network engineer can act on."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if kind == "value_error" and isinstance(cause, _ProblemListError):
        return [(loc + sub, message) for sub, message in cause.problems]
    if kind == "value_error" and cause is not None:
        return [(loc, str(cause))]
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return [(loc, f"{_show(value)} is not one of {expected}")]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        model = _model_at(loc[:-1])
        if model is None:
            return [(loc, "unknown key")]
        allowed = [f.alias or n for n, f in model.model_fields.items()]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [(loc, f"unknown key; {hint}allowed keys: {', '.join(allowed)}")]
    if kind == "invalid_key":
        return [(loc[:-1], f"key {_show(value)} is {_kind(value)}; keys must be names")]
    if kind == "missing":
        return [(loc, "required key is missing")]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [(loc, f"{_show(value)} is {_kind(value)}, expected a mapping")]
    if kind in ("tuple_type", "list_type"):
        return [(loc, f"{_show(value)} is {_kind(value)}, expected a list")]
    return [(loc, f"{_show(value)}: {error['msg']}")]


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; ``source`` (usually the path) prefixes every error."""
    try:
        document = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise _invalid(source, [_yaml_problem(exc)]) from None
    except RecursionError:
        raise _invalid(source, ["document is nested too deeply"]) from None
    except UnicodeEncodeError as exc:  # a str argument with a lone surrogate (never from a UTF-8 file)
        raise _invalid(source, [f"not valid Unicode text ({exc.reason} at {exc.start})"]) from None
    if document is None:
        raise _invalid(source, ["policy file is empty (use {} for a policy that blocks nothing)"])
    if not isinstance(document, dict):
        raise _invalid(
            source, [f"top level is {_kind(document)}, expected a mapping (e.g. mode: enforce)"]
        )
    try:
        # by_name=False: the file must say "class" and "ttl", not the Python names.
        return Policy.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        lines = [
            f"{_format_loc(loc)}: {message}"
            for error in exc.errors()
            for loc, message in _error_lines(error)
        ]
        raise _invalid(source, lines) from None
    except RecursionError:
        raise _invalid(source, ["document is nested too deeply"]) from None


MAX_SYMLINKS = 40  # as the kernel's path walk allows
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)


def _mode(mode: int) -> str:
    return f"0{stat.S_IMODE(mode):03o}"


def _untrusted_owner(st: os.stat_result) -> str | None:
    euid = os.geteuid()
    if st.st_uid in (0, euid):
        return None
    return f"owned by uid {st.st_uid}, not root or this process's user (uid {euid}"


def _check_directory(source: str, name: str, fd: int, st: os.stat_result, holds_the_file: bool) -> None:
    """A directory the lookup passes through: whoever can write it can swap what is below it."""
    owner = _untrusted_owner(st)
    if owner:
        raise PolicyError(f"{source}: refusing a policy in directory {name}, {owner})")
    if not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    if os.fstatvfs(fd).f_flag & os.ST_RDONLY:
        return  # a read-only mount (a Kubernetes ConfigMap volume): nobody writes it, whatever the bits
    if st.st_mode & stat.S_ISVTX and st.st_uid == 0 and not holds_the_file:
        # Like /tmp: others may add names but not rename or remove ours, and the next directory
        # down is checked too. As the policy's own directory it is refused: anyone could have
        # made the name first, or the siblings a ..data layout resolves through.
        return
    hint = ("a shared directory: keep the policy in a directory of its own" if st.st_mode & stat.S_ISVTX
            else f"chmod go-w {name}")
    raise PolicyError(f"{source}: refusing a policy in directory {name}, writable by {_who(st.st_mode)} "
                      f"(mode {_mode(st.st_mode)}; {hint})")


def _not_regular(source: str, st: os.stat_result) -> PolicyError:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
    return PolicyError(f"{source}: refusing a policy that is not a regular file ({kind})")


def _open_trusted(source: str) -> int:
    """Resolves `source` one name at a time from /, on descriptors (O_PATH, O_NOFOLLOW), so that
    each directory checked is the one the next name is looked up in, and symlinks (the Kubernetes
    ..data layout) are followed deliberately rather than by the kernel. Every directory a name is
    looked up in, those holding the symlinks included, must be trusted (_check_directory).
    Returns a descriptor of the final file, opened with O_NOFOLLOW; the file's own checks are the
    caller's, on that descriptor. OSError for what the kernel would say."""
    pending = [part for part in reversed(os.path.abspath(source).split("/")) if part]  # next name last
    names: list[str] = []  # the physical path so far, for messages
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    looked_up_in: list[tuple[str, int, os.stat_result]] = []
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd, names = parent, names[:-1]
                continue
            looked_up_in.append(("/" + "/".join(names), os.dup(fd), os.fstat(fd)))
            child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(child)
            if stat.S_ISLNK(st.st_mode):
                try:
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    target = os.readlink("", dir_fd=child)  # the link this descriptor holds
                finally:
                    os.close(child)
                pending.extend(part for part in reversed(target.split("/")) if part)
                if target.startswith("/"):
                    os.close(fd)
                    fd, names = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), []
                continue
            if pending:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(child)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                os.close(fd)
                fd = child
                names.append(name)
                continue
            os.close(child)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(source, st)
            for i, (dir_name, dir_fd, dir_st) in enumerate(looked_up_in):
                _check_directory(source, dir_name, dir_fd, dir_st, holds_the_file=i == len(looked_up_in) - 1)
            # O_NONBLOCK: should the name have become a FIFO meanwhile, the open does not wait.
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, dir_fd=fd)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))  # the path names a directory (or /)
    finally:
        os.close(fd)
        for _, dir_fd, _ in looked_up_in:
            os.close(dir_fd)


def _read_trusted(source: str) -> bytes:
    """The policy's bytes, read from the one descriptor whose owner and mode were checked."""
    fd = _open_trusted(source)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(source, st)
        owner = _untrusted_owner(st)
        if owner:
            raise PolicyError(f"{source}: refusing a policy file {owner}; chown root {source})")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PolicyError(f"{source}: refusing a policy file writable by {_who(st.st_mode)}, not only its "
                              f"owner (mode {_mode(st.st_mode)}; chmod go-w {source})")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_policy(path: str | os.PathLike[str]) -> tuple[Policy, str]:
    """Read and validate a policy file; returns it with its text (kept to diff against later).

    Trust first: the file and every directory its lookup passes through must be owned by root or
    this process's user and writable by nobody else (see _open_trusted); the text is read from the
    descriptor that was checked, so a swap of the path meanwhile cannot slip other content in."""
    source = os.fspath(path)
    try:
        text = _read_trusted(source).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"{source}: cannot read policy file: not valid UTF-8 (byte offset {exc.start})"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError(f"{source}: cannot read policy file: {reason}") from None
    return parse_policy(text, source), text


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; I/O and encoding failures are PolicyErrors too."""
    return read_policy(path)[0]
