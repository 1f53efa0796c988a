"""Telemetry: /metrics scraped over HTTP with exact values, drop events as JSON lines, event budget."""

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


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:2112", ("127.0.0.1", 2112)), ("[::1]:9000", ("::1", 9000)), (":2112", ("0.0.0.0", 2112)),
])
def test_listen_address_parsing(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["2112", "localhost:http", "127.0.0.1:70000"])
def test_bad_listen_address(text: str) -> None:
    from hyperion.errors import HyperionError

    with pytest.raises(HyperionError, match="expected HOST:PORT"):
        parse_listen_address(text)
