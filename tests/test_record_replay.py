"""`sync.py record` and `sync.py replay` on the three platforms' sandboxes served on loopback: a recording is
read-only and holds no secret, a replay needs no network and no credential, an unrecorded request fails naming
it, and a policy change shows as a plan diff with ticket, field, before and after."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import sync
from sandbox.base import SimClock
from sandbox.jsm import JsmSandbox
from sandbox.servicenow import ServiceNowSandbox
from sandbox.zendesk import ZendeskSandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
SECRETS = {
    "zendesk": {"ZD_EMAIL": "bot@example.com", "ZD_TOKEN": "zd-secret-4711"},
    "jsm": {"JSM_EMAIL": "bot@example.com", "JSM_TOKEN": "jsm-secret-4712"},
    "servicenow": {"SN_USER": "integration", "SN_PASSWORD": "sn-secret-4713"},
}
CREDENTIALS = {
    "zendesk": 'email = "ZD_EMAIL"\napi_token = "ZD_TOKEN"',
    "jsm": 'email = "JSM_EMAIL"\napi_token = "JSM_TOKEN"',
    "servicenow": 'username = "SN_USER"\npassword = "SN_PASSWORD"',
}
SANDBOXES = {"zendesk": ZendeskSandbox, "jsm": JsmSandbox, "servicenow": ServiceNowSandbox}


def write_config(tmp_path: Path, platform: str, base_url: str, policy_edit: tuple[str, str] | None = None) -> Path:
    policy = EXAMPLE.read_text(encoding="utf-8").split("# ---- escalation policy", 1)[1]
    if policy_edit:
        assert policy_edit[0] in policy
        policy = policy.replace(*policy_edit)
    text = (
        f'[state]\nurl = "sqlite:///{tmp_path / "live.sqlite3"}"\n\n[[instances]]\nname = "local-{platform}"\n'
        f'platform = "{platform}"\nbase_url = "{base_url}"\nmapping = "{ROOT / "mappings" / f"{platform}.toml"}"\n\n'
        f"[instances.credentials]\n{CREDENTIALS[platform]}\n\n# ---- escalation policy{policy}"
    )
    path = tmp_path / f"config-{platform}{'-edited' if policy_edit else ''}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(params=sorted(SANDBOXES))
def recorded(request, tmp_path: Path, monkeypatch, capsys) -> Iterator[tuple[str, Path, Path, str]]:
    platform = request.param
    sandbox = SANDBOXES[platform](SimClock(datetime.now(UTC)), seed=11)
    sandbox.seed_tickets(30)
    base_url, stop = sandbox.serve()
    for name, value in SECRETS[platform].items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, platform, base_url)
    out = tmp_path / "recording"
    try:
        code = sync.main(["record", "--config", str(config), "--instance", f"local-{platform}", "--out", str(out)])
        assert code == 0
        assert sandbox.calls("PUT") + sandbox.calls("PATCH") + sandbox.calls("POST", r".*comment.*") == 0
    finally:
        stop()
    for name in SECRETS[platform]:
        monkeypatch.delenv(name)  # the replay runs with no credential at all, as in an admin's CI
    yield platform, config, out, capsys.readouterr().out


def test_a_recording_is_one_file_per_exchange_without_secrets(recorded, capsys) -> None:
    platform, _config, out, _sandbox = recorded
    files = sorted(p for p in out.glob("*.json") if p.name != "manifest.json")
    assert files, "every exchange is saved"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["exchanges"] == len(files) and manifest["platform"] == platform
    for path in files:
        text = path.read_text()
        exchange = json.loads(text)
        assert {"method", "path", "query", "status", "headers", "body"} <= set(exchange)
        assert not {name.lower() for name in exchange["headers"]} & {"authorization", "set-cookie", "cookie"}
        for secret in SECRETS[platform].values():
            if "secret" in secret:
                assert secret not in text, path.name
        assert not (out / ".." / "live.sqlite3").resolve().exists(), "record never opens the state store"


def test_replay_reproduces_the_recorded_plan_and_an_approved_plan_passes(recorded, tmp_path: Path, capsys) -> None:
    platform, config, out, printed = recorded
    recorded_plan = [line for line in printed.splitlines() if line.startswith(f"local-{platform} ")]
    plan = tmp_path / "plan.json"
    assert sync.main(["replay", "--config", str(config), str(out), "--write-plan", str(plan)]) == 0
    replayed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"local-{platform} ")]
    assert replayed == recorded_plan and replayed, "the same plan lines as the recording's dry run"
    assert json.loads(plan.read_text())["tickets"]
    assert sync.main(["replay", "--config", str(config), str(out), "--expect", str(plan)]) == 0
    assert "plan matches the expected one" in capsys.readouterr().out


def test_a_policy_change_fails_with_ticket_field_before_and_after(recorded, tmp_path: Path, capsys) -> None:
    platform, config, out, _sandbox = recorded
    plan = tmp_path / "plan.json"
    assert sync.main(["replay", "--config", str(config), str(out), "--write-plan", str(plan)]) == 0
    approved = json.loads(plan.read_text())
    capsys.readouterr()
    # Management escalations disabled: every planned management tag disappears from the plan.
    base_url = re.search(r'base_url = "([^"]+)"', config.read_text()).group(1)
    edited = write_config(tmp_path, platform, base_url, ("at_risk_fraction = 0.75", "at_risk_fraction = 0.25"))
    code = sync.main(["replay", "--config", str(edited), str(out), "--expect", str(plan)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    diffs = [line for line in printed.splitlines() if line.startswith("plan differs: ")]
    assert diffs
    ticket, rest = diffs[0].removeprefix("plan differs: ").split(" ", 1)
    assert ticket in approved["tickets"] or "plan:" in rest
    assert re.match(r"[\w.]+: .+ -> .+", rest), rest


def test_a_request_not_recorded_fails_naming_it(recorded, capsys) -> None:
    _platform, config, out, _sandbox = recorded
    first = sorted(p for p in out.glob("*.json") if p.name != "manifest.json")[0]
    exchange = json.loads(first.read_text())
    first.unlink()
    capsys.readouterr()
    assert sync.main(["replay", "--config", str(config), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"replay: request not recorded: {exchange['method']} {exchange['path']}" in err


def test_scrub_pii_replaces_emails_names_and_text_stably(tmp_path: Path, monkeypatch, capsys) -> None:
    sandbox = ZendeskSandbox(SimClock(datetime.now(UTC)), seed=11)
    sandbox.seed_tickets(10)
    base_url, stop = sandbox.serve()
    for name, value in SECRETS["zendesk"].items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, "zendesk", base_url)
    plain, scrubbed = tmp_path / "plain", tmp_path / "scrubbed"
    try:
        args = ["record", "--config", str(config), "--instance", "local-zendesk"]
        assert sync.main([*args, "--out", str(plain)]) == 0
        assert sync.main([*args, "--out", str(scrubbed), "--scrub-pii", "--limit", "5"]) == 0
    finally:
        stop()
    plain_text = "".join(p.read_text() for p in sorted(plain.glob("0*.json")))
    scrubbed_text = "".join(p.read_text() for p in sorted(scrubbed.glob("0*.json")))
    subjects = {t["subject"] for t in json.loads(sorted(plain.glob("0*.json"))[0].read_text())["body"]["tickets"]}
    assert subjects and not any(subject in scrubbed_text for subject in subjects)
    emails = set(re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", plain_text)) - {"bot@example.com"}
    assert emails and not any(email in scrubbed_text for email in emails)
    assert "[text " in scrubbed_text
    body = json.loads(sorted(scrubbed.glob("0*.json"))[0].read_text())["body"]
    assert len(body["tickets"]) <= 5


def test_record_refuses_a_directory_that_holds_a_recording(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "0001-GET-x.json").write_text("{}")
    for name, value in SECRETS["zendesk"].items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, "zendesk", "https://acme.zendesk.com")
    code = sync.main(["record", "--config", str(config), "--instance", "local-zendesk", "--out", str(tmp_path / "out")])
    assert code == 2 and "empty directory" in capsys.readouterr().err


def test_replay_at_a_later_time_uses_the_same_exchanges(recorded, tmp_path: Path, capsys) -> None:
    """--now moves the poll's time window (its query changes): exchanges are then matched by method and path."""
    _platform, config, out, _printed = recorded
    recorded_at = datetime.fromisoformat(json.loads((out / "manifest.json").read_text())["recorded_at"])
    later = (recorded_at + timedelta(hours=2)).isoformat()
    plan = tmp_path / "later.json"
    assert sync.main(["replay", "--config", str(config), str(out), "--now", later, "--write-plan", str(plan)]) == 0
    assert json.loads(plan.read_text())["now"] == later
    assert "request not recorded" not in capsys.readouterr().err


