"""The telemetry tests' policy and a Prometheus text-format reader."""

from __future__ import annotations

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from hyperion.daemon.events import EventDecoder, EventReader
from hyperion.daemon.metrics import FastPathCollector, parse_listen_address
from hyperion.fastpath.program import FastPath
from hyperion.kernel.testrun import run_xdp
from hyperion.lab.sandbox import HOST_V4, Sandbox
from hyperion.policy.compiler import PolicyCompiler
from hyperion.policy.loading import parse_policy
from tests.netutil import WAIT, Daemon, counter, hyperion, scrape, send, status, wait_for

POLICY = """
fast_path:
  allow_cidrs: ["203.0.113.7"]
  drop_ips: ["198.51.100.42"]
  redirect_ports:
    - {protocol: udp, port: 53, on_failure: drop}
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
