"""Operating the daemon: health and readiness probes, metrics from start-up, SIGHUP reloads, one-line errors.

The probes and gauges are checked on `runtime.metrics.Metrics` with an injected clock; the daemon as a whole
(SIGHUP, /readyz failing and recovering) as a subprocess against a Zendesk sandbox on a loopback port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

import sync
from connectors.http import HttpOptions
from runtime.cycle import CycleReport
from runtime.metrics import Metrics
from state.sqlite import SqliteStore
from tests.test_sync_cli import CREDENTIALS, EXAMPLE, free_port, live_sandbox, zendesk_only_config

__all__ = ["live_sandbox"]  # the fixture, shared with test_sync_cli

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"instance": "zd", "platform": "zendesk"}
T0 = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_series_has_a_sample_before_the_first_cycle() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    metrics.expect([("zd", "zendesk")], interval_seconds=60)
    clock.now += 42
    for name in (
        "escalation_sync_cycles_total",
        "escalation_sync_pending_writes",
        "escalation_sync_dead_letters_stored",
        "escalation_sync_quarantined_stored",
        "escalation_sync_review_backlog",
        "escalation_sync_cycle_duration_seconds_count",
    ):
        assert sample(metrics, name, **LABELS) == 0, name
    assert sample(metrics, "escalation_sync_cursor_lag_seconds", **LABELS) == 42, "behind since start-up"
    assert sample(metrics, "escalation_sync_rate_limit_waits_total", instance="zd", reason="quota") == 0


def test_cycle_duration_cursor_lag_and_rate_limit_waits() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    metrics.expect([("zd", "zendesk")], interval_seconds=60)
    clock.now += 600
    report = CycleReport("zd", "zendesk", datetime.fromtimestamp(clock.now, UTC), tickets_seen=3)
    metrics.record_cycle(report, duration_seconds=4.0)
    clock.now += 90
    assert sample(metrics, "escalation_sync_cycle_duration_seconds_sum", **LABELS) == 4.0
    assert sample(metrics, "escalation_sync_cycle_duration_seconds_bucket", **LABELS, le="5.0") == 1
    assert sample(metrics, "escalation_sync_cycle_duration_seconds_bucket", **LABELS, le="2.5") == 0
    assert sample(metrics, "escalation_sync_cursor_lag_seconds", **LABELS) == 90
    stopped = CycleReport("zd", "zendesk", datetime.fromtimestamp(clock.now, UTC), stopped_early=True)
    metrics.record_cycle(stopped)
    clock.now += 10
    assert sample(metrics, "escalation_sync_cursor_lag_seconds", **LABELS) == 100, "a partial poll does not catch up"

    stats: Counter[str] = Counter({"GET 200": 5, "paced": 2, "retry 429": 1})
    metrics.record_http("zd", stats)
    stats["paced"] += 1
    metrics.record_http("zd", stats)
    assert sample(metrics, "escalation_sync_rate_limit_waits_total", instance="zd", reason="quota") == 3
    assert sample(metrics, "escalation_sync_rate_limit_waits_total", instance="zd", reason="retry_after") == 1
    assert sample(metrics, "escalation_sync_http_requests_total", instance="zd", outcome="GET 200") == 5


def test_backlog_gauges_follow_the_store() -> None:
    metrics = Metrics()
    metrics.expect([("zd", "zendesk")], interval_seconds=60)
    with SqliteStore(":memory:") as store:
        for key in ("a", "b", "c"):
            store.record_intent("zd", key, key, "{}", T0)
        store.mark_dead("c", "422", T0)
        store.quarantine("zd", "9", "{}", "bad priority", T0)
        store.record_intent("other", "x", "x", "{}", T0)
        metrics.record_store("zd", "zendesk", store)
        assert sample(metrics, "escalation_sync_pending_writes", **LABELS) == 2
        assert sample(metrics, "escalation_sync_dead_letters_stored", **LABELS) == 1
        assert sample(metrics, "escalation_sync_quarantined_stored", **LABELS) == 1
        store.mark_done("a", T0)
        metrics.record_store("zd", "zendesk", store)
        assert sample(metrics, "escalation_sync_pending_writes", **LABELS) == 1
    metrics.set_review_backlog("zd", 17)
    assert sample(metrics, "escalation_sync_review_backlog", **LABELS) == 17
    report = CycleReport("zd", "zendesk", T0)
    report.book_due = 4
    metrics.record_cycle(report)
    assert sample(metrics, "escalation_sync_review_backlog", **LABELS) == 4


def test_readiness_needs_a_recent_successful_cycle_of_every_instance() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock, ready_intervals=3)
    assert metrics.readiness() == (False, {"*": "starting: the instances are not wired yet"})
    metrics.expect([("zd", "zendesk"), ("sn", "servicenow")], interval_seconds=60)
    ready, failing = metrics.readiness()
    assert not ready and set(failing) == {"zd", "sn"} and "no cycle" in failing["zd"]
    started = datetime.fromtimestamp(clock.now, UTC)
    metrics.record_cycle(CycleReport("zd", "zendesk", started))
    metrics.record_cycle(CycleReport("sn", "servicenow", started, error="AuthError: HTTP 401"))
    ready, failing = metrics.readiness()
    assert not ready and list(failing) == ["sn"] and "401" in failing["sn"]
    metrics.record_cycle(CycleReport("sn", "servicenow", started))
    assert metrics.readiness() == (True, {})
    clock.now += 181
    ready, failing = metrics.readiness()
    assert not ready and set(failing) == {"zd", "sn"} and "limit 180 s" in failing["zd"]


def test_probes_over_http() -> None:
    metrics = Metrics()
    metrics.expect([("zd", "zendesk")], interval_seconds=60)
    server = metrics.serve(0)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        unready = httpx.get(f"{base}/readyz")
        assert unready.status_code == 503 and "zd" in unready.json()["failing"]
        metrics.record_cycle(CycleReport("zd", "zendesk", datetime.now(UTC)))
        assert httpx.get(f"{base}/readyz").status_code == 200
        scraped = httpx.get(f"{base}/metrics")
        assert scraped.status_code == 200 and "escalation_sync_pending_writes" in scraped.text
        assert b"escalation_sync_cycle_duration_seconds" in generate_latest(metrics.registry)
    finally:
        server.shutdown()
        server.server_close()


# -- one-line errors and exit codes --------------------------------------------------------------------------


def config_with(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "config.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_an_unsupported_state_url_is_a_configuration_error_everywhere(tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = config_with(tmp_path, 'url = "sqlite:///var/escalation-sync.sqlite3"', 'url = "mysql://u:pw@db/x"')
    assert sync.main(["check", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    assert "error state:" in out and "'mysql'" in out and ":pw@" not in out
    for command in ("status", "once"):
        assert sync.main([command, "--config", str(config)]) == 2
        assert "unsupported scheme 'mysql'" in one_line(capsys.readouterr().err)


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path, capsys) -> None:
    url = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x?connect_timeout=2"
    config = config_with(tmp_path, 'url = "sqlite:///var/escalation-sync.sqlite3"', f'url = "{url}"')
    assert sync.main(["status", "--config", str(config)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("state store error:") and "hunter2" not in line


def test_a_bad_log_level_is_a_configuration_error(tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ESCALATION_SYNC_LOG_LEVEL", "verbose")
    assert sync.main(["check", "--config", str(EXAMPLE)]) == 2
    assert "ESCALATION_SYNC_LOG_LEVEL='verbose'" in capsys.readouterr().out
    config = config_with(tmp_path, "sqlite:///var/", f"sqlite:///{tmp_path}/")
    assert sync.main(["once", "--config", str(config)]) == 2
    assert "is not a log level" in one_line(capsys.readouterr().err)


def test_explain_on_a_refused_login_is_one_line(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    sandbox.accepted_authorizations = {"Basic nobody"}
    config = zendesk_only_config(tmp_path, base_url)
    assert sync.main(["explain", "--config", str(config), "--instance", "local-zendesk", "1"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("platform error:") and "401" in line and CREDENTIALS["ZENDESK_API_TOKEN"] not in line


def test_explain_on_an_unreachable_host_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("runtime.wiring.HttpOptions", lambda: HttpOptions(backoff_base=0.01, backoff_max=0.01))
    config = zendesk_only_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert sync.main(["explain", "--config", str(config), "--instance", "local-zendesk", "1"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("platform error:") and "ConnectError" in line


def test_input_and_port_problems_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    broken = tmp_path / "t.json"
    broken.write_text("{not json", encoding="utf-8")
    for path in (broken, tmp_path / "missing.json"):
        assert sync.main(["explain", "--platform", "zendesk", "--file", str(path)]) == 2
        assert one_line(capsys.readouterr().err).startswith(f"explain: cannot read {path}:")
    config = config_with(tmp_path, "sqlite:///var/", f"sqlite:///{tmp_path}/")
    assert sync.main(["once", "--config", str(config), "--instance", "nope"]) == 2
    assert "--instance nope; known: acme-zendesk, acme-jsm, acme-servicenow" in one_line(capsys.readouterr().err)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = config_with(tmp_path, "# metrics_port = 9464", f"metrics_port = {port}")
        assert sync.main(["run", "--config", str(busy)]) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in one_line(capsys.readouterr().err)


def test_a_bug_is_one_line_unless_debugging(monkeypatch, capsys) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(sync, "cmd_status", broken)
    assert sync.main(["status"]) == 1
    assert one_line(capsys.readouterr().err) == (
        "internal error: RuntimeError: boom (ESCALATION_SYNC_LOG_LEVEL=DEBUG shows the traceback)"
    )
    monkeypatch.setenv("ESCALATION_SYNC_LOG_LEVEL", "debug")
    with pytest.raises(RuntimeError):
        sync.main(["status"])

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(sync, "cmd_status", interrupted)
    assert sync.main(["status"]) == 130
    assert one_line(capsys.readouterr().err) == "interrupted"


# -- the daemon: SIGHUP and /readyz, end to end --------------------------------------------------------------


class Daemon:
    def __init__(self, config: Path) -> None:
        env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(ROOT)}
        env.pop("ESCALATION_SYNC_LOG_LEVEL", None)
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "sync.py"), "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_for(self, needle: str, timeout: float = 60) -> dict[str, object]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            if needle in line:
                return json.loads(line)
        raise AssertionError(f"no log line with {needle!r}")


def wait_ready(url: str, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}")


def test_sighup_reloads_and_readyz_fails_and_recovers(tmp_path: Path, live_sandbox) -> None:
    sandbox, base_url = live_sandbox
    port = free_port()
    config = zendesk_only_config(tmp_path, base_url, f"metrics_port = {port}")
    good = config.read_text(encoding="utf-8").replace("interval_seconds = 0.2", "interval_seconds = 0.5")
    config.write_text(good, encoding="utf-8")
    daemon = Daemon(config)
    probe = f"http://127.0.0.1:{port}"
    try:
        assert wait_ready(f"{probe}/healthz", 200).json() == {"status": "alive"}
        daemon.wait_for('"event": "cycle"')
        wait_ready(f"{probe}/readyz", 200)

        config.write_text(good.replace("[policy]", "[policy]\nbogus_setting = 1", 1), encoding="utf-8")
        daemon.process.send_signal(signal.SIGHUP)
        refused = daemon.wait_for("reload refused")
        assert "bogus_setting" in str(refused["error"])
        daemon.wait_for('"event": "cycle"')  # still running, on the old configuration

        config.write_text(good.replace('name = "local-zendesk"', 'name = "renamed-zendesk"'), encoding="utf-8")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("configuration reloaded")
        assert daemon.wait_for('"event": "cycle"')["instance"] == "renamed-zendesk"
        wait_ready(f"{probe}/readyz", 200)

        sandbox.accepted_authorizations = {"Basic nobody"}
        failing = wait_ready(f"{probe}/readyz", 503).json()
        assert "401" in failing["failing"]["renamed-zendesk"]
        sandbox.accepted_authorizations = None
        assert wait_ready(f"{probe}/readyz", 200).json() == {"status": "ready"}

        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.communicate(timeout=30)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert daemon.process.returncode == 0
