"""The command line as an operator uses it: check, once (against a sandbox on a loopback port), run + SIGTERM,
explain, and the demo. These go through `sync.main`, the same entry point as `python sync.py`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

import sync
from runtime.demo import DEMO_START
from sandbox.base import Fault, SimClock
from sandbox.zendesk import ZendeskSandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
FIXTURES = ROOT / "tests" / "fixtures"
SECRET = "zd-secret-token-4711"
CREDENTIALS = {
    "ZENDESK_EMAIL": "bot@example.com",
    "ZENDESK_API_TOKEN": SECRET,
    "JSM_EMAIL": "bot@example.com",
    "JSM_API_TOKEN": "jsm-secret",
    "SERVICENOW_USERNAME": "integration",
    "SERVICENOW_PASSWORD": "snow-secret",
}


def zendesk_only_config(tmp_path: Path, base_url: str, daemon_extra: str = "") -> Path:
    """config.example.toml with one Zendesk instance pointed at `base_url` and a state file in tmp_path."""
    text = EXAMPLE.read_text(encoding="utf-8")
    policy = text.split("# ---- escalation policy", 1)[1]
    instance = f"""
[daemon]
interval_seconds = 0.2
log_format = "json"
{daemon_extra}

[state]
url = "sqlite:///{tmp_path / "state.sqlite3"}"

[[instances]]
name = "local-zendesk"
platform = "zendesk"
base_url = "{base_url}"
mapping = "{ROOT / "mappings" / "zendesk.toml"}"

[instances.credentials]
email = "ZENDESK_EMAIL"
api_token = "ZENDESK_API_TOKEN"

