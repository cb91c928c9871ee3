"""WriteBack and RawRecord <-> JSON, for the state store: a pending intent must be retryable, and a ticket in
the book reviewable, from the database alone."""

from __future__ import annotations

import json

import orjson

from connectors.base import RawRecord
from connectors.http import decode_json
from engine.model import Comment, Tier, WriteBack


def encode(writeback: WriteBack) -> str:
    return json.dumps(
        {
            "platform": writeback.platform,
            "instance": writeback.instance,
            "ticket_id": writeback.ticket_id,
            "revision": writeback.revision,
            "tier": writeback.tier.value if writeback.tier else None,
            "add_tags": sorted(writeback.add_tags),
            "remove_tags": sorted(writeback.remove_tags),
            "tags": sorted(writeback.tags) if writeback.tags is not None else None,
            "comment": (
                {"body": writeback.comment.body, "idempotency_key": writeback.comment.idempotency_key}
                if writeback.comment
                else None
            ),
        },
        sort_keys=True,
    )


def decode(payload: str) -> WriteBack:
    data = json.loads(payload)
    comment = data.get("comment")
    return WriteBack(
        platform=data["platform"],
        instance=data["instance"],
        ticket_id=data["ticket_id"],
        revision=data["revision"],
        tier=Tier(data["tier"]) if data.get("tier") else None,
        add_tags=frozenset(data.get("add_tags", ())),
        remove_tags=frozenset(data.get("remove_tags", ())),
        comment=Comment(comment["body"], comment["idempotency_key"]) if comment else None,
        tags=frozenset(data["tags"]) if data.get("tags") is not None else None,
    )


_STRING_KEYS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_RECORD_OPTIONS = orjson.OPT_NON_STR_KEYS | _STRING_KEYS_OPTIONS
"""What `json.dumps(..., default=str)` did where orjson would do otherwise: non-string keys become strings,
datetimes and dataclasses go through `str`."""


def encode_record(record: RawRecord) -> str:
    """Every booked record is encoded once per poll (the book's raw): orjson, about ten times cheaper than json.
    The records come from `connectors.http.decode_json`, so they hold no non-finite float (orjson would write
    one as null).

    Decoded JSON has string keys only, and orjson writes those the same with or without OPT_NON_STR_KEYS, which
    costs about a third of the encoding: a record is first encoded without it, and only one that has another
    key (orjson then refuses it) is encoded again with it."""
    payload = {"id": record.id, "data": record.data, "related": record.related}
    try:
        return orjson.dumps(payload, default=str, option=_STRING_KEYS_OPTIONS).decode()
    except orjson.JSONEncodeError:
        pass
    try:
        return orjson.dumps(payload, default=str, option=_RECORD_OPTIONS).decode()
    except orjson.JSONEncodeError:  # what orjson cannot write (an integer wider than 64 bits): json can
        return json.dumps(payload, default=str)


def decode_record(payload: str) -> RawRecord:
    """Through `decode_json`: a raw stored by an older version with a `NaN` literal still reads."""
    data = decode_json(payload)
    return RawRecord(id=str(data["id"]), data=data["data"], related=data.get("related") or {})
