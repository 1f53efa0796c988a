"""Name rules compiled into hyp_dns_short / hyp_dns_long, without the kernel.

The expected keys come from an encoder written here from the key format of DESIGN14 and
hyperion_abi.h (labels in reverse order, each as length byte + lower-cased bytes, no root label,
zero-padded), checked against dnspython's labels; the enumerator values from the header's text.
"""

from __future__ import annotations

import re
import struct
import time

import dns.name
import pytest

from hyperion.errors import CapacityError
from hyperion.kernel.abi import Abi
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from hyperion.policy.model import DnsRule, Policy, SlowPathSection
from tests.support.paths import BPF_DIR

HEADER = (BPF_DIR / "include" / "hyperion_abi.h").read_text()


def _enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} {{(.*?)}};", HEADER, re.S)
    assert body, name
    return {m[0]: int(m[1]) for m in re.findall(r"^\s*(HYP_\w+)\s*=\s*(\d+),", body[1], re.M)}


ACTION = _enum("hyp_dns_action")
KIND = _enum("hyp_dns_kind")
F_QTYPES = _enum("hyp_dns_rule_flag")["HYP_DNS_F_QTYPES"]
CLASS_F = _enum("hyp_class_flag")
SHORT_NAME, LONG_NAME = 32, 256  # HYP_CAP_DNS_SHORT_NAME, HYP_CAP_DNS_NAME
SHORT_KEY = struct.Struct(f"<HBx{SHORT_NAME}s")  # struct hyp_dns_key_short: qtype, kind, pad, name
LONG_KEY = struct.Struct(f"<HBx{LONG_NAME}s")
RULE = struct.Struct("<IBBxxQ")  # struct hyp_dns_rule: rule_id, action, flags, reserved, hits
CLASS_VALUE = struct.Struct("<IIII")  # struct hyp_class_value: class_id, on_failure, flags, reserved
UDP53 = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
# policy action -> enum hyp_dns_action (DESIGN14: pass and allow are ALLOW, block_source SLOWPATH)
TO_DNS_ACTION = {"drop": "HYP_DNS_DROP", "nxdomain": "HYP_DNS_NXDOMAIN", "refuse": "HYP_DNS_REFUSE",
                 "pass": "HYP_DNS_ALLOW", "allow": "HYP_DNS_ALLOW", "alert": "HYP_DNS_ALERT",
                 "block_source": "HYP_DNS_SLOWPATH"}


def key_name(name: str) -> bytes:
    """The design's key bytes, written from its text: reversed labels, length-prefixed, lower-cased."""
    labels = name.rstrip(".").split(".")
    return b"".join(bytes([len(label)]) + label.lower().encode() for label in reversed(labels))


def dnspython_key_name(name: str) -> bytes:
    labels = [label for label in dns.name.from_text(name).labels if label]  # the root label is b""
    return b"".join(bytes([len(label)]) + label.lower() for label in reversed(labels))


def decode(compiled_images: dict[str, object], name: str) -> dict[tuple[int, str, bytes], tuple[int, int, int, int]]:
    """(qtype, kind, name bytes) -> (rule_id, action, flags, hits) of one DNS map image."""
    image = compiled_images[name]
    key = SHORT_KEY if name == "hyp_dns_short" else LONG_KEY
    keys, values, count = image.keys, image.values, image.count  # type: ignore[attr-defined]
    assert len(keys) == count * key.size and len(values) == count * RULE.size
    out = {}
    for i in range(count):
        qtype, kind, raw = key.unpack_from(keys, i * key.size)
        stripped = raw.rstrip(b"\0")
        assert raw == stripped.ljust(len(raw), b"\0")  # zero-padded
        entry = (qtype, {v: k for k, v in KIND.items()}[kind], stripped)
        assert entry not in out, f"duplicate key {entry}"
        out[entry] = RULE.unpack_from(values, i * RULE.size)
    return out


def compile_text(abi: Abi, text: str, capacities: dict[str, int] | None = None) -> object:
    return PolicyCompiler(abi, capacities or {}).compile(parse_policy(text))


@pytest.mark.parametrize("name", ["www.evil.com", "WWW.Evil.COM", "a.b.c.d.e.f.g", "x", "_dmarc.example.test",
                                  "xn--bcher-kva.example", "a" * 63 + ".test"])
