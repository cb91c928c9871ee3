"""`sync.py check --live`: each platform's metadata (respx, fixtures in the APIs' shapes) against the default
mapping: a wrong field id, an unknown or disabled option, a missing group and an unmapped priority or state are
errors naming what and where; exit 1, and --json says the same."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx

import sync

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLE = ROOT / "config.example.toml"
ENV = {
    "ZENDESK_EMAIL": "bot@example.com",
    "ZENDESK_API_TOKEN": "zd-live-secret",
    "JSM_EMAIL": "bot@example.com",
    "JSM_API_TOKEN": "jsm-live-secret",
    "SERVICENOW_USERNAME": "integration",
    "SERVICENOW_PASSWORD": "sn-live-secret",
}


def _json(name: str) -> object:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
def config(tmp_path: Path, monkeypatch) -> Path:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace('mapping = "mappings/', f'mapping = "{ROOT}/mappings/')
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def instances():
    with respx.mock(assert_all_called=False) as mock:
        zd = "https://acme.zendesk.com/api/v2"
        mock.get(f"{zd}/ticket_fields.json").respond(json=_json("zendesk/live_ticket_fields.json"))
        mock.get(f"{zd}/groups.json").respond(json=_json("zendesk/live_groups.json"))
        mock.get(f"{zd}/users/me.json").respond(json=_json("zendesk/live_users_me.json"))
        jira = "https://acme.atlassian.net/rest/api/3"
        mock.get(f"{jira}/field").respond(json=_json("jsm/live_fields.json"))
        mock.get(f"{jira}/field/customfield_10200/context").respond(json=_json("jsm/live_tier_contexts.json"))
        mock.get(f"{jira}/field/customfield_10200/context/10400/option").respond(
            json=_json("jsm/live_tier_options.json")
        )
        mock.get(f"{jira}/priority").respond(json=_json("jsm/live_priorities.json"))
        mock.get(f"{jira}/status").respond(json=_json("jsm/live_statuses.json"))
        mock.get(f"{jira}/mypermissions").respond(json=_json("jsm/live_mypermissions.json"))
        sn = "https://acme.service-now.com/api/now/table"
        mock.get(f"{sn}/sys_dictionary").respond(json=_json("servicenow/live_sys_dictionary.json"))
        mock.get(
            f"{sn}/sys_choice", params={"sysparm_query": "nameINincident,task^element=state^inactive=false"}
        ).respond(json=_json("servicenow/live_sys_choice_state.json"))
        mock.get(
            f"{sn}/sys_choice", params={"sysparm_query": "nameINincident,task^element=priority^inactive=false"}
        ).respond(json=_json("servicenow/live_sys_choice_priority.json"))
        mock.get(f"{sn}/sys_user_group").respond(json=_json("servicenow/live_sys_user_group.json"))
        for table in ("incident", "sys_audit", "sys_journal_field"):
            mock.get(f"{sn}/{table}").respond(json=_json("servicenow/live_read_one.json"))
        yield mock


def _errors(out: str, instance: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"error {instance} live: ")]


def test_zendesk_wrong_field_id_unknown_option_and_deleted_group(config: Path, instances, capsys) -> None:
    assert sync.main(["check", "--config", str(config), "--live", "--instance", "acme-zendesk"]) == 1
    errors = _errors(capsys.readouterr().out, "acme-zendesk")
    assert errors == [
        "error acme-zendesk live: ticket field 360020000002: not found on ticket_fields",
        "error acme-zendesk live: priority.field_values option sev_4: not found on ticket field 360020000004",
        "error acme-zendesk live: tier group 360000000104: not found on groups",
    ]


def test_jsm_wrong_field_id_disabled_option_and_unmapped_priority(config: Path, instances, capsys) -> None:
    assert sync.main(["check", "--config", str(config), "--live", "--instance", "acme-jsm"]) == 1
    out = capsys.readouterr().out
    errors = _errors(out, "acme-jsm")
    assert errors == [
        "error acme-jsm live: field customfield_10121: not found on /rest/api/3/field",
        "error acme-jsm live: tier option L4 - Engineering: not found on field customfield_10200",
        "error acme-jsm live: priority Emergency: not in priority.values",
    ]
    assert "warn  acme-jsm live: priority.values: not on this instance (unused): Blocker, Critical, Major" in out


def test_servicenow_wrong_field_unmapped_state_and_missing_group(config: Path, instances, capsys) -> None:
    assert sync.main(["check", "--config", str(config), "--live", "--instance", "acme-servicenow"]) == 1
    out = capsys.readouterr().out
    assert _errors(out, "acme-servicenow") == [
        "error acme-servicenow live: field u_affected_customers: not found on sys_dictionary (incident, task)",
        "error acme-servicenow live: state choice 9: 'Awaiting Vendor' is not in status.values: its tickets would"
        " be quarantined",
        "error acme-servicenow live: tier group 972a846916419f828b9d2434e465e150: not found on sys_user_group",
    ]
    assert "ok    acme-servicenow live: priority choice 5: '5 - Planning' mapped" in out


def test_json_report_and_a_clean_instance_exits_0(config: Path, instances, capsys) -> None:
    assert sync.main(["check", "--config", str(config), "--live", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 9 and set(report["instances"]) == {"acme-zendesk", "acme-jsm", "acme-servicenow"}
    fields = _json("zendesk/live_ticket_fields.json")
    fields["ticket_fields"].append({**fields["ticket_fields"][-1], "id": 360020000002})
    fields["ticket_fields"][2]["custom_field_options"][3]["value"] = "sev_4"
    groups = _json("zendesk/live_groups.json")
    groups["groups"][3]["deleted"] = False
    instances.get("https://acme.zendesk.com/api/v2/ticket_fields.json").respond(json=fields)
    instances.get("https://acme.zendesk.com/api/v2/groups.json").respond(json=groups)
    assert sync.main(["check", "--config", str(config), "--live", "--instance", "acme-zendesk"]) == 0
    assert "live: every field, option, group, status and priority found" in capsys.readouterr().out


def test_metadata_the_credentials_cannot_read_is_an_error(config: Path, instances, capsys) -> None:
    instances.get("https://acme.atlassian.net/rest/api/3/field").mock(return_value=httpx.Response(403, json={}))
    assert sync.main(["check", "--config", str(config), "--live", "--instance", "acme-jsm"]) == 1
    out = capsys.readouterr().out
    assert "error acme-jsm live: metadata: " in out and "jsm-live-secret" not in out


def test_rights_the_credentials_lack_are_errors(config: Path, instances, capsys) -> None:
    me = _json("zendesk/live_users_me.json")
    me["user"]["role"] = "agent"
    instances.get("https://acme.zendesk.com/api/v2/users/me.json").respond(json=me)
    permissions = _json("jsm/live_mypermissions.json")
    permissions["permissions"]["ADD_COMMENTS"]["havePermission"] = False
    instances.get("https://acme.atlassian.net/rest/api/3/mypermissions").respond(json=permissions)
    denied = {"error": {"message": "Insufficient rights to query records", "detail": None}, "status": "failure"}
    instances.get("https://acme.service-now.com/api/now/table/sys_audit").respond(403, json=denied)
    assert sync.main(["check", "--config", str(config), "--live"]) == 1
    out = capsys.readouterr().out
    assert (
        "error acme-zendesk live: credentials: role 'agent': the incremental exports the daemon reads need an admin"
        in out
    )
    assert "error acme-jsm live: permission ADD_COMMENTS: not granted: the daemon needs it" in out
    assert "ok    acme-jsm live: permission EDIT_ISSUES: granted (in at least one project)" in out
    assert "error acme-servicenow live: read sys_audit: answered 403: the daemon reads it" in out
    assert "ok    acme-servicenow live: read sys_journal_field: readable" in out
    assert "warn  acme-servicenow live: write rights: not checked" in out
