"""Policy loader fuzzing: hypothesis-generated documents through read_policy/parse_policy and
through the daemon's reload path.

1. A valid policy (random lists of documentation addresses, classes, rules) with exactly one
   corruption at a known field (wrong type, unknown key, bad CIDR/IP/port/protocol/regex/name,
   huge integers, a missing key, a duplicate class, a ttl where none belongs): PolicyError whose
   problem lines start with that field's path.
2. Document-level attacks: duplicate keys, alias bombs ("billion laughs"), recursive aliases,
   nesting beyond libyaml's limit, unsafe tags, integers int() refuses, lone surrogates (JSON
   escapes), bytes that are not UTF-8: PolicyError naming the line or the problem.
3. Random structures (valid and invalid keys mixed, any YAML value, as YAML or JSON; random
   text): a Policy or a PolicyError, never another exception.
4. The daemon's reload (Daemon.reload with the fast and slow path replaced by recorders, so no
   root is needed): an invalid document is counted as an error and changes nothing (the policy
   object, the generation, nothing applied); a valid one is applied with the next generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperion.daemon import daemon as daemon_module
from hyperion.daemon.daemon import Daemon, DaemonOptions
from hyperion.errors import PolicyError
from hyperion.fastpath.loader import object_capacities
from hyperion.fastpath.maps import CompiledPolicy
from hyperion.kernel.abi import Abi, load_abi
from hyperion.policy.loading import parse_policy, read_policy
from hyperion.policy.model import Policy

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ---- valid building blocks (documentation addresses only) --------------------------------------

V4 = st.tuples(st.sampled_from(["192.0.2", "198.51.100", "203.0.113"]), st.integers(0, 255)).map(
    lambda t: f"{t[0]}.{t[1]}")
V6 = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(lambda t: f"2001:db8:{t[0]:x}::{t[1]:x}")
ADDRESS = st.one_of(V4, V6)
CIDR = st.one_of(
    st.sampled_from(["192.0.2.0/24", "198.51.100.0/25", "203.0.113.128/26", "2001:db8::/32", "2001:db8:bad::/48"]),
    ADDRESS)
LABEL = st.text(alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=63)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 253)
CLASS = st.fixed_dictionaries({"protocol": st.sampled_from(["tcp", "udp", 6, 17, "TCP"]),
                               "port": st.integers(1, 65535)},
                              optional={"on_failure": st.sampled_from(["pass", "drop", "DROP"])})
DNS_RULE = st.one_of(
    st.fixed_dictionaries({"match": st.one_of(DOMAIN, DOMAIN.map(lambda d: "*." + d)),
                           "action": st.sampled_from(["drop", "pass", "alert", "nxdomain", "refuse"])},
                          optional={"qtype": st.sampled_from(["A", "AAAA", 28, "TYPE65"])}),
    st.fixed_dictionaries({"regex": st.sampled_from([r"^[a-z0-9]{30,}\.", "(?i)evil", "x+y"]),
                           "action": st.just("block_source"), "ttl": st.sampled_from(["10m", 30, "1h30m"])}),
)
SIGNATURE = st.fixed_dictionaries({
    "class": st.fixed_dictionaries({"protocol": st.sampled_from(["tcp", "udp"]), "port": st.integers(1, 65535)}),
    "literal": st.text(alphabet=string.printable, min_size=1, max_size=20),
    "action": st.sampled_from(["drop", "alert"])})


def _class_key(c: dict[str, Any]) -> tuple[int, int]:
    protocol = str(c["protocol"]).lower()
    return {"tcp": 6, "udp": 17}.get(protocol, int(protocol) if protocol.isdigit() else -1), int(c["port"])


def _unique_classes(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, kept = set(), []
    for c in classes:
        key = _class_key(c)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def _dns_class_for_rules(doc: dict[str, Any]) -> dict[str, Any]:
    """DNS rules come with a DNS class (udp/53): a DNS rule no class sees is an error of its own."""
    if doc.get("slow_path", {}).get("dns_rules"):
        classes = doc.setdefault("fast_path", {}).setdefault("redirect_ports", [])
        if not any(_class_key(c)[1] == 53 for c in classes):
            classes.append({"protocol": "udp", "port": 53})
    return doc


VALID_POLICY = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["enforce", "monitor", "Monitor"]),
    "fast_path": st.fixed_dictionaries({}, optional={
        "allow_cidrs": st.lists(CIDR, max_size=4), "drop_ips": st.lists(ADDRESS, max_size=6),
        "drop_cidrs": st.lists(CIDR, max_size=4),
        "redirect_ports": st.lists(CLASS, max_size=4).map(_unique_classes)}),
    "slow_path": st.fixed_dictionaries({}, optional={
        "malformed_dns_action": st.sampled_from(["drop", "pass", "alert"]),
        "dns_rules": st.lists(DNS_RULE, max_size=4), "signatures": st.lists(SIGNATURE, max_size=3)}),
}).map(_dns_class_for_rules)


def _host_bits(cidr: str) -> str:
    return "198.51.100.5/24" if "." in cidr else "2001:db8::1/32"


# ---- one corruption at a known place ----------------------------------------------------------

HUGE = st.sampled_from([10**400, -(10**400), 10**30, -(10**30), 2**64, 2**63, -1, 0])
WRONG_CONTAINER = st.sampled_from([[1, 2], {"a": 1}, 42, True, "text", 1.5])
BAD_CIDRS = ["198.51.100.5/24", "198.51.100.0/33", "2001:db8::/129", "not-a-cidr", "203.0.113.0/", "/24", "",
             "fe80::%eth0/64", "198.51.100.0/24/8", "2001:db8::1::/64", 5, None, [], {"a": "b"}]
BAD_IPS = ["198.51.100.256", "198.51.100.0/24", "2001:db8::g", "fe80::1%eth0", "", "1.2.3", 7, None, ["x"]]
BAD_PORTS = [0, 65536, -1, 10**30, 10**400, "abc", 1.5, True, None, [], "53/udp", "٥٣"]
BAD_PROTOCOLS = ["icmp", "sctp", 300, -1, "tcpp", True, None, 1, 10**30, 1.0]
BAD_REGEXES = ["(", "[a-", "*a", "(?P<", "a{2,1}", "(?<=a+)b", "", 5]
BAD_DOMAINS = ["a..com", "x" * 64 + ".com", "ev*l.com", "", "ünïcode.com", ".", "*.", "a.*.com", 12, "a b.com"]
BAD_TTLS = ["10x", -1, 0, True, "1h30", 10**30, 10**400, "1e999", ".5.5s", [], "36501d"]


@dataclass
class Corrupted:
    document: dict[str, Any]
    path: str  # what the problem line must start with


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    section = doc.get(name)
    if not isinstance(section, dict):
        section = doc[name] = {}
    return section


@st.composite
def corrupted(draw: st.DrawFn) -> Corrupted:
    doc = draw(VALID_POLICY)
    kind = draw(st.sampled_from(["top_type", "section_type", "list_type", "unknown_key", "cidr", "ip", "port",
                                 "protocol", "regex", "domain", "ttl", "ttl_without_block", "missing",
                                 "duplicate_class", "mode", "action", "qtype"]))
    fast, slow = _section(doc, "fast_path"), _section(doc, "slow_path")
    if kind == "top_type":
        name = draw(st.sampled_from(["fast_path", "slow_path"]))
        doc[name] = draw(st.sampled_from([[1, 2], 42, "text", True]))
        return Corrupted(doc, name)
    if kind == "section_type":
        name = draw(st.sampled_from(["allow_cidrs", "drop_ips", "drop_cidrs", "redirect_ports"]))
        fast[name] = draw(st.sampled_from([{"a": 1}, 42, "198.51.100.1", True]))
        return Corrupted(doc, f"fast_path.{name}")
    if kind == "list_type":
        rules = slow.setdefault("dns_rules", [])
        at = draw(st.integers(0, len(rules)))
        rules.insert(at, draw(st.sampled_from([[1], 42, "evil.com", None, True])))
        return Corrupted(doc, f"slow_path.dns_rules[{at}]")
    if kind == "unknown_key":
        where = draw(st.sampled_from(["", "fast_path", "slow_path"]))
        key = draw(st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12).filter(
            lambda k: k not in ("mode", "fast_path", "slow_path", "allow_cidrs", "drop_ips", "drop_cidrs",
                                "redirect_ports", "malformed_dns_action", "dns_rules", "signatures")))
        (_section(doc, where) if where else doc)[key] = draw(st.one_of(st.none(), st.integers(), st.text()))
        return Corrupted(doc, f"{where}.{key}" if where else key)
    if kind in ("cidr", "ip"):
        name = draw(st.sampled_from(["allow_cidrs", "drop_cidrs"])) if kind == "cidr" else "drop_ips"
        entries = fast.setdefault(name, [])
        bad = draw(st.sampled_from([*BAD_CIDRS, _host_bits(draw(CIDR))] if kind == "cidr" else BAD_IPS))
        at = draw(st.integers(0, len(entries)))
        entries.insert(at, bad)
        return Corrupted(doc, f"fast_path.{name}[{at}]")
    if kind in ("port", "protocol"):
        classes = fast.setdefault("redirect_ports", [])
        at = draw(st.integers(0, len(classes)))
        cls = {"protocol": "udp", "port": 40000 + at}
        cls[kind] = draw(st.sampled_from(BAD_PORTS if kind == "port" else BAD_PROTOCOLS))
        classes.insert(at, cls)
        return Corrupted(doc, f"fast_path.redirect_ports[{at}].{kind}")
    if kind in ("regex", "domain", "ttl", "ttl_without_block", "missing", "action", "qtype"):
        rules = slow.setdefault("dns_rules", [])
        at = draw(st.integers(0, len(rules)))
        rule: dict[str, Any] = {"match": "example.test", "action": "drop"}
        target = f"slow_path.dns_rules[{at}]"
        if kind == "regex":
            rule = {"regex": draw(st.sampled_from(BAD_REGEXES)), "action": "alert"}
            target += ".regex"
        elif kind == "domain":
            rule["match"] = draw(st.sampled_from(BAD_DOMAINS))
            target += ".match"
        elif kind == "ttl":
            rule.update(action="block_source", ttl=draw(st.sampled_from(BAD_TTLS)))
            target += ".ttl"
        elif kind == "ttl_without_block":
            rule["ttl"] = "10m"
            target += ".ttl"
        elif kind == "missing":
            del rule["action"]
            target += ".action"
        elif kind == "action":
            rule["action"] = draw(st.sampled_from(["explode", "DROPP", 1, None, ["drop"]]))
            target += ".action"
        else:
            rule["qtype"] = draw(st.sampled_from(["AAAAA", 0, 65536, 10**30, "TYPE", True, 1.5]))
            target += ".qtype"
        rules.insert(at, rule)
        return Corrupted(doc, target)
    if kind == "duplicate_class":
        classes = [c for c in fast.get("redirect_ports", []) if _class_key(c) != (17, 53)]
        classes += [{"protocol": "udp", "port": 53}, {"protocol": "17", "port": "53"}]  # the same class twice
        fast["redirect_ports"] = classes
        return Corrupted(doc, f"fast_path.redirect_ports[{len(classes) - 1}]")
    if kind == "mode":
        doc["mode"] = draw(st.sampled_from(["enforcing", "", 1, [], {"x": 1}]))
        return Corrupted(doc, "mode")
    raise AssertionError(kind)


def _render(document: Any, as_json: bool) -> str:
    return json.dumps(document) if as_json else yaml.safe_dump(document, allow_unicode=True)


def _problem_lines(error: PolicyError) -> list[str]:
    return [line.strip() for line in str(error).splitlines()[1:]]


@FUZZ
@given(case=corrupted(), as_json=st.booleans())
def test_one_corruption_is_reported_at_its_field(case: Corrupted, as_json: bool) -> None:
    text = _render(case.document, as_json)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    lines = _problem_lines(caught.value)
    assert str(caught.value).startswith("p.yaml: invalid policy (1 problem)"), str(caught.value)
    assert lines[0].startswith(f"{case.path}: "), (case.path, lines)


@FUZZ
@given(document=VALID_POLICY, as_json=st.booleans())
def test_valid_documents_parse(document: dict[str, Any], as_json: bool) -> None:
    policy = parse_policy(_render(document, as_json))
    fast = document.get("fast_path", {})
    assert len(policy.fast_path.redirect_ports) == len(fast.get("redirect_ports", []))
    assert len(policy.slow_path.dns_rules) == len(document.get("slow_path", {}).get("dns_rules", []))


# ---- document-level attacks ---------------------------------------------------------------------

def _bomb(levels: int, width: int) -> str:
    lines = ["x-0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


DOCUMENT_ATTACKS = [
    ("duplicate top-level key", "mode: enforce\nfast_path: {}\nmode: monitor\n", "duplicate key 'mode'"),
    ("duplicate nested key", "fast_path:\n  drop_ips: []\n  drop_ips: ['198.51.100.1']\n", "duplicate key 'drop_ips'"),
    ("duplicate key in JSON", '{"mode": "enforce", "mode": "monitor"}', "duplicate key 'mode'"),
    ("billion laughs in a field", _bomb(9, 10) + "mode: *a8\n", "aliases expand the document"),
    ("billion laughs under an unknown key", _bomb(9, 10), "aliases expand the document"),
    ("billion laughs in a list", _bomb(9, 10).replace("x-8:", "fast_path:\n  drop_ips:") , "aliases expand"),
    ("recursive alias", "mode: &m [*m]\n", "recursive document"),
    ("deep flow nesting", "mode: " + "[" * 5000 + "]" * 5000 + "\n", "exceeded maximum nesting depth"),
    ("deep JSON nesting", '{"mode": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("python tag", "mode: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("integer beyond int()", "fast_path:\n  redirect_ports: [{protocol: udp, port: 1" + "0" * 5000 + "}]\n",
     "integer of 5001 characters is too long"),
    ("lone surrogate in a literal (JSON escape)",
     '{"slow_path": {"signatures": [{"class": {"protocol": "tcp", "port": 1}, "literal": "\\ud800", '
     '"action": "drop"}]}}', "slow_path.signatures[0].literal: '\\ud800' is not valid Unicode text"),
    ("400-digit ttl", "slow_path:\n  dns_rules: [{match: a.test, action: block_source, ttl: 1" + "0" * 400 + "}]\n",
     "slow_path.dns_rules[0].ttl: invalid duration 1000"),
    ("top level is a list", "- mode: enforce\n", "top level is a list"),
    ("empty document", "# nothing\n", "policy file is empty"),
    ("NUL byte", "mode: enforce\x00\n", "control characters are not allowed"),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in DOCUMENT_ATTACKS],
                         ids=[name for name, _, _ in DOCUMENT_ATTACKS])
def test_document_attacks_are_policy_errors(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert expected in str(caught.value)


def test_aliases_within_the_budget_still_work() -> None:
    """Anchors are legitimate YAML: sharing a list is fine, only an explosion is refused."""
    policy = parse_policy("fast_path:\n  drop_cidrs: &n ['203.0.113.0/24', '2001:db8:bad::/48']\n  allow_cidrs: *n\n")
    assert [str(n) for n in policy.fast_path.allow_cidrs] == ["203.0.113.0/24", "2001:db8:bad::/48"]
    # 10^5 leaves from 5 levels of 10: within the budget, so the answer is about the field.
    with pytest.raises(PolicyError) as caught:
        parse_policy(_bomb(5, 10) + "mode: *a4\n")
    assert [line for line in _problem_lines(caught.value) if line.startswith("mode: ")] == [
        "mode: [[[[...], [...], [...], [...], [...], [...], [...], [...]... is not one of 'enforce', 'monitor'"]


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=64), position=st.integers(0, 200))
def test_bytes_that_are_not_utf8_are_refused(tmp_path_factory: pytest.TempPathFactory, garbage: bytes,
                                            position: int) -> None:
    body = b"fast_path:\n  drop_ips: ['198.51.100.1']\n"
    at = min(position, len(body))
    data = body[:at] + b"\xff" + garbage + body[at:]
    path = tmp_path_factory.mktemp("bytes") / "policy.yaml"
    path.write_bytes(data)
    with pytest.raises(PolicyError) as caught:
        read_policy(path)
    assert str(caught.value) == f"{path}: cannot read policy file: not valid UTF-8 (byte offset {at})"


# ---- random structures -----------------------------------------------------------------------------

KEYS = st.one_of(st.sampled_from(["mode", "fast_path", "slow_path", "allow_cidrs", "drop_ips", "drop_cidrs",
                                  "redirect_ports", "protocol", "port", "on_failure", "malformed_dns_action",
                                  "dns_rules", "signatures", "match", "regex", "qtype", "action", "ttl", "class",
                                  "literal", "<<"]), st.text(max_size=8))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE, st.floats(), st.text(max_size=20),
                    st.sampled_from(["tcp", "udp", "53", "198.51.100.0/24", "2001:db8::/32", "evil.com", "*.x.test",
                                     "drop", "block_source", "10m", "(", "enforce", "monitor"]))
ANY_VALUE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(KEYS, inner, max_size=4)), max_leaves=25)


def _dump_any(document: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(document, allow_nan=True)
    return yaml.safe_dump(document, allow_unicode=True)


@FUZZ
@given(document=st.dictionaries(KEYS, ANY_VALUE, max_size=5), as_json=st.booleans())
def test_random_structures_give_a_policy_or_a_policy_error(document: dict[Any, Any], as_json: bool) -> None:
    try:
        text = _dump_any(document, as_json)
    except (TypeError, ValueError):  # JSON: non-string keys
        text = _dump_any(document, False)
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        assert str(exc).startswith("<policy>: invalid policy (")
    else:
        assert isinstance(policy, Policy)


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_gives_a_policy_or_a_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


# ---- the daemon's reload path ------------------------------------------------------------------------

@dataclass
class RecordingFastPath:
    """What Daemon.apply_policy uses of a FastPath: the real ABI and capacities, applies recorded."""

    abi: Abi
    capacity: dict[str, int]
    generation: int = 1
    applied: list[CompiledPolicy] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def capacities(self) -> dict[str, int]:
        return self.capacity

    def apply(self, compiled: CompiledPolicy, retire: Any = None) -> int:
        self.applied.append(compiled)
        self.generation += 1
        return self.generation

    def active_slot(self) -> int:
        return self.generation & 1

    def record_applied_policy(self, text: str) -> None:
        self.texts.append(text)


class RecordingSlowPath:
    instances: list[RecordingSlowPath] = []

    def __init__(self, fastpath: Any, ifname: str, policy: Policy, options: Any, event_sink: Any = None,
                 compiled: Any = None) -> None:
        self.policy, self.running = policy, False
        RecordingSlowPath.instances.append(self)

    def start(self) -> None:
        self.running = True

    def update(self, policy: Policy, compiled: Any = None) -> None:
        self.policy = policy

    def stop(self) -> None:
        self.running = False


@pytest.fixture(scope="module")
def reloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, RecordingFastPath, Path]]:
    abi = load_abi()
    fastpath = RecordingFastPath(abi, object_capacities(abi.object_path))
    path = tmp_path_factory.mktemp("reload") / "policy.yaml"
    path.write_text("fast_path:\n  drop_ips: ['198.51.100.42']\n  redirect_ports: [{protocol: udp, port: 53}]\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daemon_module, "SlowPath", RecordingSlowPath)
        daemon = Daemon(DaemonOptions(ifname="fuzz0", policy_path=path, watch_policy=False, metrics_addr=None))
        daemon.fastpath = fastpath  # type: ignore[assignment]
        assert daemon.reload()
        yield daemon, fastpath, path


DOCUMENTS = st.one_of(corrupted().map(lambda c: c.document), VALID_POLICY,
                      st.dictionaries(KEYS, ANY_VALUE, max_size=4))


@FUZZ
@given(document=DOCUMENTS, as_json=st.booleans())
def test_reload_never_replaces_the_running_policy_with_an_invalid_one(
        reloading: tuple[Daemon, RecordingFastPath, Path], document: dict[str, Any], as_json: bool) -> None:
    daemon, fastpath, path = reloading
    try:
        text = _dump_any(document, as_json)
    except (TypeError, ValueError):
        text = _dump_any(document, False)
    tmp = path.with_name(".policy.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    try:
        expected: Policy | None = read_policy(path)[0]
    except PolicyError:
        expected = None
    policy, generation, applied = daemon.policy, fastpath.generation, len(fastpath.applied)
    errors, successes = daemon.reloads.results["error"], daemon.reloads.results["success"]
    ok = daemon.reload()
    if expected is None:
        assert not ok
        assert daemon.policy is policy
        assert (fastpath.generation, len(fastpath.applied)) == (generation, applied)
        assert daemon.reloads.results == {"success": successes, "error": errors + 1}
    elif ok:  # valid, and it fits the maps and compiles (Hyperscan)
        assert daemon.policy == expected and daemon.policy is not policy
        assert (fastpath.generation, len(fastpath.applied)) == (generation + 1, applied + 1)
        assert fastpath.texts[-1] == text
        assert daemon.reloads.results == {"success": successes + 1, "error": errors}
        slow = daemon.slowpath
        running = isinstance(slow, RecordingSlowPath) and slow.running and slow.policy == expected
        assert running == bool(expected.fast_path.redirect_ports)
    else:
        assert daemon.policy is policy and fastpath.generation == generation


def test_an_unexpected_error_during_reload_keeps_the_running_policy(
        reloading: tuple[Daemon, RecordingFastPath, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only PolicyError: a bug anywhere in loading or compiling must not end the daemon."""
    daemon, fastpath, path = reloading
    path.write_text("fast_path:\n  drop_ips: ['198.51.100.43']\n")

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the compiler")

    monkeypatch.setattr(daemon_module.PolicyCompiler, "compile", broken)
    policy, generation, errors = daemon.policy, fastpath.generation, daemon.reloads.results["error"]
    assert daemon.reload() is False
    assert daemon.policy is policy and fastpath.generation == generation
    assert daemon.reloads.results["error"] == errors + 1