def test_a_servicenow_oauth_instance_records_and_replays_without_its_grant(tmp_path: Path, monkeypatch, capsys) -> None:
    sandbox = ServiceNowSandbox(SimClock(datetime.now(UTC)), seed=11, client=("escalation-sync", "sn-client-4714"))
    sandbox.seed_tickets(8)
    base_url, stop = sandbox.serve()
    monkeypatch.setenv("SN_CLIENT_ID", "escalation-sync")
    monkeypatch.setenv("SN_CLIENT_SECRET", "sn-client-4714")
    config = write_config(tmp_path, "servicenow", base_url)
    text = config.read_text().replace(
        CREDENTIALS["servicenow"], 'client_id = "SN_CLIENT_ID"\nclient_secret = "SN_CLIENT_SECRET"'
    )
    config.write_text(text)
    out = tmp_path / "oauth"
    try:
        assert sync.main(["record", "--config", str(config), "--instance", "local-servicenow", "--out", str(out)]) == 0
    finally:
        stop()
    recorded = "".join(path.read_text() for path in out.glob("*.json"))
    assert "sn-client-4714" not in recorded and "/oauth_token.do" not in recorded
    monkeypatch.delenv("SN_CLIENT_SECRET")
    assert sync.main(["replay", "--config", str(config), str(out)]) == 0, capsys.readouterr().err


def test_replay_refuses_a_now_without_a_utc_offset(recorded, tmp_path: Path, capsys) -> None:
    """A time without an offset would be read as the host's local time: another moment on every CI runner."""
    _platform, config, out, _printed = recorded
    naive = datetime.fromisoformat(json.loads((out / "manifest.json").read_text())["recorded_at"]).replace(tzinfo=None)
    assert sync.main(["replay", "--config", str(config), str(out), "--now", naive.isoformat()]) == 2
    assert "no UTC offset" in capsys.readouterr().err