def test_key_names_are_reversed_labels_as_dnspython_reads_them(abi: Abi, name: str) -> None:
    compiled = compile_text(abi, UDP53 + f"slow_path:\n  dns_rules: [{{match: '{name}', action: drop}}]\n")
    images = decode(compiled.images, "hyp_dns_short") | decode(compiled.images, "hyp_dns_long")  # type: ignore[attr-defined]
    assert key_name(name) == dnspython_key_name(name)
    assert list(images) == [(0, "HYP_DNS_EXACT", dnspython_key_name(name))]


def test_the_design_example_key(abi: Abi) -> None:
    compiled = compile_text(abi, UDP53 + "slow_path:\n  dns_rules: [{match: www.Evil.com, action: drop}]\n")
    raw = compiled.images["hyp_dns_short"].keys  # type: ignore[attr-defined]
    assert raw == b"\0\0" + bytes([KIND["HYP_DNS_EXACT"], 0]) + b"\x03com\x04evil\x03www".ljust(32, b"\0")


def test_names_longer_than_32_key_bytes_go_to_the_long_map(abi: Abi) -> None:
    fits = "a" * 27 + ".test"  # key bytes (1 + 4) + (1 + 27) = 33: long
    exact32 = "a" * 26 + ".test"  # (1 + 4) + (1 + 26) = 32: short
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters, 254 key bytes
    text = UDP53 + "slow_path:\n  dns_rules:\n" + "".join(
        f"    - {{match: '{n}', action: drop}}\n" for n in (fits, exact32, longest)) + \
        "    - {match: '*." + "e" * 40 + ".test', action: refuse}\n"
    compiled = compile_text(abi, text)
    short, long = decode(compiled.images, "hyp_dns_short"), decode(compiled.images, "hyp_dns_long")  # type: ignore[attr-defined]
    assert len(key_name(exact32)) == 32 and len(key_name(fits)) == 33 and len(key_name(longest)) == 254
    assert set(short) == {(0, "HYP_DNS_EXACT", key_name(exact32))}
    assert set(long) == {(0, "HYP_DNS_EXACT", key_name(fits)), (0, "HYP_DNS_EXACT", key_name(longest)),
                         (0, "HYP_DNS_SUFFIX", key_name("e" * 40 + ".test"))}
    assert long[(0, "HYP_DNS_SUFFIX", key_name("e" * 40 + ".test"))] == (4, ACTION["HYP_DNS_REFUSE"], 0, 0)


POLICY = UDP53 + """slow_path:
  dns_rules:
    - {match: evil.com, action: drop}                      # 1
    - {match: '*.evil.com', action: nxdomain}              # 2
    - {match: evil.com, action: alert}                     # 3: same key as 1, 1 wins
    - {match: a.test, qtype: AAAA, action: refuse}         # 4: qtype only: placeholder for a.test
    - {match: b.test, qtype: A, action: drop}              # 5
    - {match: b.test, action: allow}                       # 6: the any-qtype entry of b.test, flagged
    - {match: b.test, qtype: A, action: alert}             # 7: same key as 5, 5 wins
    - {regex: '^x', action: drop}                          # 8: regex: not in the maps
    - {match: c2.test, action: block_source, ttl: 10m}     # 9: handed to the slow path
    - {match: '*.ok.test', action: pass}                   # 10
    - {match: '*.b.test', qtype: TXT, action: drop}        # 11: suffix placeholder
"""


