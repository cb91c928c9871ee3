"""`sync.py report`: the dashboard's figures from a real store, the text and JSON output, and the HTML page as
headless Chromium renders it (Debian's `chromium`, installed here with apt when missing and possible)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import sync
from engine.model import Comment, TagScheme, Tier, WriteBack
from engine.policy import load_policy
from runtime import report as dashboard
from runtime.codec import encode
from runtime.cycle import Event
from runtime.demo import run_demo
from runtime.notify import Route, notices_for
from state.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
SCHEME = TagScheme(breached="sla_breached_{clock}", at_risk="sla_risk_{clock}")
RULES = ("l1-time-limit", "broad-impact", "mgmt-churn-threat")
ROUTE = Route(name="chat", kind="slack", url_env="SLACK_URL")


def note(source: str, target: str, *rules: str) -> str:
    lines = [f"Escalated from {source} Front line to {target} Engineering at 2026-11-16 09:00 UTC", "SLA:"]
    lines += ["- first_response: BREACHED, overdue by 1h", "Why:"]
    lines += [f"- {rule}: because" for rule in rules]
    return "\n".join(lines)


def write(store: SqliteStore, ticket: str, at: datetime, *, tier: str | None = None, body: str = "", tags=()) -> None:
    writeback = WriteBack(
        "zendesk",
        "zd",
        ticket,
        "r1",
        tier=Tier(tier) if tier else None,
        add_tags=frozenset(tags),
        comment=Comment(body, f"zd|{ticket}|{at.isoformat()}") if body else None,
    )
    intent = store.record_intent("zd", ticket, writeback.key, encode(writeback), at)
    store.mark_done(intent.key, at)


def seeded(path: Path) -> str:
    """Three escalated tickets, one resolved, breach and at-risk tags, a pending write and a foreign ledger row."""
    with SqliteStore(path) as store:
        # 1: L1 -> L2, later L2 -> L3, management; ACME
        store.record_escalation("zd", "ACME", "1", "L2", T0)
        write(store, "1", T0, tier="L2", body=note("L1", "L2", "l1-time-limit"), tags=["sla_breached_first_response"])
        store.record_escalation("zd", "ACME", "1", "L3", T0 + timedelta(hours=3))
        write(store, "1", T0 + timedelta(hours=3), tier="L3", body=note("L2", "L3", "broad-impact"))
        store.record_escalation("zd", "ACME", "1", "MGMT", T0 + timedelta(hours=3))
        # 2: L1 -> L3 in one step, resolved 5 h later; ACME
        store.record_escalation("zd", "ACME", "2", "L3", T0 + timedelta(hours=1))
        write(
            store, "2", T0 + timedelta(hours=1), tier="L3", body=note("L1", "L3", "l1-time-limit", "broad-impact"),
            tags=["sla_risk_resolution", "sla_breached_first_response"],
        )  # fmt: skip
        store.record_escalation("zd", "ACME", "2", dashboard.RESOLVED, T0 + timedelta(hours=6))
        # 3: L1 -> L2 a day earlier (outside a --since window), Globex
        store.record_escalation("zd", "Globex", "3", "L2", T0 - timedelta(days=1))
        write(store, "3", T0 - timedelta(days=1), tier="L2", body=note("L1", "L2", "l1-time-limit", "not-a-rule"))
        # not done: a pending intent is not history
        store.record_intent("zd", "4", "pending-key", encode(WriteBack("zendesk", "zd", "4", "r", tier=Tier.L4)), T0)
        # other ledger entries: a notification (JSON, its own instance), and a payload that is not JSON at all
        (notice,) = notices_for(Event("written", "zd", "9", T0, {"add_tags": ["esc_management"]}), [ROUTE], TagScheme())
        intent = store.record_intent("notify:zd", "9", notice.ledger_key, notice.encode(), T0)
        store.mark_done(intent.key, T0)
        store.mark_done(store.record_intent("zd", "1", "other:zd:1", "sent", T0).key, T0)
    return f"sqlite:///{path}"


def figures(url: str, since: datetime | None = None) -> dashboard.Report:
    history = dashboard.read_history(url, since)
    until = T0 + timedelta(days=1)
    return dashboard.build_report(history, rule_names=RULES, tag_schemes={"zd": SCHEME}, since=since, until=until)


def test_figures_from_the_store(tmp_path: Path) -> None:
    report = figures(seeded(tmp_path / "state.sqlite3"))
    assert report.escalated_tickets == 3
    assert report.by_tier == {"L2": 2, "L3": 2, "management": 1}
    assert report.paths == {"L1→L2": 2, "L2→L3": 1, "L1→L3": 1, "management": 1}
    assert report.re_escalated == 1, "ticket 1 went on from L2 to L3"
    assert report.rules == {"l1-time-limit": 3, "broad-impact": 2}, "only the policy's rule names count"
    assert report.rules_by_tier == {"L2": {"l1-time-limit": 2}, "L3": {"broad-impact": 2, "l1-time-limit": 1}}
    assert report.sla == {"first_response": {"breached": 2, "at_risk": 0}, "resolution": {"breached": 0, "at_risk": 1}}
    assert report.tickets_written == 3 and report.notes == 4
    assert report.organizations == [("ACME", 2), ("Globex", 1)]
    assert report.resolution_hours == {"L3": {"tickets": 1, "median": 5.0, "p90": 5.0}}
    assert report.success == {"L3": {"resolved": 1, "there": 1}}


def test_since_narrows_the_window_but_keeps_the_path(tmp_path: Path) -> None:
    url = seeded(tmp_path / "state.sqlite3")
    report = figures(url, since=T0 + timedelta(minutes=30))
    assert report.escalated_tickets == 2 and "Globex" not in dict(report.organizations)
    assert report.paths == {"L2→L3": 1, "L1→L3": 1, "management": 1}, "ticket 1's L2 entry is before the window"
    assert report.rules == {"broad-impact": 2, "l1-time-limit": 1}


def test_parse_since() -> None:
    now = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
    assert dashboard.parse_since("12h", now) == now - timedelta(hours=12)
    assert dashboard.parse_since("2w", now) == now - timedelta(days=14)
    assert dashboard.parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert dashboard.parse_since("2026-11-01T08:00+01:00", now) == datetime(2026, 11, 1, 7, tzinfo=UTC)
    with pytest.raises(ValueError, match="12h, 7d, 2w"):
        dashboard.parse_since("last week", now)


def report_config(tmp_path: Path, url: str) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        'url = "sqlite:///var/escalation-sync.sqlite3"', f'url = "{url}"'
    )
    path = tmp_path / "config.toml"
    path.write_text(text.replace('mapping = "mappings/', f'mapping = "{ROOT}/mappings/'), encoding="utf-8")
    return path


def test_the_command(tmp_path: Path, capsys) -> None:
    config = report_config(tmp_path, seeded(tmp_path / "state.sqlite3"))
    page = tmp_path / "report.html"
    assert sync.main(["report", "--config", str(config), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^escalated tickets: 3 ", out, re.M)
    assert re.search(r"^  L1→L3\s+1$", out, re.M) and "median 5.0" in out
    text = page.read_text(encoding="utf-8")
    assert "Chart.js v4" in text and not re.search(r"<script[^>]+src=", text), "the library is inlined"
    assert sync.main(["report", "--config", str(config), "--json", "--since", "2026-11-16T09:30"]) == 0
    assert json.loads(capsys.readouterr().out)["escalated_tickets"] == 2
    assert sync.main(["report", "--config", str(config), "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err


def test_a_missing_store_is_one_line(tmp_path: Path, capsys) -> None:
    config = report_config(tmp_path, f"sqlite:///{tmp_path / 'nothing.sqlite3'}")
    assert sync.main(["report", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("state store error:") and "no such file" in err and "\n" not in err
    assert not (tmp_path / "nothing.sqlite3").exists(), "the report never creates a store"


def test_the_vendored_chart_js_is_checked(monkeypatch) -> None:
    name, version, _ = dashboard.CHART_JS
    assert f"Chart.js v{version}" in dashboard.chart_js()[:200]
    monkeypatch.setattr(dashboard, "CHART_JS", (name, version, "0" * 64))
    with pytest.raises(RuntimeError, match="checksum differs"):
        dashboard.chart_js()
    assert (ROOT / "runtime" / "assets" / "chart.js.LICENSE.md").read_text(encoding="utf-8").startswith("The MIT")


# -- the page in a browser -----------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root, else the test is skipped."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be (needs apt-get as root): apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
    if done.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium could not be installed with apt-get: {done.stderr.strip()[-300:]}")
    return found


def test_the_page_renders_its_charts_in_chromium(tmp_path: Path, chromium: str) -> None:
    policy = load_policy(EXAMPLE)
    run_demo(policy, hours=3, step_minutes=30, tickets=30, seed=3, quiet=True, state_dir=tmp_path)
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    history = dashboard.read_history(url)
    rules = [rule.name for rule in policy.rules]
    report = dashboard.build_report(history, rule_names=rules, until=datetime.now(UTC))
    assert report.escalated_tickets > 0 and report.rules, "the demo escalated tickets for the report to show"
    page = tmp_path / "report.html"
    page.write_text(dashboard.render_html(report), encoding="utf-8")
    profile = tmp_path / "profile"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    painted = dict(re.findall(r'<canvas id="(\w+)"[^>]*data-painted="(\d+)"', dom))
    expected = {"tiers", "paths", "time", "rules", "sla", "orgs", "resolution"}  # the cycle records resolutions
    assert set(painted) == expected, dom[-2000:]
    assert all(int(count) > 2000 for count in painted.values()), painted
    assert f'data-charts="{len(expected)}"' in dom
    assert not re.search(r'<section class="empty"><h2>Resolution time', dom), "resolutions are recorded"
    shot = tmp_path / "report.png"
    subprocess.run([*command, "--window-size=1200,2200", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 20_000, "a screenshot with charts on it, not a blank page"
