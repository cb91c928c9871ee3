"""Notifications: which events make which notices, the vendors' payload shapes (checked by stand-ins written from
their documentation), sent once through the ledger, never blocking the cycle, and wired into `once`."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import sync
from engine.configfile import ConfigFileError
from engine.model import TagScheme
from runtime import logs, notify
from runtime.cycle import Event
from runtime.notify import Notice, Notifier, Route, notices_for
from state.sqlite import SqliteStore
from tests.notify_standins import PagerDutyEvents, SlackWebhook, TeamsWebhook
from tests.test_sync_cli import CREDENTIALS, live_sandbox, zendesk_only_config

__all__ = ["live_sandbox"]

AT = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)
TAGS = TagScheme()
SLACK_URL = f"https://hooks.slack.test{SlackWebhook.PATH}"
TEAMS_URL = f"https://prod.teams.test{TeamsWebhook.PATH}"
ENV = {"SLACK_URL": SLACK_URL, "TEAMS_URL": TEAMS_URL, "PD_KEY": PagerDutyEvents.ROUTING_KEY}
SLACK = Route(name="chat", kind="slack", on=["management"], url_env="SLACK_URL")
TEAMS = Route(name="leads", kind="teams", clocks=["resolution"], url_env="TEAMS_URL", instances=["zd"])
PAGER = Route(name="oncall", kind="pagerduty", routing_key_env="PD_KEY", events_url="https://events.pd.test/v2/enqueue")


def written(ticket: str = "101", *, add=(), remove=(), instance: str = "zd") -> Event:
    detail = {
        "tier": "L3",
        "from_tier": "L2",
        "add_tags": sorted(add),
        "remove_tags": sorted(remove),
        "comment": True,
        "key": f"#{ticket}",
        "priority": "P1",
        "reasons": ["at L2 for 9h business time, limit 8h"],
        "management": True,
    }
    return Event("written", instance, ticket, AT, detail)


# -- which notices -------------------------------------------------------------------------------------------


def test_management_start_goes_to_every_listening_route() -> None:
    notices = notices_for(written(add={TAGS.management}), [SLACK, TEAMS, PAGER], TAGS)
    assert [(n.route, n.action, n.topic) for n in notices] == [
        ("chat", "trigger", "management"),
        ("leads", "trigger", "management"),
        ("oncall", "trigger", "management"),
    ]
    assert notices[0].dedup_key == "escalation-sync:zd:101:management"
    assert notices[0].facts == {"Instance": "zd", "Ticket": "#101", "Priority": "P1", "Tier": "L2 -> L3"}


def test_breaches_by_clock_and_instance_and_resolves_only_for_pagerduty() -> None:
    event = written(add={"esc_breached_resolution", "esc_breached_first_response", "unrelated"})
    assert {(n.route, n.topic) for n in notices_for(event, [SLACK, TEAMS, PAGER], TAGS)} == {
        ("leads", "breach:resolution"),  # Teams listens to the resolution clock only; Slack to management only
        ("oncall", "breach:resolution"),
        ("oncall", "breach:first_response"),
    }
    other = written(add={"esc_breached_resolution"}, instance="sn")
    assert [n.route for n in notices_for(other, [SLACK, TEAMS, PAGER], TAGS)] == ["oncall"], "Teams is for zd"
    over = written(remove={TAGS.management, "esc_breached_resolution"})
    assert {(n.route, n.action, n.topic) for n in notices_for(over, [SLACK, TEAMS, PAGER], TAGS)} == {
        ("oncall", "resolve", "management"),
        ("oncall", "resolve", "breach:resolution"),
    }
    assert notices_for(Event("planned", "zd", "1", AT, {"add_tags": [TAGS.management]}), [PAGER], TAGS) == []


# -- sending -------------------------------------------------------------------------------------------------


class Vendors:
    def __init__(self) -> None:
        self.slack, self.teams, self.pager = SlackWebhook(), TeamsWebhook(), PagerDutyEvents()
        hosts = {"hooks.slack.test": self.slack, "prod.teams.test": self.teams, "events.pd.test": self.pager}
        self.transports = {host: standin.transport() for host, standin in hosts.items()}

    def transport(self) -> httpx.MockTransport:
        def route(request: httpx.Request) -> httpx.Response:
            return self.transports[request.url.host].handle_request(request)

        return httpx.MockTransport(route)


@pytest.fixture
def vendors() -> Vendors:
    return Vendors()


def notifier(tmp_path: Path, vendors: Vendors, routes=(SLACK, TEAMS, PAGER), **kwargs) -> Notifier:
    running = Notifier(
        list(routes),
        state_url=f"sqlite:///{tmp_path / 'state.sqlite3'}",
        environ=ENV,
        transport=vendors.transport(),
        sleep=lambda seconds: None,
        **kwargs,
    )
    running.watch("zd", TAGS)
    return running


def test_payloads_are_accepted_by_the_vendors_and_sent_once(tmp_path: Path, vendors: Vendors) -> None:
    running = notifier(tmp_path, vendors)
    try:
        running.on_event(written(add={TAGS.management, "esc_breached_resolution"}))
        assert running.flush()
        assert len(vendors.slack.accepted) == 1 and vendors.slack.accepted[0]["text"].startswith("Management")
        assert len(vendors.teams.accepted) == 2, "management and the resolution breach"
        card = vendors.teams.accepted[0]["attachments"][0]["content"]
        assert card["type"] == "AdaptiveCard" and card["body"][0]["text"].startswith("Management escalation")
        assert vendors.pager.alerts == {
            "escalation-sync:zd:101:management": "triggered",
            "escalation-sync:zd:101:breach:resolution": "triggered",
        }
        trigger = vendors.pager.accepted[0]
        assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "zd"

        running.on_event(written(add={TAGS.management, "esc_breached_resolution"}))  # a replayed cycle
        assert running.flush()
        assert (len(vendors.slack.accepted), len(vendors.teams.accepted), len(vendors.pager.accepted)) == (1, 2, 2)

        running.on_event(written(remove={TAGS.management}))
        assert running.flush()
        assert vendors.pager.alerts["escalation-sync:zd:101:management"] == "resolved"
        assert len(vendors.slack.accepted) == 1, "a chat message is not sent for the end"
    finally:
        running.close()
    with SqliteStore(tmp_path / "state.sqlite3") as store:
        assert store.pending("zd") == [], "the cycle's own recovery never sees a notice"
        keys = {n.ledger_key for n in notices_for(written(add={TAGS.management}), [SLACK], TAGS)}
        assert all(store.get_intent(key).state == "done" for key in keys)


def test_the_cycle_is_never_blocked_by_a_slow_vendor(tmp_path: Path, vendors: Vendors) -> None:
    vendors.slack.gate = threading.Event()
    running = notifier(tmp_path, vendors, routes=[SLACK])
    try:
        started = time.perf_counter()
        for ticket in range(20):
            running.on_event(written(str(ticket), add={TAGS.management}))
        assert time.perf_counter() - started < 0.5
        assert not running.flush(timeout=0.2), "still sending"
        vendors.slack.gate.set()
        assert running.flush()
        assert len(vendors.slack.accepted) == 20
    finally:
        vendors.slack.gate.set()
        running.close()


def test_a_chat_post_of_unknown_outcome_is_not_sent_again(tmp_path: Path, vendors: Vendors) -> None:
    vendors.slack.faults = [503]  # any 5xx answering a post leaves its outcome open: it may have been processed
    running = notifier(tmp_path, vendors, routes=[SLACK])
    try:
        running.on_event(written(add={TAGS.management}))
        assert running.flush()
    finally:
        running.close()
    assert vendors.slack.accepted == [] and vendors.slack.requests == 1
    with SqliteStore(tmp_path / "state.sqlite3") as store:
        (dead,) = store.dead_letters("notify:zd")
        assert "may have been delivered" in dead.last_error


def test_pagerduty_is_retried_later_and_delivered_once(tmp_path: Path, vendors: Vendors) -> None:
    vendors.pager.faults = ["drop", 500]  # a lost connection, then a 500: both leave the outcome open
    running = notifier(tmp_path, vendors, routes=[PAGER], retry_delays=(0.05, 0.05))
    try:
        running.on_event(written(add={"esc_breached_resolution"}))
        deadline = time.monotonic() + 10
        while not vendors.pager.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.flush()
    finally:
        running.close()
    assert len(vendors.pager.accepted) == 1 and vendors.pager.requests == 3


def test_a_refused_payload_is_dead_lettered_with_the_vendors_reason(tmp_path: Path, vendors: Vendors) -> None:
    wrong_key = {**ENV, "PD_KEY": "too-short"}
    running = Notifier([PAGER], state_url=f"sqlite:///{tmp_path / 's.sqlite3'}", environ=wrong_key,
                       transport=vendors.transport(), sleep=lambda s: None)  # fmt: skip
    running.watch("zd", TAGS)
    try:
        running.on_event(written(add={"esc_breached_resolution"}))
        assert running.flush()
    finally:
        running.close()
    with SqliteStore(tmp_path / "s.sqlite3") as store:
        (dead,) = store.dead_letters("notify:zd")
    assert "HTTP 400" in dead.last_error and "routing_key" in dead.last_error
    assert "too-short" not in dead.last_error and "too-short" not in dead.payload, "the secret is redacted"


def test_pending_notices_of_a_crashed_run(tmp_path: Path, vendors: Vendors) -> None:
    chat = notices_for(written("7", add={TAGS.management}), [SLACK], TAGS)[0]
    page = notices_for(written("7", add={TAGS.management}), [PAGER], TAGS)[0]
    with SqliteStore(tmp_path / "state.sqlite3") as store:
        for notice in (chat, page):
            store.record_intent("notify:zd", "7", notice.ledger_key, notice.encode(), AT)
    running = notifier(tmp_path, vendors, routes=[SLACK, PAGER])
    try:
        assert running.flush()
        deadline = time.monotonic() + 5
        while not vendors.pager.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        running.close()
    assert vendors.slack.accepted == [], "a chat post that may have gone out is never posted again"
    assert [a["dedup_key"] for a in vendors.pager.accepted] == [page.dedup_key], "PagerDuty deduplicates: re-sent"
    with SqliteStore(tmp_path / "state.sqlite3") as store:
        assert store.get_intent(chat.ledger_key).state == "dead"
        assert store.get_intent(page.ledger_key).state == "done"


def test_secrets_stay_out_of_the_ledger_and_the_log(tmp_path: Path, vendors: Vendors) -> None:
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream)  # as the daemon logs, at its most verbose
    running = notifier(tmp_path, vendors)
    try:
        running.on_event(written(add={TAGS.management, "esc_breached_resolution"}))
        assert running.flush()
    finally:
        running.close()
    with SqliteStore(tmp_path / "state.sqlite3") as store:
        payloads = [store.get_intent(n.ledger_key).payload for n in _all_notices()]
    text = "\n".join(payloads) + stream.getvalue()
    assert "notification sent" in text
    assert "xoxbSECRETwebhookTOKEN1" not in text and PagerDutyEvents.ROUTING_KEY not in text
    assert all(Notice.decode(p).dedup_key for p in payloads)


def _all_notices() -> list[Notice]:
    return notices_for(written(add={TAGS.management, "esc_breached_resolution"}), [SLACK, TEAMS, PAGER], TAGS)


# -- configuration and the daemon ----------------------------------------------------------------------------


def test_the_routes_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "notifications.toml"
    path.write_text('[[notify]]\nname = "x"\nkind = "email"\nurl_env = "X"\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match=r"notifications.toml:3: notify.0.kind"):
        notify.load_routes(path)
    path.write_text('[[notify]]\nname = "x"\nkind = "pagerduty"\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match="routing_key_env"):
        notify.load_routes(path)
    path.write_text('[[notify]]\nname = "x"\nkind = "slack"\nurl_env = "NOT_SET_ANYWHERE"\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match="NOT_SET_ANYWHERE"):
        notify.check(tmp_path / "config.toml", {})
    assert notify.load_routes(tmp_path / "absent.toml") == []


def test_once_notifies_through_the_daemon_wiring(tmp_path: Path, monkeypatch, live_sandbox, capsys) -> None:
    _, base_url = live_sandbox
    slack, pager = SlackWebhook(), PagerDutyEvents()
    slack_base, stop_slack = slack.serve()
    pager_base, stop_pager = pager.serve()
    try:
        for name, value in {**CREDENTIALS, "SLACK_URL": slack_base + SlackWebhook.PATH}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PD_KEY", PagerDutyEvents.ROUTING_KEY)
        config = zendesk_only_config(tmp_path, base_url)
        (tmp_path / "notifications.toml").write_text(
            '[[notify]]\nname = "chat"\nkind = "slack"\non = ["management"]\nurl_env = "SLACK_URL"\n\n'
            f'[[notify]]\nname = "oncall"\nkind = "pagerduty"\nrouting_key_env = "PD_KEY"\n'
            f'events_url = "{pager_base}/v2/enqueue"\n',
            encoding="utf-8",
        )
        assert sync.main(["check", "--config", str(config)]) == 0
        assert "ok    notifications: 2 route(s)" in capsys.readouterr().out
        slack.faults = [500]  # the first post may or may not have been delivered: dead-lettered, not re-sent
        assert sync.main(["once", "--config", str(config)]) == 0
        with sqlite3.connect(tmp_path / "state.sqlite3") as db:
            (management,) = db.execute("SELECT COUNT(*) FROM escalations WHERE tier = 'MGMT'").fetchone()
        assert management > 1, "the seeded sandbox has management escalations to notify about"
        assert len(slack.accepted) == management - 1
        assert sum(1 for key in pager.alerts if key.endswith(":management")) == management
        assert sync.main(["once", "--config", str(config)]) == 0
        with sqlite3.connect(tmp_path / "state.sqlite3") as db:
            (management,) = db.execute("SELECT COUNT(*) FROM escalations WHERE tier = 'MGMT'").fetchone()
        # A second cycle may start new management tracks (reviews: time passed, customers' counts moved), but it
        # posts each once and never the first one again.
        assert len(slack.accepted) == management - 1, "every management start posted once, the unknown one never"
        posted = [json.dumps(message, sort_keys=True) for message in slack.accepted]
        assert len(set(posted)) == len(posted), "no message twice"
        assert sync.main(["once", "--dry-run", "--config", str(config)]) == 0
        assert len(slack.accepted) == management - 1
        capsys.readouterr()
        assert sync.main(["status", "--config", str(config), "--json"]) == 0
        (dead,) = json.loads(capsys.readouterr().out)["local-zendesk"]["dead_notifications"]
        assert dead["key"].startswith("notify:chat:") and "HTTP 500" in dead["error"]
    finally:
        stop_slack()
        stop_pager()