def test_entries_rule_ids_actions_and_placeholders(abi: Abi) -> None:
    compiled = compile_text(abi, POLICY)
    got = decode(compiled.images, "hyp_dns_short")  # type: ignore[attr-defined]
    assert compiled.images["hyp_dns_long"].count == 0  # type: ignore[attr-defined]
    e, s = "HYP_DNS_EXACT", "HYP_DNS_SUFFIX"
    a = ACTION
    assert got == {
        (0, e, key_name("evil.com")): (1, a["HYP_DNS_DROP"], 0, 0),
        (0, s, key_name("evil.com")): (2, a["HYP_DNS_NXDOMAIN"], 0, 0),
        (28, e, key_name("a.test")): (4, a["HYP_DNS_REFUSE"], 0, 0),
        (0, e, key_name("a.test")): (0, a["HYP_DNS_NONE"], F_QTYPES, 0),
        (1, e, key_name("b.test")): (5, a["HYP_DNS_DROP"], 0, 0),
        (0, e, key_name("b.test")): (6, a["HYP_DNS_ALLOW"], F_QTYPES, 0),
        (0, e, key_name("c2.test")): (9, a["HYP_DNS_SLOWPATH"], 0, 0),
        (0, s, key_name("ok.test")): (10, a["HYP_DNS_ALLOW"], 0, 0),
        (16, s, key_name("b.test")): (11, a["HYP_DNS_DROP"], 0, 0),
        (0, s, key_name("b.test")): (0, a["HYP_DNS_NONE"], F_QTYPES, 0),
    }


@pytest.mark.parametrize(("action", "expected"), sorted(TO_DNS_ACTION.items()))
def test_each_action_maps_to_its_dns_action(abi: Abi, action: str, expected: str) -> None:
    ttl = ", ttl: 1m" if action == "block_source" else ""
    compiled = compile_text(abi, UDP53 + f"slow_path:\n  dns_rules: [{{match: a.test, action: {action}{ttl}}}]\n")
    assert decode(compiled.images, "hyp_dns_short") == {  # type: ignore[attr-defined]
        (0, "HYP_DNS_EXACT", key_name("a.test")): (1, ACTION[expected], 0, 0)}


def test_label_bitmaps(abi: Abi) -> None:
    deep = ".".join(["l"] * 70)
    text = UDP53 + f"""slow_path:
  dns_rules:
    - {{match: a.b.test, action: drop}}
    - {{match: test, action: drop}}
    - {{match: '*.test', action: drop}}
    - {{match: '*.x.y.z.test', qtype: A, action: drop}}
    - {{match: '{deep}', action: drop}}
    - {{regex: '^a\\.b\\.c\\.d\\.e$', action: drop}}
"""
    compiled = compile_text(abi, text)
    assert compiled.dns_exact_labels == (1 << 3) | (1 << 1) | (1 << 63)  # type: ignore[attr-defined]
    assert compiled.dns_suffix_labels == (1 << 1) | (1 << 4)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("malformed", "expected"), [("drop", "HYP_DNS_DROP"), ("pass", "HYP_DNS_ALLOW"),
                                                      ("alert", "HYP_DNS_ALERT")])
def test_malformed_dns_action_goes_to_the_settings(abi: Abi, malformed: str, expected: str) -> None:
    compiled = compile_text(abi, f"slow_path:\n  malformed_dns_action: {malformed}\n")
    assert compiled.dns_malformed == ACTION[expected]  # type: ignore[attr-defined]


def _class_flags(abi: Abi, text: str) -> list[int]:
    image = compile_text(abi, text).images["hyp_classes"]  # type: ignore[attr-defined]
    return [CLASS_VALUE.unpack_from(image.values, i * CLASS_VALUE.size)[2] for i in range(image.count)]


DNS, SLOW = CLASS_F["HYP_CLASS_F_DNS"], CLASS_F["HYP_CLASS_F_SLOWPATH"]


@pytest.mark.parametrize(("slow_path", "expected"), [
    ("{}", DNS),  # nothing for the slow path: redirects nothing
    ("{dns_rules: [{match: a.test, action: drop}, {match: '*.b.test', action: nxdomain}]}", DNS),
    ("{dns_rules: [{match: a.test, action: drop}, {regex: '^x', action: alert}]}", DNS | SLOW),
    ("{dns_rules: [{match: a.test, action: block_source, ttl: 1m}]}", DNS | SLOW),
    ("{signatures: [{class: {protocol: udp, port: 53}, literal: x, action: drop}]}", DNS | SLOW),
    ("{signatures: [{class: {protocol: tcp, port: 80}, literal: x, action: drop}]}", DNS),
])
def test_a_udp_dns_class_is_flagged_by_what_the_slow_path_has_to_do(abi: Abi, slow_path: str, expected: int) -> None:
    assert _class_flags(abi, UDP53 + f"slow_path: {slow_path}\n") == [expected]


