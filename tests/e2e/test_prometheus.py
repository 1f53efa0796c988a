"""A real Prometheus server (Debian's package) scrapes `hyperion run`; the drop counter is read back
through Prometheus's HTTP query API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from hyperion.lab.sandbox import Sandbox, SandboxError
from tests.support.kernel import IN_CI
from tests.support.netutil import Daemon, scrape, send

PROMETHEUS_ADDR = "127.0.0.1:9090"


def query(sb: Sandbox, expr: str) -> list[dict[str, object]]:
    url = f"http://{PROMETHEUS_ADDR}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(scrape(sb, url))
    assert body["status"] == "success"
    return list(body["data"]["result"])


def test_prometheus_reads_drop_counters(sandbox: Sandbox, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        if IN_CI:
            pytest.fail("prometheus is not installed (scripts/setup.sh installs it)")
        pytest.skip("prometheus is not installed")
    sb = sandbox
    sb.add_client_address("198.51.100.42")
    policy = tmp_path / "policy.yaml"
    policy.write_text('fast_path:\n  drop_ips: ["198.51.100.42"]\n')
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: hyperion\n"
        "    static_configs: [{targets: ['127.0.0.1:2112']}]\n"
    )
    daemon = Daemon(sb, policy).start()
    server = sb.popen(sb.host_ns, ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address={PROMETHEUS_ADDR}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        send(sb, "198.51.100.42", count=33)  # the loop below waits until Prometheus has all 33
        expr = 'hyperion_fastpath_drops_total{reason="blocklist_ip",job="hyperion"}'
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read() if server.stderr else "prometheus exited"
            try:
                result = query(sb, expr)
            except SandboxError as exc:  # not listening yet
                print(f"waiting for prometheus: {exc}", file=sys.stderr)
                result = []
            if result and float(result[0]["value"][1]) == 33:  # type: ignore[index]
                break
            time.sleep(0.5)
        assert result, "Prometheus never returned the series"
        assert float(result[0]["value"][1]) == 33  # type: ignore[index]
        up = query(sb, 'up{job="hyperion"}')
        assert float(up[0]["value"][1]) == 1  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(timeout=20)
        daemon.stop()
