"""Issue 10's leftovers and issue 14's call counts: values at the mapping edge, ServiceNow tags a person edits,
no read before a ServiceNow write, JSM's search window under clock skew, and maybe-applied writes retried in
the same cycle."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import AmbiguousWriteError, RawRecord
from engine.model import COMMENT_MARKER
from mappings import NormalizeError, load_mapping
from mappings.jsm import JsmMapping
from mappings.servicenow import ServiceNowMapping
from mappings.zendesk import ZendeskMapping
from sandbox.base import Fault
from tests.test_cycle import PLATFORMS, World

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / name).read_text(encoding="utf-8"))


# -- values at the mapping edge (issue 10 item 7) -------------------------------------------------------------


def _zendesk_record(**changes: Any) -> RawRecord:
    ticket = copy.deepcopy(_fixture("zendesk", "incremental_cursor_page1.json")["tickets"][0])
    custom = changes.pop("custom", {})
    ticket.update(changes)
    for field_id, value in custom.items():
        ticket["custom_fields"] = [entry for entry in ticket["custom_fields"] if entry["id"] != field_id]
        ticket["custom_fields"].append({"id": field_id, "value": value})
    return RawRecord(str(ticket["id"]), ticket, {})


def _zendesk() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


@pytest.mark.parametrize("value", ["1e999", "-1e999", "NaN", "inf", "Infinity", float("nan"), float("inf")])
def test_issue10_zendesk_revenue_that_is_not_finite_is_quarantined_naming_the_field(value: Any) -> None:
    with pytest.raises(NormalizeError) as caught:
        _zendesk().normalize(_zendesk_record(custom={360020000001: value}), "z")
    assert caught.value.field == "flags.revenue_at_risk"
    assert "number" in caught.value.reason


def test_issue10_zendesk_count_that_overflows_is_quarantined() -> None:
    with pytest.raises(NormalizeError) as caught:
        _zendesk().normalize(_zendesk_record(custom={360020000002: "1e999"}), "z")
    assert caught.value.field == "flags.affected_customers"


@pytest.mark.parametrize("value", ["0.0", "unchecked", {}, "false", "No", 0, None, False, "0"])
def test_issue10_zendesk_checkbox_false_texts_read_false(value: Any) -> None:
    ticket = _zendesk().normalize(_zendesk_record(custom={360000000201: value}, tags=[]), "z")
    assert ticket.flags.engineering_required is False


@pytest.mark.parametrize("value", [True, "true", "1", "yes", "checked", 1, "1.0"])
def test_issue10_zendesk_checkbox_true_texts_read_true(value: Any) -> None:
    ticket = _zendesk().normalize(_zendesk_record(custom={360000000201: value}, tags=[]), "z")
    assert ticket.flags.engineering_required is True


@pytest.mark.parametrize("value", ["maybe", {"a": 1}, "nan"])
def test_issue10_zendesk_checkbox_that_is_no_boolean_is_quarantined(value: Any) -> None:
    with pytest.raises(NormalizeError) as caught:
        _zendesk().normalize(_zendesk_record(custom={360000000201: value}, tags=[]), "z")
    assert caught.value.field == "flags.engineering_required"
    assert "not a boolean" in caught.value.reason


@pytest.mark.parametrize("value", ["360000000102", 3.6e11, True, [360000000102]])
def test_issue10_zendesk_group_id_of_the_wrong_type_is_an_error_not_no_tier(value: Any) -> None:
    with pytest.raises(NormalizeError) as caught:
        _zendesk().normalize(_zendesk_record(group_id=value), "z")
    assert caught.value.field == "group_id"


def test_issue10_zendesk_custom_field_id_of_the_wrong_type_is_an_error() -> None:
    record = _zendesk_record()
    record.data["custom_fields"].append({"id": "abc", "value": "x"})
    with pytest.raises(NormalizeError) as caught:
        _zendesk().normalize(record, "z")
    assert caught.value.field == "custom_fields"


def _jsm_issue() -> dict[str, Any]:
    return copy.deepcopy(_fixture("jsm", "search_page1.json")["issues"][0])


def _jsm() -> JsmMapping:
    loaded = load_mapping("jsm")
    assert isinstance(loaded, JsmMapping)
    return loaded


@pytest.mark.parametrize("value", ["1e999", "NaN", float("inf"), "-Infinity"])
def test_issue10_jsm_revenue_that_is_not_finite_is_quarantined(value: Any) -> None:
    data = _jsm_issue()
    data["fields"]["customfield_10120"] = value
    with pytest.raises(NormalizeError) as caught:
        _jsm().normalize(RawRecord(id=data["id"], data=data), "j")
    assert caught.value.field == "customfield_10120"


def _servicenow_row(**changes: Any) -> RawRecord:
    row = copy.deepcopy(_fixture("servicenow", "incident_poll_page1.json")["result"][0])
    row.update(changes)
    return RawRecord(
        id=row["sys_id"], data=row, related={"instance_url": "https://acme.service-now.com", "table": "incident"}
    )


def _servicenow() -> ServiceNowMapping:
    loaded = load_mapping("servicenow")
    assert isinstance(loaded, ServiceNowMapping)
    return loaded


@pytest.mark.parametrize("value", ["1e999", "NaN", "inf"])
def test_issue10_servicenow_count_that_is_not_finite_is_quarantined(value: str) -> None:
    with pytest.raises(NormalizeError) as caught:
        _servicenow().normalize(_servicenow_row(u_affected_customers=value), "s")
    assert caught.value.field == "u_affected_customers"


@pytest.mark.parametrize("value", [False, True, 7])
def test_issue10_servicenow_assignment_group_of_the_wrong_type_is_an_error(value: Any) -> None:
    with pytest.raises(NormalizeError) as caught:
        _servicenow().normalize(_servicenow_row(assignment_group=value), "s")
    assert caught.value.field == "assignment_group"


def test_issue10_servicenow_true_false_flag_refuses_other_texts() -> None:
    assert _servicenow().normalize(_servicenow_row(u_churn_risk="false"), "s").flags.churn_threat is False
    assert _servicenow().normalize(_servicenow_row(u_churn_risk="true"), "s").flags.churn_threat is True
    with pytest.raises(NormalizeError) as caught:
        _servicenow().normalize(_servicenow_row(u_churn_risk="perhaps"), "s")
    assert caught.value.field == "u_churn_risk"


# -- a maybe-applied write is verified and sent again in the same cycle (issue 10, soak) -------------------------


@pytest.fixture(params=sorted(PLATFORMS))
def world(request: pytest.FixtureRequest, tmp_path: Path):
    created = World(tmp_path, PLATFORMS[request.param])
    yield created
    created.close()


def _quick(world: World):
    syncer = world.syncer()
    syncer.retry_backoff = timedelta(0)
    return syncer


def test_issue10_a_5xx_before_apply_is_sent_again_in_the_same_cycle(world: World, tmp_path: Path) -> None:
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=502, times=1, method=method, path_pattern=path))
    syncer = _quick(world)
    report = syncer.run_cycle()
    assert report.failed == 1 and report.recovered == 1, report
    assert world.store.pending(world.name) == [], "nothing is left for the next poll interval"
    # The faulty cycle wrote what a cycle without the fault writes, in the same cycle.
    (tmp_path / "clean").mkdir()
    clean = World(tmp_path / "clean", world.platform)
    try:
        clean_report = _quick(clean).run_cycle()
        assert report.writes == clean_report.writes
    finally:
        clean.close()
    assert set(world.marker_counts().values()) == {1}


def test_issue10_a_write_applied_but_unanswered_is_verified_not_posted_twice_in_the_same_cycle(world: World) -> None:
    syncer = _quick(world)
    real_apply = syncer.connector.apply
    lost: list[str] = []

    def applied_then_lost(writeback):
        result = real_apply(writeback)
        if not lost and writeback.comment is not None:
            lost.append(writeback.key)
            raise AmbiguousWriteError("read timeout after the request was sent")
        return result

    syncer.connector.apply = applied_then_lost  # type: ignore[method-assign]
    report = syncer.run_cycle()
    assert lost and report.failed == 1 and report.recovered == 1
    assert world.store.pending(world.name) == []
    counts = world.marker_counts()
    assert counts[COMMENT_MARKER.format(key=lost[0])] == 1
    assert set(counts.values()) == {1}


def test_issue10_the_same_cycle_retry_is_one_pass(world: World) -> None:
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=502, times=1000, method=method, path_pattern=path))
    syncer = _quick(world)
    before = world.sandbox.calls(method, path)
    report = syncer.run_cycle()
    sent = world.sandbox.calls(method, path) - before
    pending = world.store.pending(world.name)
    assert pending and all(intent.attempts <= 2 for intent in pending)
    # Each planned write is tried at most twice in the cycle: once, and once in the retry pass.
    assert sent <= 2 * len(pending) + report.writes, (sent, len(pending))


def test_issue10_the_retry_pass_waits_its_backoff_and_a_stop_skips_it(world: World) -> None:
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=502, times=1, method=method, path_pattern=path))
    syncer = world.syncer()
    syncer.retry_backoff = timedelta(seconds=2)
    waits: list[float] = []

    class Stop:
        def is_set(self) -> bool:
            return False

        def wait(self, seconds: float) -> bool:
            waits.append(seconds)
            return True  # stopped during the backoff

    syncer.stop = Stop()  # type: ignore[assignment]
    report = syncer.run_cycle()
    assert waits == [2.0]
    assert report.recovered == 0 and len(world.store.pending(world.name)) == 1


# -- ServiceNow: a person's tag edit survives our write; no read before a write (issue 10 item 8, issue 14) -------


def _servicenow_world(tmp_path: Path) -> World:
    return World(tmp_path, PLATFORMS["servicenow"])


def test_issue10_servicenow_a_persons_tag_edit_just_before_our_write_survives_4_of_4(tmp_path: Path) -> None:
    world = _servicenow_world(tmp_path)
    try:
        spec = _servicenow().spec.tags
        people_field = getattr(spec, "people_field", "") or spec.field  # where a person's tags live
        sandbox = world.sandbox
        real_dispatch = sandbox.dispatch
        edited: list[str] = []

        def person_edits_first(request):
            if request.method == "PATCH" and len(edited) < 4 and spec.field in (request.json() or {}):
                sys_id = request.path.rsplit("/", 1)[-1]
                before = sandbox.ticket(sys_id)[people_field]
                sandbox.update(sys_id, **{people_field: ",".join(filter(None, [before, "vip_watch"]))})
                edited.append(sys_id)
            return real_dispatch(request)

        sandbox.dispatch = person_edits_first
        world.syncer().run_cycle()
        assert len(edited) == 4
        survived = [sys_id for sys_id in edited if "vip_watch" in sandbox.ticket(sys_id)[people_field].split(",")]
        assert len(survived) == 4, f"{len(survived)} of 4 survived"
        # ...and our own tags landed in the daemon's field.
        assert all(sandbox.escalation_view(sys_id)[1] for sys_id in edited)
    finally:
        world.close()


def test_issue14_servicenow_one_patch_and_no_read_per_written_ticket(tmp_path: Path) -> None:
    world = _servicenow_world(tmp_path)
    try:
        sandbox = world.sandbox
        start = len(sandbox.requests)
        report = world.syncer().run_cycle()
        assert report.writes > 10 and report.error == ""
        calls = sandbox.requests[start:]
        record = r"/api/now/table/incident/[0-9a-f]{32}$"
        patches = [path for method, path in calls if method == "PATCH" and re.search(record, path)]
        reads = [path for method, path in calls if method == "GET" and re.search(record, path)]
        assert reads == [], "the polled record is the read"
        assert len(patches) == report.writes == len(set(patches)), (len(patches), report.writes)
    finally:
        world.close()


# -- JSM: the search window holds whatever the skew between `updated` and `Date` (issue 10 item 8) ---------------


def _poll_to_end(connector: Any, cursor: str | None, now: Any) -> tuple[list[str], str | None]:
    keys: list[str] = []
    while True:
        page = connector.poll(cursor, now)
        keys += [record.data["key"] for record in page.records]
        cursor = page.cursor
        if not page.has_more:
            return keys, cursor


@pytest.mark.parametrize("skew_seconds", [600, 3600, -600])
def test_issue10_jsm_window_sees_every_edit_when_updated_lags_the_date_header(
    tmp_path: Path, skew_seconds: int
) -> None:
    world = World(tmp_path, PLATFORMS["jsm"])
    try:
        sandbox = world.sandbox
        sandbox.date_skew = timedelta(seconds=skew_seconds)  # overlap_seconds is 120
        connector = world.syncer().connector
        _, cursor = _poll_to_end(connector, None, world.clock.now())
        edited = sandbox.issue_keys()[:5]
        for round_ in range(3):
            world.clock.advance(timedelta(minutes=1))
            for key in edited:
                sandbox.update(key, summary=f"edited by a person, round {round_}")
            world.clock.advance(timedelta(minutes=1))
            seen, cursor = _poll_to_end(connector, cursor, world.clock.now())
            missed = [key for key in edited if key not in seen]
            assert missed == [], f"round {round_}: {len(missed)} edits missed with a {skew_seconds} s skew"
    finally:
        world.close()