def test_other_classes_keep_the_slow_path(abi: Abi) -> None:
    text = ("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}, {protocol: tcp, port: 53}, "
            "{protocol: udp, port: 5353}, {protocol: tcp, port: 8080}]\n"
            "slow_path: {dns_rules: [{match: a.test, action: drop}]}\n")
    # udp/53: name rules in XDP only; tcp/53: whole queries in XDP, the slow path reassembles the rest
    # (DESIGN14B); the others as today.
    assert _class_flags(abi, text) == [DNS, DNS | SLOW, SLOW, SLOW]
    assert _class_flags(abi, text.replace("slow_path: {", "slow_path: {dns_ports: [53, 5353], ")) == \
        [DNS, DNS | SLOW, DNS, SLOW]


def test_no_udp_dns_class_means_empty_dns_maps(abi: Abi) -> None:
    # A tcp DNS class is judged in XDP too (DESIGN14B) unless the names stay in the slow path.
    compiled = compile_text(abi, "fast_path:\n  redirect_ports: [{protocol: tcp, port: 53}]\n"
                                 "slow_path: {dns_name_rules: slow_path, dns_rules: [{match: a.test, action: drop}]}\n")
    assert compiled.entry_counts()["hyp_dns_short"] == compiled.entry_counts()["hyp_dns_long"] == 0  # type: ignore[attr-defined]
    assert compiled.dns_exact_labels == 0  # type: ignore[attr-defined]


def test_more_names_than_a_map_holds_is_a_capacity_error(abi: Abi) -> None:
    text = UDP53 + "slow_path:\n  dns_rules:\n" + "".join(
        f"    - {{match: n{i}.test, action: drop}}\n" for i in range(5)) + \
        "    - {match: q.test, qtype: A, action: drop}\n"  # and its placeholder: 7 entries
    with pytest.raises(CapacityError, match=r"^slow_path\.dns_rules: 7 entries for map hyp_dns_short, which holds "
                       r"at most 6; nothing was changed$"):
        compile_text(abi, text, {"hyp_dns_short": 6})
    assert compile_text(abi, text, {"hyp_dns_short": 7}).entry_counts()["hyp_dns_short"] == 7  # type: ignore[attr-defined]
    assert abi.capacity["dns_names"] == _enum("hyp_capacity").get("HYP_CAP_DNS_NAMES", 2097152)


def test_a_quarter_million_name_rules_compile_in_seconds(abi: Abi) -> None:
    """The compiler's share of a big policy (1M rules took 3-5 s on the 2-core machine, see
    docs/policy.md); the rules are built without validation, which is not the compiler's time."""
    count = 250_000
    rules = tuple(DnsRule.model_construct(match=f"host{i}.zone{i % 1000}.example", regex=None, qtype=None,
                                          action="drop", ttl_seconds=None, block_rate=None) for i in range(count - 1))
    rules += (DnsRule.model_construct(match="*.last.example", regex=None, qtype=None, action="nxdomain",
                                      ttl_seconds=None, block_rate=None),)
    policy = Policy.model_construct(mode="enforce", fast_path=parse_policy(UDP53).fast_path,
                                    slow_path=SlowPathSection.model_construct(
                                        malformed_dns_action="drop", dns_ports=(53,), dns_rules=rules,
                                        signatures=(), never_block=(), never_block_defaults=True))
    start = time.perf_counter()
    compiled = PolicyCompiler(abi, {"hyp_dns_short": abi.capacity["dns_names"]}).compile(policy)
    took = time.perf_counter() - start
    print(f"{count} name rules compiled in {took:.2f} s")
    image = compiled.images["hyp_dns_short"]
    assert image.count == count
    key = SHORT_KEY.unpack_from(image.keys, 123_456 * SHORT_KEY.size)
    assert key == (0, KIND["HYP_DNS_EXACT"], key_name("host123456.zone456.example").ljust(32, b"\0"))
    assert RULE.unpack_from(image.values, 123_456 * RULE.size) == (123_457, ACTION["HYP_DNS_DROP"], 0, 0)
    assert SHORT_KEY.unpack_from(image.keys, (count - 1) * SHORT_KEY.size)[1:] == (
        KIND["HYP_DNS_SUFFIX"], key_name("last.example").ljust(32, b"\0"))
    assert took < 20  # generous: the machine is shared; the time is printed