[instances.options]
page_size = 50
"""
    path = tmp_path / "config.toml"
    path.write_text(instance + "\n# ---- escalation policy" + policy, encoding="utf-8")
    return path


@pytest.fixture
def live_sandbox():
    """A Zendesk sandbox on 127.0.0.1 whose clock is the real one, as `once` and `run` read the wall clock."""
    sandbox = ZendeskSandbox(SimClock(datetime.now(UTC)), seed=5)
    sandbox.seed_tickets(40)
    base_url, stop = sandbox.serve()
    yield sandbox, base_url
    stop()


def test_check_accepts_the_example_config(monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    assert sync.main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "ok    acme-zendesk" in out and "ok    acme-servicenow" in out and "policy:" in out


def test_check_names_the_missing_environment_variable(monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JSM_API_TOKEN")
    assert sync.main(["check", "--config", str(EXAMPLE)]) == 2
    out = capsys.readouterr().out
    assert "acme-jsm" in out and "JSM_API_TOKEN" in out
    assert "jsm-secret" not in out


def test_a_typo_in_the_config_is_refused_with_file_line_and_key(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "config.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace("interval_seconds = 60", "interval_secnds = 60")
    broken.write_text(text, encoding="utf-8")
    assert sync.main(["check", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("interval_secnds"))
    assert f"{broken}:{line}: daemon.interval_secnds" in err


def test_a_broken_rule_is_refused_with_its_name(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "config.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    marker = 'when = "'
    start = text.index(marker, text.index("[[policy.rules]]")) + len(marker)
    broken.write_text(text[:start] + "ticket.priority == && " + text[start:], encoding="utf-8")
    assert sync.main(["check", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    line = text[:start].count("\n") + 1
    assert f"{broken}:{line}:" in err and "l1-time-limit" in err


def test_once_writes_escalations_to_a_platform_on_loopback(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url, daemon_extra="batch_writes_from = 1000000")  # a PUT a write
    puts_before = sandbox.calls("PUT")
    assert sync.main(["once", "--config", str(config)]) == 0
    assert sandbox.calls("PUT") > puts_before
    logged = capsys.readouterr().err
    summary = [json.loads(line) for line in logged.splitlines() if '"event": "cycle"' in line]
    assert len(summary) == 1 and summary[0]["writes"] == sandbox.calls("PUT") - puts_before
    assert SECRET not in logged


def test_once_dry_run_writes_nothing(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url)
    assert sync.main(["once", "--dry-run", "--config", str(config)]) == 0
    assert sandbox.calls("PUT") == 0
    summary = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"event": "cycle"' in line]
    assert summary[0]["planned"] > 0 and summary[0]["writes"] == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_serves_metrics_and_stops_cleanly_on_sigterm(tmp_path: Path, live_sandbox) -> None:
    sandbox, base_url = live_sandbox
    port = free_port()
    config = zendesk_only_config(tmp_path, base_url, f"metrics_port = {port}")
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(ROOT)}
    daemon = subprocess.Popen(
        [sys.executable, str(ROOT / "sync.py"), "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert daemon.stderr is not None
        deadline = time.monotonic() + 60
        cycles = 0
        while cycles < 2 and time.monotonic() < deadline:
            line = daemon.stderr.readline()
            cycles += '"event": "cycle"' in line
        assert cycles == 2, "the daemon must loop"
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'escalation_sync_cycles_total{instance="local-zendesk",platform="zendesk"}' in scraped
        assert "escalation_sync_http_requests_total" in scraped
        daemon.send_signal(signal.SIGTERM)
        _, rest = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0
    assert "stopping after the current ticket" in rest
    assert sandbox.calls("PUT") > 0, "the daemon wrote its escalations before it was stopped"
    assert SECRET not in rest


def test_explain_a_saved_payload_as_json(capsys) -> None:
    page = json.loads((FIXTURES / "zendesk" / "ticket_show.json").read_text(encoding="utf-8"))
    ticket_file = FIXTURES / "zendesk" / "ticket_show.json"
    at = "2026-11-23T15:00:00+00:00"
    assert sync.main(["explain", "--platform", "zendesk", "--file", str(ticket_file), "--at", at, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert json.dumps(explained).count(str(page["ticket"]["id"])) >= 1
    text = json.dumps(explained)
    assert "first_response" in text and "resolution" in text


def test_explain_human_readable_lists_rules(capsys) -> None:
    ticket_file = FIXTURES / "zendesk" / "ticket_show.json"
    args = ["explain", "--platform", "zendesk", "--file", str(ticket_file), "--at", "2026-11-23T15:00:00+00:00"]
    assert sync.main(args) == 0
    out = capsys.readouterr().out
    assert "first_response" in out and "rule" in out.lower()


def test_demo_escalates_on_all_three_platforms(capsys) -> None:
    args = ["demo", "--json", "--hours", "3", "--tickets", "60"]
    assert sync.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    instances = summary["instances"]
    assert set(instances) == {"demo-zendesk", "demo-jsm", "demo-servicenow"}
    for name, data in instances.items():
        assert sum(data["escalations"].values()) > 0, name
        assert data["comments"] > 0 and data["tags_added"] > 0, name
        assert data["errors"] == [], name
        assert data["api_calls"] > 0, name


def test_demo_on_loopback_ports_gives_the_same_result(capsys) -> None:
    args = ["demo", "--json", "--hours", "1", "--tickets", "30"]
    assert sync.main(args) == 0
    in_process = json.loads(capsys.readouterr().out)
    assert sync.main([*args, "--loopback"]) == 0
    on_loopback = json.loads(capsys.readouterr().out)
    assert in_process["totals"] == on_loopback["totals"]


def test_explain_a_live_ticket_fetches_it_from_the_instance(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url)
    ticket_id = str(sandbox.ticket_ids()[0])
    assert sync.main(["explain", "--config", str(config), "--instance", "local-zendesk", ticket_id, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert sandbox.calls("GET", rf"/api/v2/tickets/{ticket_id}\.json") == 1
    assert sandbox.calls("PUT") == 0, "explain never writes"
    assert ticket_id in json.dumps(explained)
    assert sync.main(["explain", "--config", str(config), "--instance", "local-zendesk", "999999"]) == 1
    assert "not found" in capsys.readouterr().err


def test_a_crashing_cycle_is_logged_and_the_daemon_goes_on(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    _sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url)

    def broken_cycle(self):
        raise RuntimeError("a bug in one cycle")

    monkeypatch.setattr("runtime.cycle.Syncer.run_cycle", broken_cycle)
    assert sync.main(["once", "--config", str(config)]) == 1
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    crash = next(entry for entry in logged if entry["msg"] == "cycle crashed")
    assert crash["instance"] == "local-zendesk" and "a bug in one cycle" in crash["exc"]


def test_status_lists_dead_letters_and_quarantine(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url)
    sandbox.inject(Fault(status=422, times=1000, method="PUT", body='{"error": "RecordInvalid"}'))
    assert sync.main(["once", "--config", str(config)]) == 0
    capsys.readouterr()
    assert sync.main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["local-zendesk"]
    assert status["cursor"] and status["pending"] == []
    # Refused in the update_many job, then alone: one dead letter per single PUT.
    assert len(status["dead_letters"]) == sandbox.calls("PUT", r"^/api/v2/tickets/\d+") > 0
    assert all("422" in row["error"] or "RecordInvalid" in row["error"] for row in status["dead_letters"])
    assert {row["ticket"] for row in status["quarantined"]} == {
        str(i) for i in sandbox.ticket_ids() if "sev_legacy_0" in sandbox.ticket(i)["tags"]
    }
    assert sync.main(["status", "--config", str(config)]) == 0
    assert "dead letters:" in capsys.readouterr().out


def test_once_dry_run_prints_the_plan_of_each_ticket(tmp_path: Path, monkeypatch, capsys) -> None:
    # Pinned, not the wall clock: which five writes are the most urgent depends on the hour and the weekday
    # (business hours), and at some hours none of the five moved a tier.
    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=5)
    sandbox.seed_tickets(40)
    base_url, stop = sandbox.serve()
    monkeypatch.setattr(sync, "utcnow", lambda: DEMO_START)
    try:
        _dry_run_prints_the_plan(tmp_path, monkeypatch, capsys, sandbox, base_url)
    finally:
        stop()


def _dry_run_prints_the_plan(tmp_path: Path, monkeypatch, capsys, sandbox: ZendeskSandbox, base_url: str) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url, daemon_extra="max_writes_per_cycle = 5")
    assert sync.main(["once", "--dry-run", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("local-zendesk ")]
    assert len(lines) == 5, "the plan is what the first live cycle would write: the cap applies"
    assert any(" -> L" in line and "handoff note" in line for line in lines)
    summary = next(json.loads(line) for line in captured.err.splitlines() if '"event": "cycle"' in line)
    assert summary["planned"] == 5 and summary["deferred"] == 1 and summary["writes"] == 0
    assert sandbox.calls("PUT") == 0


def test_backfill_reads_every_open_ticket_again_and_reports_progress(
    tmp_path: Path, monkeypatch, live_sandbox, capsys
) -> None:
    sandbox, base_url = live_sandbox
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    config = zendesk_only_config(tmp_path, base_url)
    assert sync.main(["once", "--config", str(config)]) == 0
    old = sandbox.add_idle_ticket(datetime.now(UTC) - timedelta(days=20))  # appears only to a new scan
    capsys.readouterr()
    assert sync.main(["backfill", "--instance", "local-zendesk", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "local-zendesk: done:" in out and "tickets/s" in out
    tier, _ = sandbox.escalation_view(old)
    assert tier in ("L2", "L3")
    assert sync.main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["local-zendesk"]
    assert status["open_ticket_scan"] == "done" and status["book"]["open"] > 0
