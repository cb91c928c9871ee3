"""`explain --file` on every shape an admin may save: a record, a page, an envelope, a top-level list, a recorded
exchange; never a traceback, and the history a cycle would use when a store is configured."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sync
from connectors.base import RawRecord
from runtime.explain_input import Skipped, records_in
from state.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
AT = "2026-11-23T15:00:00+00:00"


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _explain(tmp_path: Path, platform: str, data: object, capsys, *extra: str) -> tuple[int, object, str]:
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    code = sync.main(["explain", "--platform", platform, "--file", str(path), "--at", AT, "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_a_top_level_list_of_servicenow_records_explains_each(tmp_path: Path, capsys) -> None:
    rows = _load("servicenow/incident_poll_page1.json")["result"]
    code, out, err = _explain(tmp_path, "servicenow", rows, capsys)
    assert code == 0, err
    assert [item["ticket"]["id"] for item in out] == [row["sys_id"] for row in rows]


@pytest.mark.parametrize(
    ("platform", "fixture", "key"),
    [
        ("servicenow", "servicenow/incident_poll_page1.json", "result"),
        ("zendesk", "zendesk/incremental_cursor_page1.json", "tickets"),
        ("jsm", "jsm/search_page1.json", "issues"),
    ],
)
def test_an_envelope_and_a_recorded_exchange_of_it_explain_the_same(
    tmp_path: Path, capsys, platform: str, fixture: str, key: str
) -> None:
    body = _load(fixture)
    code, plain, err = _explain(tmp_path, platform, body, capsys)
    assert code == 0, err
    assert len(plain) == len(body[key]) > 1
    exchange = {"status": 200, "headers": {"content-type": "application/json"}, "body": body}
    code, recorded, err = _explain(tmp_path, platform, exchange, capsys)
    assert code == 0, err
    assert recorded == plain


def test_a_zendesk_page_attaches_its_sideloads_as_the_connector_does() -> None:
    page = _load("zendesk/incremental_cursor_page1.json")
    records = [r for r in records_in(page, "zendesk") if isinstance(r, RawRecord)]
    with_org = [r for r in records if r.data.get("organization_id")]
    assert with_org and all(r.related["organization"]["id"] == r.data["organization_id"] for r in with_org)


def test_a_single_servicenow_result_object_is_one_record() -> None:
    row = _load("servicenow/incident_poll_page1.json")["result"][0]
    (record,) = records_in({"result": row}, "servicenow")
    assert isinstance(record, RawRecord) and record.id == row["sys_id"]


def test_strange_items_are_named_not_raised(tmp_path: Path, capsys) -> None:
    row = _load("servicenow/incident_poll_page1.json")["result"][0]
    data = [row, 42, {"status": 404, "headers": {}, "body": {"error": {"message": "No Record found"}}}, []]
    code, out, err = _explain(tmp_path, "servicenow", data, capsys)
    assert code == 1, "a file with items that are not tickets is not a clean explain"
    assert len(out) == 1 and out[0]["ticket"]["id"] == row["sys_id"]
    assert "file[1]: a JSON int, not a ticket record" in err
    assert "file[2]: a recorded exchange answered 404" in err
    assert "file[3]: an empty list" in err
    assert "Traceback" not in err


def test_an_item_that_breaks_the_mapping_is_reported_and_the_rest_explained(tmp_path: Path, capsys) -> None:
    rows = _load("servicenow/incident_poll_page1.json")["result"]
    broken = {**rows[0], "sys_updated_on": ["not", "a", "date"]}
    code, out, err = _explain(tmp_path, "servicenow", [broken, rows[1]], capsys)
    assert code == 1
    assert [item["ticket"]["id"] for item in out] == [rows[1]["sys_id"]]
    assert "cannot normalize" in err and rows[0]["sys_id"] in err


def test_history_comes_from_the_configured_store(tmp_path: Path, capsys) -> None:
    """With --instance, the config's store gives the ticket its recorded tier entries, as a cycle would."""
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    policy = example.split("# ---- escalation policy", 1)[1]
    state = tmp_path / "state.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[state]\nurl = "sqlite:///{state}"\n\n[[instances]]\nname = "zd"\nplatform = "zendesk"\n'
        f'base_url = "https://acme.zendesk.com"\nmapping = "{ROOT / "mappings" / "zendesk.toml"}"\n\n'
        '[instances.credentials]\nemail = "ZD_EMAIL"\napi_token = "ZD_TOKEN"\n'
        "\n# ---- escalation policy" + policy,
        encoding="utf-8",
    )
    ticket = _load("zendesk/ticket_show.json")
    payload = tmp_path / "t.json"
    payload.write_text(json.dumps(ticket), encoding="utf-8")
    args = ["explain", "--config", str(config), "--instance", "zd", "--file", str(payload), "--at", AT, "--json"]
    assert sync.main(args) == 0
    without = json.loads(capsys.readouterr().out)
    assert not state.exists(), "explaining never creates a state store"
    store = SqliteStore(str(state))
    entered = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    store.record_escalation("zd", "", str(ticket["ticket"]["id"]), "L2", entered)
    store.close()
    assert sync.main(args) == 0
    with_history = json.loads(capsys.readouterr().out)
    assert with_history != without, "the recorded L2 entry changes what the engine sees"
    assert "L2" in json.dumps(with_history)


def test_records_in_never_raises_on_odd_json() -> None:
    for data in (None, "text", 3.5, {"result": "x"}, {"status": 200, "headers": {}, "body": "not json"}):
        for item in records_in(data, "servicenow"):
            assert isinstance(item, (RawRecord, Skipped))


def test_with_an_instance_a_servicenow_record_links_to_it(tmp_path: Path, capsys) -> None:
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(example.replace('mapping = "mappings/', f'mapping = "{ROOT}/mappings/'), encoding="utf-8")
    payload = tmp_path / "incident.json"
    payload.write_text(json.dumps(_load("servicenow/incident_poll_page1.json")["result"][0]), encoding="utf-8")
    args = ["explain", "--config", str(config), "--instance", "acme-servicenow", "--file", str(payload), "--json"]
    assert sync.main([*args, "--at", AT]) == 0
    ticket = json.loads(capsys.readouterr().out)["ticket"]
    assert ticket["url"] == f"https://acme.service-now.com/incident.do?sys_id={ticket['id']}"
    assert ticket["instance"] == "acme-servicenow"
