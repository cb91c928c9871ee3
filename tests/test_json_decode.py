"""Response bodies and the book's records through orjson (connectors.http.decode_json, runtime.codec), with the
standard library's outcome where the two parsers differ: a non-finite number is one record's problem
(quarantined by the mapping, issue 10), never the whole page's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import respx
from test_zendesk_connector import INCREMENTAL, NOW, fixture, make_connector

from connectors.base import RawRecord, TransientError
from connectors.http import decode_json
from mappings import NormalizeError, load_mapping
from mappings.zendesk import ZendeskMapping
from runtime.codec import _RECORD_OPTIONS, decode_record, encode_record

REVENUE_FIELD = 360020000001
"""mappings/zendesk.toml's `flags.revenue_at_risk` custom field."""


def test_strict_json_reads_as_the_standard_library_reads_it() -> None:
    text = '{"id": 4101, "tags": ["a", "é"], "value": 1.5, "big": 12345678901234567, "none": null, "ok": true}'
    assert decode_json(text.encode()) == json.loads(text)
    assert decode_json(text) == json.loads(text)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_a_non_finite_number_is_kept_as_its_text_not_refused_with_its_page(literal: str) -> None:
    body = f'{{"tickets": [{{"id": 1, "value": {literal}}}, {{"id": 2, "value": 3.25}}]}}'.encode()
    assert decode_json(body) == {"tickets": [{"id": 1, "value": literal}, {"id": 2, "value": 3.25}]}


@pytest.mark.parametrize("body", [b"<html>asleep</html>", b'{"tickets": [', b"\xff\xfe{", b""])
def test_what_is_no_json_at_all_raises_as_the_standard_library_does(body: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ValueError):
        decode_json(body)


@respx.mock
def test_a_page_with_a_nan_literal_is_read_and_only_that_record_is_refused() -> None:
    mapping = load_mapping("zendesk")
    assert isinstance(mapping, ZendeskMapping)
    page = fixture("incremental_cursor_page1.json")
    page["tickets"][0]["custom_fields"].append({"id": REVENUE_FIELD, "value": "__NAN__"})
    text = json.dumps(page).replace('"__NAN__"', "NaN")
    respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, content=text.encode()))
    connector = make_connector(mapping, [])
    try:
        records = connector.poll(None, NOW).records
    finally:
        connector.close()
    assert len(records) == len(page["tickets"])
    with pytest.raises(NormalizeError) as caught:
        mapping.normalize(records[0], "acme-zendesk")
    assert caught.value.field == "flags.revenue_at_risk"
    for record in records[1:]:
        mapping.normalize(record, "acme-zendesk")


@respx.mock
def test_a_page_that_is_no_json_names_the_instance_and_the_export() -> None:
    mapping = load_mapping("zendesk")
    assert isinstance(mapping, ZendeskMapping)
    respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, content=b"<html>maintenance</html>"))
    connector = make_connector(mapping, [])
    try:
        with pytest.raises(TransientError, match=r"acme-zendesk: incremental export: .*not JSON"):
            connector.poll(None, NOW)
    finally:
        connector.close()


def test_the_book_codec_round_trips_what_the_standard_library_wrote_and_read() -> None:
    data: dict[str, Any] = {"id": 7, "subject": "naïve ☃", "fields": [{"id": 1, "value": 2.5}], "tags": []}
    related: dict[str, Any] = {"metric_set": {"reopens": 0}, "ticket_events_window": [1, 2], "by_id": {3: "x"}}
    record = RawRecord("7", data, related)
    old = json.dumps({"id": record.id, "data": record.data, "related": record.related}, default=str)
    assert json.loads(encode_record(record)) == json.loads(old)
    assert decode_record(encode_record(record)) == decode_record(old)
    at = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)
    stamped = RawRecord("8", {"id": 8, "at": at}, {})
    assert json.loads(encode_record(stamped))["data"]["at"] == str(at)


def test_a_stored_record_with_a_non_finite_literal_still_reads() -> None:
    """Written by the standard library before orjson (`NaN` for a float nan): read, the value as its text."""
    record = decode_record('{"id": "9", "data": {"id": 9, "value": NaN}, "related": {}}')
    assert record == RawRecord("9", {"id": 9, "value": "NaN"}, {})


def test_a_record_orjson_cannot_write_is_written_by_json() -> None:
    """An integer wider than 64 bits (json reads one exactly, and a mutated record may carry it). It reads back
    as a float, as such a number in a response body does (see `decode_json`)."""
    record = RawRecord("10", {"id": 10, "value": -(2**63) - 1}, {})
    assert decode_record(encode_record(record)) == RawRecord("10", {"id": 10, "value": float(-(2**63) - 1)}, {})


def test_the_book_codec_writes_each_record_as_with_every_option() -> None:
    """Records are first encoded without OPT_NON_STR_KEYS (issue 14: it costs a third of the encoding): the text
    is the one the full options write, a record with another key included."""
    at = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)
    for record in (
        RawRecord("7", {"id": 7, "subject": "naïve ☃", "at": at, "fields": [{"id": 1, "value": 2.5}]}, {"x": [1]}),
        RawRecord("8", {"id": 8, "by_id": {3: "x", "4": None}}, {"events": [{"n": {5.5: True}}]}),
        RawRecord("9", {"id": 9}, {}),
    ):
        payload = {"id": record.id, "data": record.data, "related": record.related}
        assert encode_record(record) == orjson.dumps(payload, default=str, option=_RECORD_OPTIONS).decode()
