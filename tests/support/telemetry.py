"""The telemetry tests' policy and a Prometheus text-format reader."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

POLICY = """
fast_path:
  allow_cidrs: ["203.0.113.7"]
  drop_ips: ["198.51.100.42"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
slow_path:
  dns_name_rules: slow_path  # the udp/53 class is redirected whole, as this test expects
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> tuple[Samples, set[str]]:
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
