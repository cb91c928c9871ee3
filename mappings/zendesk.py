"""Zendesk mapping: the schema of `mappings/zendesk.toml` and the normalizer it drives.

Owns every fact about how a Zendesk ticket (as the incremental ticket export or `GET /api/v2/tickets/{id}`
returns it) becomes an `engine.model.Ticket`, and which ticket fields put a ticket at a tier.

Input (a `RawRecord` built by connectors/zendesk.py):
- `data`: the ticket object exactly as Zendesk sends it. `priority` is urgent/high/normal/low or null;
  `status` is new/open/pending/hold/solved/closed, or `deleted` in the incremental export (a tombstone);
  timestamps are ISO 8601 UTC strings such as `2023-09-18T15:57:42Z`; `custom_fields` is a list of
  `{"id": <int>, "value": <str|bool|number|list|null>}`; dropdown (tagger) field values are option tags.
- `related["organization"]`: the sideloaded organization (`include=organizations`), with `organization_fields`.
- `related["metric_set"]`: the sideloaded ticket metric set (`include=metric_sets`), see below.

Times from the metric set (Ticket Metrics JSON format,
https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_metrics/; sideloading it on the
incremental export with `include=metric_sets` is documented in
https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/ and
https://developer.zendesk.com/documentation/ticketing/using-the-zendesk-api/side_loading/):
- first_public_reply_at = created_at + `reply_time_in_seconds.calendar` (or `reply_time_in_minutes.calendar`
  when the seconds form is absent): Zendesk's "time to first reply" is measured to the first public agent
  comment. None while it is null (no reply yet).
- last_public_reply_at: the metric set has no "last public agent reply" time (`latest_comment_added_at`
  counts private notes and customer comments too). We only know it when `replies == 1` (then it is the first
  reply), unless the ticket's events were all seen (`related["ticket_events"]`, or its audits on a re-read):
  then every reply, action, status and group change is known (see `_EventHistory`) and these single times
  follow from them.
- last_agent_action_at = `assignee_updated_at` ("when the assignee last updated the ticket").
- status_history = one entry, the current status since `status_updated_at`: enough for the engine to know
  since when a pending or on-hold ticket has been paused.
- solved_at = `solved_at`; flags.reopen_count = `reopens` unless the mapping names another source.
- tier_entered_at: Zendesk does not say when a ticket entered its current group or field value. With group
  tiers and `group_stations <= 1` the ticket has been in its group since it was created, so created_at is
  exact. Otherwise we use the metric set's `assigned_at` (the last assignment, which a group move brings with
  it), and None when that is missing. Never updated_at: it moves with every edit (our own write included), so
  tier clocks would restart on each update and breach tags would flap. The state store's record of the tier
  entries we made ourselves (EscalationHistory.tier_entries) is exact and the engine prefers it.

revision = the ticket's `updated_at` string, byte for byte: it is what `updated_stamp` must carry for a
safe update (https://developer.zendesk.com/documentation/ticketing/managing-tickets/creating-and-updating-tickets/
"Protecting against ticket update collisions").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from connectors.base import MAPPINGS, HistorySource, RawRecord, ReadSpec
from engine.configfile import locate
from engine.model import (
    COMMENT_MARKER,
    Attachment,
    Flags,
    NoteText,
    Priority,
    PriorityChange,
    Status,
    StatusChange,
    Ticket,
    Tier,
    TierChange,
    WriteBack,
)
from mappings import MappingError, NormalizeError
from mappings.common import (
    NOTE_TEXT_CHARS,
    FlagSources,
    SentimentMap,
    Strict,
    TagNames,
    finite_number,
    load_spec,
    note_text,
    sentiment_from_tags,
    summary_times,
    tier_entry,
    truth,
    whole_number,
)

PLATFORM = "zendesk"
ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")
STATUSES: dict[str, Status] = {
    "new": Status.NEW,
    "open": Status.OPEN,
    "pending": Status.PENDING,
    "hold": Status.ON_HOLD,
    "solved": Status.SOLVED,
    "closed": Status.CLOSED,
    "deleted": Status.DELETED,
}
_TAG = re.compile(r"^[^\s,]+$")
OUR_MARKER = COMMENT_MARKER.partition("{")[0]
SYSTEM_USER_ID = -1
"""The updater of changes made by triggers, automations and other system rules."""
_EVENT_FACTS = ("public_replies", "agent_actions", "tier_changes", "internal_notes")
"""What the ticket events give; absent (missing) for a ticket whose events were not all seen."""
_MISSING_EVENT_FACTS = frozenset(_EVENT_FACTS)
"""The same set for every ticket without its events (one object, not one per ticket)."""
_NO_EVENT_FACTS: dict[str, Any] = {"missing_facts": _MISSING_EVENT_FACTS}
"""The history facts of a ticket without its events: one dict, never changed."""
_BOOL_FLAGS = (
    "churn_threat",
    "public_complaint",
    "security_legal",
    "engineering_required",
    "vendor_dependency",
    "customer_requested",
)
_NUMBER_FLAGS: tuple[tuple[str, type], ...] = (
    ("revenue_at_risk", float),
    ("affected_customers", int),
    ("linked_incidents", int),
    ("reopen_count", int),
)


def _check_tag(value: str) -> str:
    if not _TAG.match(value):
        raise ValueError(f"{value!r} is not a Zendesk tag (no spaces or commas)")
    return value.lower()


class PriorityMap(Strict):
    """Zendesk priority -> P1..P4; `default` is used when the ticket's priority is null (often the case).

    Accounts that triage with a severity dropdown instead name it in `field_id` with its option tags in
    `field_values`: when the field has a value it wins, an option not listed quarantines the ticket, and an
    empty field falls back to the native priority."""

    default: Priority = Priority.P3
    values: dict[str, Priority] = Field(min_length=1)
    field_id: PositiveInt | None = None
    field_values: dict[str, Priority] = {}

    @field_validator("values")
    @classmethod
    def _known_priorities(cls, value: dict[str, Priority]) -> dict[str, Priority]:
        for key in value:
            if key not in ZENDESK_PRIORITIES:
                raise ValueError(f"{key!r} is not a Zendesk priority ({', '.join(ZENDESK_PRIORITIES)})")
        return value


class TierMap(Strict):
    """Where the tier lives: the ticket's group (`mode = "group"`) or a dropdown custom field."""

    mode: Literal["group", "custom_field"] = "group"
    groups: dict[Tier, PositiveInt] = {}
    field_id: PositiveInt | None = None
    options: dict[Tier, str] = {}

    @field_validator("options")
    @classmethod
    def _option_tags(cls, value: dict[Tier, str]) -> dict[Tier, str]:
        return {tier: _check_tag(tag) for tier, tag in value.items()}


class SegmentMap(Strict):
    """Segment: the organization field `org_field` first, then the first matching tag, then `default`."""

    org_field: str | None = None
    values: dict[str, str] = {}
    """Optional translation of the organization field's value (case-insensitive) to the segment name."""
    tags: dict[str, str] = {}
    """Tag -> segment, for accounts that tag tickets by customer segment."""
    default: str | None = None

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {_check_tag(tag): segment for tag, segment in value.items()}


class FlagRule(Strict):
    """A boolean flag is true when the ticket has one of `tags`, the custom field `custom_field` is set
    (checkbox true, or one of `values` for a dropdown/text field), or the organization field `org_field` is."""

    tags: list[str] = []
    custom_field: PositiveInt | None = None
    org_field: str | None = None
    values: list[str] = []

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return [_check_tag(tag) for tag in value]


class NumberRule(Strict):
    """A numeric fact from a numeric/decimal custom field or an organization field."""

    custom_field: PositiveInt | None = None
    org_field: str | None = None


FlagsMap = FlagSources[FlagRule, NumberRule]


class HistoryMap(Strict):
    """`ticket_events`: follow the incremental ticket event export (with `comment_events`) alongside the ticket
    export, for complete reply, action, status and tier histories. The export needs an admin's API access; off,
    or refused, the facts come from the metric set alone and the clocks they cannot stop are "unknown"."""

    ticket_events: bool = True


class ZendeskSentimentMap(SentimentMap):
    """`satisfaction_rating`: the ticket's CSAT score ("good" / "bad"; "offered" and "unoffered" say nothing), a
    real field of the ticket (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/), read first."""

    satisfaction_rating: bool = True


class ZendeskMappingFile(Strict):
    priority: PriorityMap
    tier: TierMap
    segment: SegmentMap = SegmentMap()
    flags: FlagsMap = FlagsMap()
    tags: TagNames = TagNames()
    history: HistoryMap = HistoryMap()
    sentiment: ZendeskSentimentMap = Field(default_factory=ZendeskSentimentMap)


_STR_TYPE = frozenset({str})
_NOTHING: Mapping[str, Any] = {}
"""An absent object, read as empty: one shared dict, never changed."""


def parse_time(value: Any) -> datetime:
    """Zendesk timestamps are ISO 8601 in UTC (`2023-09-18T15:57:42Z`); any offset is honoured."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an ISO 8601 timestamp, got {value!r}")
    try:
        # Python 3.11 reads the "Z" itself and returns the UTC singleton: no string copy, no conversion.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # the error (and message) as always
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return parsed.astimezone(UTC)


class ZendeskMapping:
    """Implements mappings.PlatformMapping for Zendesk; built by `load`, immutable afterwards."""

    platform = PLATFORM

    def __init__(self, config: ZendeskMappingFile, path: str) -> None:
        self.config = config
        self.path = path
        self.tags = config.tags.scheme()
        self._group_tiers = {group: tier for tier, group in config.tier.groups.items()}
        self._option_tiers = {option: tier for tier, option in config.tier.options.items()}
        # The config read once into plain tuples: normalize runs for every polled ticket.
        self._segment_values = {key.lower(): segment for key, segment in config.segment.values.items()}
        self._flag_rules = tuple(
            (name, frozenset(rule.tags), rule.custom_field, rule.org_field, frozenset(v.lower() for v in rule.values))
            for name in _BOOL_FLAGS
            if (rule := getattr(config.flags, name)) is not None
        )
        # (name, whole number?, custom field, organization field, where, from the metric set's `reopens`): the
        # sources of each number flag; the reopen count comes from `reopens` when the mapping names none.
        self._number_sources = tuple(
            (name, kind is int, rule.custom_field, rule.org_field, f"flags.{name}", False)
            if (rule := getattr(config.flags, name)) is not None
            else (name, True, None, None, f"flags.{name}", True)
            for name, kind in _NUMBER_FLAGS
            if getattr(config.flags, name) is not None or name == "reopen_count"
        )
        # Flags read from tags alone never fail: all of them are answered at once, and a ticket carrying none
        # of their tags (most tickets) skips the per-flag tests.
        self._tag_flags = tuple(
            (name, tags) for name, tags, field, org, _ in self._flag_rules if field is None and org is None
        )
        self._tag_flag_names = tuple(name for name, _ in self._tag_flags)
        self._tag_flag_tags = frozenset().union(*(tags for _, tags in self._tag_flags))
        self._field_flags = tuple(
            (f"flags.{name}", name, tags, field, org, wanted)
            for name, tags, field, org, wanted in self._flag_rules
            if field is not None or org is not None
        )
        self._segment_tags = tuple(config.segment.tags.items())
        self._tiers_by_group = config.tier.mode == "group"
        self._reads_events = config.history.ticket_events

    # -- what the connector asks ------------------------------------------------------------------------------

    @property
    def sideloads(self) -> tuple[str, ...]:
        """`include=` values the incremental export needs for this mapping."""
        return ("metric_sets", "organizations")

    def read_spec(self) -> ReadSpec:
        """What connectors/zendesk.py reads for this mapping (it imports no mapping: see connectors.base)."""
        return ReadSpec(
            sideloads=self.sideloads,
            history=self.history_sources(),
            tier_moves_tags=bool(self.tier_tags),
            history_trim=trimmed_event,
        )

    def render_patch(self, writeback: WriteBack, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """Ticket fields for the write-back: the tier's group or dropdown option, and the whole tag list (the
        current tags, `current["tags"]`, with the changes applied) when tags change or follow the tier."""
        patch: dict[str, Any] = {}
        tier = Tier(writeback.tier) if writeback.tier is not None else None
        if tier is not None:
            patch.update(self.tier_fields(tier))
        moves_tags = tier is not None and bool(self.tier_tags)
        if writeback.add_tags or writeback.remove_tags or moves_tags:
            if current is None or not isinstance(current.get("tags"), list | tuple | frozenset | set):
                raise ValueError("rendering a tag change needs the ticket's current tags")
            tags = (set(current["tags"]) - set(writeback.remove_tags)) | set(writeback.add_tags)
            if tier is not None and moves_tags:
                # A dropdown field's value is also a tag: keep the tag list in step with the new option.
                tags -= set(self.tier_tags)
                tags.add(self.config.tier.options[tier])
            patch["tags"] = sorted(tags)
        return patch

    def history_sources(self) -> tuple[HistorySource, ...]:
        """The ticket event export, with comments (its `include` value), when the mapping reads history."""
        if not self.config.history.ticket_events:
            return ()
        return (HistorySource("ticket_events", ("comment_events",)),)

    @property
    def tier_tags(self) -> frozenset[str]:
        """Tags Zendesk itself adds for the tier dropdown's options: they follow the field, not our tag diff."""
        return frozenset(self.config.tier.options.values()) if self.config.tier.mode == "custom_field" else frozenset()

    def tier_fields(self, tier: Tier) -> dict[str, Any]:
        config = self.config.tier
        if config.mode == "group":
            return {"group_id": config.groups[tier]}
        return {"custom_fields": [{"id": config.field_id, "value": config.options[tier]}]}

    # -- normalize --------------------------------------------------------------------------------------------

    def normalize(self, record: RawRecord, instance: str) -> Ticket:
        """The Ticket of one export record; NormalizeError names the first field that cannot be read.

        Runs for every polled ticket (issue 14): the common shapes (a dict, an integer id, a known status, a
        `Z` timestamp) take a fast path and anything else goes the checked way, which finds the same value or
        raises the same error. The checks run in the order the fields are listed here."""
        data = record.data
        related = record.related
        ticket_id = data.get("id")
        rid = str(data.get("id", record.id))
        if type(ticket_id) is not int:  # a bool is not an int here
            raise NormalizeError(rid, "id", f"missing or not an integer: {ticket_id!r}")
        raw_status = data.get("status")
        status = STATUSES.get(raw_status) if type(raw_status) is str else None
        if status is None:
            status = self._status(rid, raw_status)
        created_at = self._time(rid, data, "created_at", required=True)
        updated_at = self._time(rid, data, "updated_at", required=True)
        assert created_at is not None and updated_at is not None
        organization = related.get("organization") or None
        metrics = related.get("metric_set") or None
        # `type(...) is dict` first: the abstract-class check costs more than the rest of the test.
        if metrics is not None and type(metrics) is not dict and not isinstance(metrics, Mapping):
            raise NormalizeError(rid, "metric_set", "sideloaded metric set is not an object")
        if organization is not None and type(organization) is not dict and not isinstance(organization, Mapping):
            raise NormalizeError(rid, "organization", "sideloaded organization is not an object")
        tags = self._tags(rid, data.get("tags"))
        fields = self._custom_fields(rid, data.get("custom_fields"))
        org_fields = (organization.get("organization_fields") if organization is not None else None) or _NOTHING
        if type(org_fields) is not dict and not isinstance(org_fields, Mapping):
            # Refused like an organization that is no object: a flag or segment read from it would be guessed.
            raise NormalizeError(rid, "organization.organization_fields", "not an object")
        tier = self._tier(data, fields)
        first_reply, last_reply, last_agent, solved_at, reopens = self._metric_times(rid, metrics, created_at)
        events = self._complete_events(record, created_at, updated_at) if self._reads_events else None
        history = self._history(rid, data, events)
        times = summary_times(history) if events is not None else {}
        priority = self._priority(rid, data.get("priority"), fields)
        organization_name = self._organization(data, organization)
        segment = self._segment(tags, org_fields)
        tier_entered_at = tier_entry(history.get("tier_changes"), tier) or self._tier_entered_at(
            rid, tier, metrics, created_at
        )
        status_history = history.get("status_history") or self._current_status_since(rid, status, metrics)
        flags = self._flags(rid, tags, fields, org_fields, reopens)
        if events is not None:
            # A complete event history (rare on an export page): its facts, the notes' texts and attachments.
            history = {key: value for key, value in history.items() if key != "status_history"}
            history.update(self._handoff_facts(data, events))
        return Ticket(
            platform=PLATFORM,
            instance=instance,
            id=rid,
            key=rid,
            url=self._agent_url(data.get("url"), rid),
            subject=str(data.get("subject") or data.get("raw_subject") or ""),
            status=status,
            priority=priority,
            created_at=created_at,
            updated_at=updated_at,
            description=str(data.get("description") or ""),
            first_public_reply_at=first_reply or times.get("first_public_reply_at"),
            last_public_reply_at=times.get("last_public_reply_at", last_reply),
            last_agent_action_at=times.get("last_agent_action_at", last_agent),
            solved_at=solved_at,
            requester=_id_text(data.get("requester_id")),
            organization=organization_name,
            segment=segment,
            tags=tags,
            assignee_group=_id_text(data.get("group_id")),
            tier=tier,
            tier_entered_at=tier_entered_at,
            status_history=status_history,
            flags=flags,
            revision=str(data["updated_at"]),
            sentiment=self._sentiment(data, tags),
            **history,
        )

    def _handoff_facts(self, data: Mapping[str, Any], events: list[Any]) -> dict[str, Any]:
        """The handoff form's facts from the same complete event history `_history` reads: the notes' texts and
        the comments' attachments (left out when an event is malformed)."""
        found = _comment_extras(events, data.get("requester_id"))
        if found is None:
            return {}
        return {"note_texts": found[0], "attachments": found[1]}

    def _complete_events(self, record: RawRecord, created_at: datetime, updated_at: datetime) -> list[Any] | None:
        """The ticket's events when the connector saw all of them (the test `_history` applies), else None."""
        audits = record.related.get("ticket_audits")
        if isinstance(audits, list):
            return _audits_as_events(audits)
        window = record.related.get("ticket_events_window")
        events = record.related.get("ticket_events")
        if (
            isinstance(window, list)
            and len(window) == 2
            and all(isinstance(edge, int) for edge in window)
            and isinstance(events, list)
            and window[0] <= created_at.timestamp()
            and updated_at.timestamp() < window[1]
        ):
            return events
        return None

    def _sentiment(self, data: Mapping[str, Any], tags: frozenset[str]) -> str | None:
        spec = self.config.sentiment
        rating = data.get("satisfaction_rating")
        # `rating is not None` first: most tickets have no rating, and the abstract-class check is the slow part.
        if (
            spec.satisfaction_rating
            and rating is not None
            and isinstance(rating, MAPPINGS)
            and rating.get("score") in ("good", "bad")
        ):
            return f"satisfaction rating: {rating['score']}"
        return sentiment_from_tags(tags, spec) if spec.tags else None

    def _history(self, rid: str, data: Mapping[str, Any], events: list[Any] | None) -> Mapping[str, Any]:
        """History facts from the ticket's events, when the connector saw all of them (see `_EventHistory`;
        `events` from `_complete_events`: a single-ticket read brings every audit, complete by construction; a
        page, the export's events when its window covers the ticket's whole life). Read-only: the answer
        without events is one shared mapping."""
        if not self._reads_events:
            return {}
        facts = _EventHistory(self, rid, data, events).facts() if events is not None else None
        return facts if facts is not None else _NO_EVENT_FACTS

    def _status(self, rid: str, value: Any) -> Status:
        if value is None:
            raise NormalizeError(rid, "status", "missing")
        try:
            return STATUSES[str(value)]
        except KeyError:
            raise NormalizeError(rid, "status", f"unknown status {value!r}") from None

    def _priority_known(self, native: Any, severity: Any) -> Priority | None:
        """`_priority` for a history entry: the severity option when set, else the native priority, else the
        default; None for a value the mapping does not know (the history is then not read)."""
        config = self.config.priority
        if config.field_id is not None and severity not in (None, ""):
            return config.field_values.get(str(severity))
        if native in (None, ""):
            return config.default
        return config.values.get(str(native))

    def _priority(self, rid: str, value: Any, fields: Mapping[int, Any]) -> Priority:
        config = self.config.priority
        if config.field_id is not None and fields.get(config.field_id) not in (None, ""):
            option = str(fields[config.field_id])
            if option not in config.field_values:
                known = ", ".join(config.field_values)
                raise NormalizeError(rid, "priority", f"unknown severity option {option!r} (mapped: {known})")
            return config.field_values[option]
        if value is None:
            return config.default
        try:
            return config.values[str(value)]
        except KeyError:
            known = ", ".join(config.values)
            raise NormalizeError(rid, "priority", f"unknown priority {value!r} (mapped: {known})") from None

    def _time(self, rid: str, data: Mapping[str, Any], key: str, *, required: bool = False) -> datetime | None:
        value = data.get(key)
        if value is None:
            if required:
                raise NormalizeError(rid, key, "missing")
            return None
        if type(value) is str:
            # Fast path for the `...Z` form Zendesk sends (half a dozen per ticket): `parse_time` in one step.
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is UTC:
                return parsed
        try:
            return parse_time(value)
        except ValueError as error:
            raise NormalizeError(rid, key, str(error)) from None

    @staticmethod
    def _tags(rid: str, value: Any) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise NormalizeError(rid, "tags", "not a list of strings")
        # The exact types first (one C call); only a list holding other types is checked tag by tag.
        if not set(map(type, value)) <= _STR_TYPE and not all(isinstance(tag, str) for tag in value):
            raise NormalizeError(rid, "tags", "not a list of strings")
        return frozenset(value)

    @staticmethod
    def _custom_fields(rid: str, value: Any) -> dict[int, Any]:
        if value is None:
            return {}
        if not isinstance(value, list):
            raise NormalizeError(rid, "custom_fields", "not a list")
        fields: dict[int, Any] = {}
        for entry in value:
            # Fast path: an object with an integer id (a bool is no int here), as Zendesk sends every entry.
            if type(entry) is dict and type(field_id := entry.get("id")) is int:
                fields[field_id] = entry.get("value")
                continue
            if not (type(entry) is dict or isinstance(entry, Mapping)) or "id" not in entry:
                raise NormalizeError(rid, "custom_fields", f"entry without an id: {entry!r}")
            field_id = entry["id"]
            if isinstance(field_id, bool) or not isinstance(field_id, int):
                # A custom field id is a number; any other id is a broken record, not a field we can look up.
                raise NormalizeError(rid, "custom_fields", f"field id is not an integer: {str(field_id)[:60]!r}")
            fields[field_id] = entry.get("value")
        return fields

    def _tier(self, data: Mapping[str, Any], fields: Mapping[int, Any]) -> Tier | None:
        if self._tiers_by_group:
            group = data.get("group_id")
            if group is None:
                return None
            if isinstance(group, bool) or not isinstance(group, int):
                # Read as "no tier", a group id of the wrong type once moved a ticket back to L1.
                raise NormalizeError(str(data.get("id")), "group_id", f"not an integer: {str(group)[:60]!r}")
            return self._group_tiers.get(group)
        value = fields.get(self.config.tier.field_id or 0)
        return self._option_tiers.get(str(value).lower()) if value is not None else None

    def _current_status_since(
        self, rid: str, status: Status, metrics: Mapping[str, Any] | None
    ) -> tuple[StatusChange, ...]:
        """The metric set's `status_updated_at` dates the current status, so a pending ticket's pause starts
        when it became pending, not at its last edit (which our own write moves)."""
        since = self._time(rid, metrics, "status_updated_at") if metrics is not None else None
        return (StatusChange(since, status),) if since is not None else ()

    def _tier_entered_at(
        self, rid: str, tier: Tier | None, metrics: Mapping[str, Any] | None, created_at: datetime
    ) -> datetime | None:
        if tier is None or metrics is None:
            return None
        stations = metrics.get("group_stations")
        if self._tiers_by_group and isinstance(stations, int) and stations <= 1:
            return created_at
        assigned = self._time(rid, metrics, "assigned_at")
        return assigned if assigned is not None and assigned >= created_at else None

    def _metric_times(
        self, rid: str, metrics: Mapping[str, Any] | None, created_at: datetime
    ) -> tuple[datetime | None, datetime | None, datetime | None, datetime | None, int | None]:
        if metrics is None:
            return None, None, None, None, None
        first_reply = None
        seconds = _calendar(rid, metrics, "reply_time_in_seconds")
        minutes = _calendar(rid, metrics, "reply_time_in_minutes")
        key, span = ("seconds", seconds) if isinstance(seconds, (int, float)) else ("minutes", minutes)
        if isinstance(span, (int, float)):
            try:
                first_reply = created_at + timedelta(**{key: span})
            except (OverflowError, ValueError):  # a time before year 1 or after 9999, NaN: no reply time to read
                raise NormalizeError(rid, f"metric_set.reply_time_in_{key}", f"out of range: {span!r}") from None
        replies = metrics.get("replies")
        last_reply = first_reply if replies == 1 else None
        last_agent = self._time(rid, metrics, "assignee_updated_at")
        solved_at = self._time(rid, metrics, "solved_at")
        reopens = metrics.get("reopens")
        return first_reply, last_reply, last_agent, solved_at, reopens if isinstance(reopens, int) else None

    @staticmethod
    def _agent_url(api_url: Any, rid: str) -> str:
        """The agent-facing link: `https://x.zendesk.com/api/v2/tickets/7.json` -> `.../agent/tickets/7`."""
        if isinstance(api_url, str) and "/api/v2/" in api_url:
            return api_url.split("/api/v2/", 1)[0] + f"/agent/tickets/{rid}"
        return ""

    @staticmethod
    def _organization(data: Mapping[str, Any], organization: Mapping[str, Any] | None) -> str | None:
        if organization and organization.get("name"):
            return str(organization["name"])
        return _id_text(data.get("organization_id"))

    def _segment(self, tags: frozenset[str], org_fields: Mapping[str, Any]) -> str | None:
        config = self.config.segment
        if config.org_field:
            value = org_fields.get(config.org_field)
            if value not in (None, ""):
                text = str(value)
                if not self._segment_values:
                    return text
                lowered = text.lower()
                if lowered in self._segment_values:
                    return self._segment_values[lowered]
                # With [segment.values], anything else there (a stray value, an object's toString) is no match.
        if tags:
            for tag, segment in self._segment_tags:
                if tag in tags:
                    return segment
        return config.default

    def _flags(
        self,
        rid: str,
        tags: frozenset[str],
        fields: Mapping[int, Any],
        org_fields: Mapping[str, Any],
        reopens: int | None,
    ) -> Flags:
        if tags.isdisjoint(self._tag_flag_tags):
            values: dict[str, Any] = dict.fromkeys(self._tag_flag_names, False)
        else:
            values = {name: not flag_tags.isdisjoint(tags) for name, flag_tags in self._tag_flags}
        for where, name, flag_tags, custom_field, org_field, wanted in self._field_flags:
            hit = not flag_tags.isdisjoint(tags)
            if not hit and custom_field is not None:
                hit = _source_flag(rid, where, fields.get(custom_field), wanted)
            if not hit and org_field is not None:
                hit = _source_flag(rid, where, org_fields.get(org_field), wanted)
            values[name] = hit
        for name, is_int, custom_field, org_field, where, from_reopens in self._number_sources:
            if from_reopens:
                raw: Any = reopens
            else:
                raw = fields.get(custom_field) if custom_field is not None else None
                if (raw is None or raw == "") and org_field is not None:
                    raw = org_fields.get(org_field)
            if raw is None or raw == "":
                continue
            if type(raw) is float and math.isfinite(raw):  # a JSON number: `finite_number` has nothing to do
                values[name] = int(raw) if is_int else raw
            else:
                values[name] = whole_number(rid, where, raw) if is_int else finite_number(rid, where, raw)
        return Flags(**values)


def _calendar(rid: str, metrics: Mapping[str, Any], key: str) -> Any:
    """The `calendar` value of a metric set's duration (`{"calendar": 42, "business": 40}`; null or absent: none).
    Any other shape is refused like a metric set that is no object: the first reply time would be guessed."""
    value = metrics.get(key)
    if not value:  # null, or an empty value of any type: no time, as before
        return None
    if type(value) is not dict and not isinstance(value, Mapping):
        raise NormalizeError(rid, f"metric_set.{key}", f"not an object: {str(value)[:60]!r}")
    return value.get("calendar")


def _source_flag(rid: str, where: str, value: Any, wanted: frozenset[str]) -> bool:
    """Whether one source of a flag (a custom field's or organization field's value) sets it: one of `wanted`
    (a dropdown or text field's values, a multi-select's options), or else a true checkbox (`truth`)."""
    if wanted:
        items = value if isinstance(value, list) else [value]
        return any(str(item).lower() in wanted for item in items if item is not None)
    if type(value) is bool:  # a checkbox, as Zendesk sends it: `truth` has nothing to do
        return value
    return truth(rid, where, value)


class _EventHistory:
    """The facts of one ticket from its ticket events (the incremental ticket event export with
    `include=comment_events`): each event `{id, ticket_id, timestamp, created_at, updater_id, child_events}`, a
    change child event naming its field as the key (`{"status": "pending", "previous_value": "open",
    "event_type": "Change"}`), a comment child event `{"event_type": "Comment", "author_id", "body", "public"}`.

    Only a ticket whose events were all seen (created after the connector started following the export, and not
    changed after the export's end) gets them; `facts` answers None when an event is malformed. The requester's
    comments are customer messages; the creating event's comment is the ticket's description, no reply; a comment
    carrying our marker is our own handoff note. Changes by the system user (triggers) are no agent actions, and
    neither are tag or group changes alone (ours among them): only comments, status and assignee changes are,
    and none of those in the audit of our own write (`_is_our_write`: the assignee a group move of ours cleared),
    with or without our note (`_only_our_changes`).
    """

    def __init__(self, mapping: ZendeskMapping, rid: str, data: Mapping[str, Any], events: list[Any]) -> None:
        self.mapping = mapping
        self.rid = rid
        self.requester = data.get("requester_id")
        self.events = events
        config = mapping.config.tier
        self.tier_key = "group_id" if config.mode == "group" else str(config.field_id)
        self.managed = mapping.tags.matcher()
        self.option_tags = frozenset(mapping._option_tiers)

    def _tier_of(self, value: Any) -> Tier | None:
        if self.tier_key == "group_id":
            try:
                return self.mapping._group_tiers.get(int(value)) if value is not None else None
            except (TypeError, ValueError):
                return None
        return self.mapping._option_tiers.get(str(value).lower()) if value is not None else None

    def _only_our_changes(self, children: list[Any]) -> bool:
        """Whether an audit changes nothing but what our write changes: the tags this daemon manages (one at
        least: our write's mark when it posts no note), the tier (the group or the tier field, whose option tags
        come and go with it) and an assignee cleared to nobody (Zendesk's own doing when a group move leaves
        the assignee outside the new group).

        Such an audit is our write without a note (`adopt = "tag_only"`, a lowering, a tag update), and then
        nobody acted; or a person changed our tags alone, which acknowledges nothing either. A comment, a
        status, an assignee picked, any other field or tag: read as before."""
        ours = False
        for child in children:
            if not isinstance(child, MAPPINGS):
                return False
            kind = child.get("event_type")
            if kind not in ("Change", "Comment", "Create"):
                continue  # notifications, CCs, ...: nobody's action either way
            if kind != "Change":
                return False
            fields = [key for key in child if key not in _CHANGE_DETAIL]
            if fields == ["tags"]:
                changed = _changed_tags(child)
                if changed is None or not all(self.managed(tag) or tag in self.option_tags for tag in changed):
                    return False
                ours = ours or any(self.managed(tag) for tag in changed)
            elif fields == ["assignee_id"]:
                if child["assignee_id"] is not None:
                    return False
            elif fields != [self.tier_key]:
                return False
        return ours

    def facts(self) -> dict[str, Any] | None:
        timed = []
        for event in self.events:
            if not isinstance(event, MAPPINGS) or not isinstance(event.get("child_events"), list):
                return None
            try:
                at = parse_time(event.get("created_at"))
            except ValueError:
                return None
            timed.append((at, event))
        timed.sort(key=lambda item: (item[0], str(item[1].get("id"))))
        statuses: list[StatusChange] = []
        tiers: list[TierChange] = []
        replies: list[datetime] = []
        notes: list[datetime] = []
        actions: list[datetime] = []
        customer: datetime | None = None
        priorities: list[PriorityChange] = []
        native: Any = None
        severity: Any = None
        severity_key = str(self.mapping.config.priority.field_id or "")
        for at, event in timed:
            updater = event.get("updater_id")
            children = event["child_events"]
            by_agent = (
                updater not in (self.requester, SYSTEM_USER_ID, None)
                and not _is_our_write(children)
                and not self._only_our_changes(children)
            )
            creating = any(isinstance(child, MAPPINGS) and child.get("event_type") == "Create" for child in children)
            for child in children:
                if not isinstance(child, MAPPINGS):
                    return None
                kind = child.get("event_type")
                if kind == "Comment":
                    text = str(child.get("body") or child.get("plain_body") or "")
                    if creating or OUR_MARKER in text:
                        continue
                    if child.get("author_id") == self.requester:
                        if child.get("public") is True:
                            customer = at
                        continue
                    actions.append(at)
                    (replies if child.get("public") is True else notes).append(at)
                elif kind in ("Create", "Change"):
                    if "status" in child:
                        status = STATUSES.get(str(child["status"]))
                        if status is None:
                            return None
                        statuses.append(StatusChange(at, status))
                        if by_agent and kind == "Change":
                            actions.append(at)
                    if self.tier_key in child:
                        tier = self._tier_of(child[self.tier_key])
                        if not tiers or (tier or Tier.L1) != (tiers[-1].tier or Tier.L1):
                            tiers.append(TierChange(at, tier))
                    if "assignee_id" in child and by_agent and kind == "Change":
                        actions.append(at)
                    if "priority" in child:
                        native = child["priority"]
                    if severity_key and severity_key in child:
                        severity = child[severity_key]
            if creating or any(
                isinstance(child, MAPPINGS) and _changes_priority(child, severity_key) for child in children
            ):
                priority = self.mapping._priority_known(native, severity)
                if priority is None:
                    return None
                if not priorities or priorities[-1].priority != priority:
                    priorities.append(PriorityChange(at, priority))
        if not statuses:
            return None  # no creation event: not the whole history after all
        return {
            "status_history": tuple(statuses),
            "tier_changes": tuple(tiers) or (TierChange(statuses[0].at, None),),
            "public_replies": tuple(replies),
            "internal_notes": tuple(notes),
            "agent_actions": tuple(sorted(actions)),
            "last_customer_message_at": customer,
            "priority_changes": tuple(priorities),
        }


def _is_our_write(children: list[Any]) -> bool:
    """Whether an audit is the echo of our own write: it carries our note (marker), sent in the same PUT as the
    tier and tags (one call per ticket).

    Our PUT sets no status and no assignee, but Zendesk changes them in the same audit, authored by our API
    user: a group move clears an assignee who is not in the new group, and triggers run on the update. Those
    are no person's action; counted as one, the clearing stopped the clocks that start with our write and are
    dated from our store's row (the cycle's `now`, before the audit's `created_at`): the management track's
    acknowledgment was met by our own escalation and never breached. The note, not the updater, identifies
    the audit: the mapping does not know the API user, and a daemon run with a person's credentials would
    otherwise lose that person's own actions. A write of ours without a note (`adopt = "tag_only"`) is recognised
    by what it changes instead (`_EventHistory._only_our_changes`)."""
    return any(
        isinstance(child, MAPPINGS)
        and child.get("event_type") == "Comment"
        and OUR_MARKER in str(child.get("body") or child.get("plain_body") or "")
        for child in children
    )


_CHANGE_DETAIL = frozenset(
    {"event_type", "previous_value", "added_tags", "removed_tags", "id", "via", "via_reference_id"}
)
"""The keys of a Change child event besides the one naming its field."""


def _changed_tags(child: Mapping[str, Any]) -> frozenset[str] | None:
    """The tags a tags Change child event adds or removes: its `added_tags` / `removed_tags` lists when the
    export gives them, else the difference of `tags` and `previous_value` (lists, as the ticket event export and
    the Ticket Audits API give them, or space-separated text); None when neither can be read."""
    added, removed = child.get("added_tags"), child.get("removed_tags")
    if isinstance(added, list) or isinstance(removed, list):
        listed = [*(added if isinstance(added, list) else ()), *(removed if isinstance(removed, list) else ())]
        return frozenset(str(tag).lower() for tag in listed)
    after, before = _tag_set(child.get("tags")), _tag_set(child.get("previous_value"))
    return None if after is None or before is None else after ^ before


def _tag_set(value: Any) -> frozenset[str] | None:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.lower().split())
    if isinstance(value, list):
        return frozenset(str(tag).lower() for tag in value)
    return None


def _comment_extras(events: list[Any], requester: Any) -> tuple[tuple[NoteText, ...], tuple[Attachment, ...]] | None:
    """Internal notes by people with their text (the comments `_EventHistory` counts as internal notes), and
    every comment's attachments but our own notes' (`content_url`: the link an agent opens; deleted files are
    left out); None when an event is malformed."""
    notes: list[NoteText] = []
    files: list[Attachment] = []
    for event in events:
        if not isinstance(event, MAPPINGS) or not isinstance(event.get("child_events"), list):
            return None
        try:
            at = parse_time(event.get("created_at"))
        except ValueError:
            return None
        children = [child for child in event["child_events"] if isinstance(child, MAPPINGS)]
        creating = any(child.get("event_type") == "Create" for child in children)
        for child in children:
            if child.get("event_type") != "Comment":
                continue
            text = str(child.get("body") or child.get("plain_body") or "")
            if OUR_MARKER in text:
                continue
            attachments = child.get("attachments") or ()
            if not isinstance(attachments, list | tuple):
                return None  # malformed: the handoff facts are left out, as for any malformed event
            for item in attachments:
                if isinstance(item, MAPPINGS) and not item.get("deleted") and item.get("content_url"):
                    files.append(Attachment(str(item.get("file_name") or ""), str(item["content_url"]), at))
            if not creating and child.get("author_id") != requester and child.get("public") is not True:
                notes.append(NoteText(at, note_text(text)))
    notes.sort(key=lambda note: note.at)
    files.sort(key=lambda item: item.at or datetime.min.replace(tzinfo=UTC))
    return tuple(notes), tuple(files)


def _changes_priority(child: Mapping[str, Any], severity_key: str) -> bool:
    """A Create/Change child event that sets the priority (`priority`) or the severity field (its id)."""
    if child.get("event_type") not in ("Create", "Change"):
        return False
    return "priority" in child or bool(severity_key and severity_key in child)


def _audits_as_events(audits: list[Any]) -> list[dict[str, Any]] | None:
    """Ticket Audits API audits (`{id, created_at, author_id, events: [{type, field_name, value, previous_value}
    | {type: "Comment", author_id, body, public}]}`, ids as text) in the ticket event export's form, so one reader
    serves both; None when an audit is malformed.
    https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_audits/"""
    converted = []
    for audit in audits:
        if not isinstance(audit, MAPPINGS) or not isinstance(audit.get("events"), list):
            return None
        children: list[dict[str, Any]] = []
        for event in audit["events"]:
            if not isinstance(event, MAPPINGS):
                return None
            kind = event.get("type")
            if kind == "Comment":
                children.append({**event, "event_type": "Comment"})
            elif kind in ("Create", "Change") and isinstance(event.get("field_name"), str):
                child = {event["field_name"]: event.get("value"), "event_type": kind}
                if "previous_value" in event:
                    child["previous_value"] = event["previous_value"]
                children.append(child)
        converted.append(
            {
                "id": audit.get("id"),
                "created_at": audit.get("created_at"),
                "updater_id": _as_int(audit.get("author_id")),
                "child_events": children,
            }
        )
    return converted


def _as_int(value: Any) -> Any:
    """Audit ids may come as text; the ticket's requester id is a number."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _id_text(value: Any) -> str | None:
    return None if value is None else str(value)


# -- loading ------------------------------------------------------------------------------------------------


def _fail(path: Path, text: str, loc: tuple[str | int, ...], reason: str) -> MappingError:
    return MappingError(path, reason, key=".".join(str(part) for part in loc), line=locate(text, loc))


def _cross_check(config: ZendeskMappingFile, path: Path, text: str) -> None:
    """Consistency pydantic cannot see field by field: every tier mapped once, and to distinct targets."""
    tier = config.tier
    if tier.mode == "group":
        if tier.options or tier.field_id is not None:
            raise _fail(path, text, ("tier", "mode"), 'mode = "group" but field_id/options are set')
        targets: Mapping[Tier, Any] = tier.groups
        section = "groups"
    else:
        if tier.field_id is None:
            raise _fail(path, text, ("tier", "field_id"), 'mode = "custom_field" needs field_id')
        if tier.groups:
            raise _fail(path, text, ("tier", "groups"), 'mode = "custom_field" but groups are set')
        targets = tier.options
        section = "options"
    for level in Tier:
        if level not in targets:
            raise _fail(path, text, ("tier", section, level.value), f"no {section[:-1]} for tier {level.value}")
    seen: dict[Any, Tier] = {}
    for level, target in targets.items():
        if target in seen:
            reason = f"tiers {seen[target].value} and {level.value} both map to {target!r}"
            raise _fail(path, text, ("tier", section, level.value), reason)
        seen[target] = level
    patterns = config.tags
    for name in ("breached", "at_risk", "management", "update_due"):
        pattern: str = getattr(patterns, name)
        needs_clock = name in ("breached", "at_risk")
        if needs_clock and "{clock}" not in pattern:
            raise _fail(path, text, ("tags", name), f"{pattern!r} must contain {{clock}}")
        if not _TAG.match(pattern.replace("{clock}", "x")) or re.search(r"\{(?!clock\})", pattern):
            raise _fail(path, text, ("tags", name), f"{pattern!r} is not a valid tag pattern")
    rendered = [getattr(patterns, name) for name in ("breached", "at_risk", "management", "update_due")]
    if len(set(rendered)) != len(rendered):
        raise _fail(path, text, ("tags",), "two signals use the same tag pattern")
    for name in FlagsMap.model_fields:
        rule = getattr(config.flags, name)
        if isinstance(rule, FlagRule) and not (rule.tags or rule.custom_field or rule.org_field):
            raise _fail(path, text, ("flags", name), "a flag needs tags, custom_field or org_field")
        if isinstance(rule, FlagRule) and rule.values and not (rule.custom_field or rule.org_field):
            raise _fail(path, text, ("flags", name, "values"), "values given without custom_field or org_field")
        if isinstance(rule, NumberRule) and not (rule.custom_field or rule.org_field):
            raise _fail(path, text, ("flags", name), "a number needs custom_field or org_field")
    if (config.priority.field_id is None) != (not config.priority.field_values):
        raise _fail(path, text, ("priority", "field_id"), "field_id and field_values go together")
    if config.segment.values and not config.segment.org_field:
        raise _fail(path, text, ("segment", "values"), "values given without org_field")


def load(path: Path) -> ZendeskMapping:
    """Load and validate a Zendesk mapping file; raise MappingError naming file, line, key and reason."""
    path = Path(path)
    config, text = load_spec(ZendeskMappingFile, path)
    _cross_check(config, path, text)
    return ZendeskMapping(config, str(path))


# -- what of the ticket event export this mapping reads (the connector's event book keeps only that) ------

_EVENT_KEYS = ("id", "ticket_id", "timestamp", "created_at", "updater_id", "event_type", "child_events")
"""What the book's readers take of an audit (`_EventHistory` and `_comment_extras` here, the book's order): its `via`, `system` and `metadata` (the agent's browser and place) are read by nobody."""
_COMMENT_KEYS = ("event_type", "author_id", "body", "plain_body", "public", "attachments")
"""What is read of a comment child event: `html_body` repeats `body`, and `plain_body` is kept only when it is
what the mapping reads (`body or plain_body`)."""
_CHILD_UNREAD = frozenset({"id", "via", "via_reference_id"})
_FILE_KEYS = ("file_name", "content_url", "deleted")
"""What the handoff lists of an attachment (`_comment_extras`): its thumbnails, size and type are not shown."""
_WORD = re.compile(r"\S+")


def trimmed_event(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """An exported audit as the connector's event book keeps it (`ReadSpec.history_trim`): the same shape with
    only what this mapping reads of it (issue 14).

    The book holds up to _BOOK_SIZE tickets' events; as exported (`include=comment_events`) each comment comes
    three times (`body`, `html_body`, `plain_body`) and at full length, a handoff note of ours tens of kilobytes,
    which made the book the daemon's largest holding. The mapping reads a comment's text only to find our marker
    and to quote an internal note's first NOTE_TEXT_CHARS characters on one line (`note_text`): an internal note
    (private, not the description) is kept that long, any other comment not at all, each with our marker where
    the cut would lose it. Child events other than comments, creations and changes (notifications with their
    e-mail's body, CCs, ...) are read by nobody and dropped."""
    children = event.get("child_events")
    kept = {key: event[key] for key in _EVENT_KEYS if key in event}
    if isinstance(children, list):
        creating = any(isinstance(child, MAPPINGS) and child.get("event_type") == "Create" for child in children)
        kept["child_events"] = [
            _kept_child(child, creating)
            for child in children
            if not isinstance(child, MAPPINGS) or child.get("event_type") in ("Comment", "Create", "Change")
        ]
    return kept


def _kept_child(child: Any, creating: bool) -> Any:
    """A child event as kept: a comment's quotable text and links; a Create/Change event's field (named as its
    key) and `previous_value`, without its own `id`, `via` and `via_reference_id`, which nobody reads."""
    if not isinstance(child, MAPPINGS):
        return child  # malformed: kept, so the mapping still sees it and refuses the history
    if child.get("event_type") != "Comment":
        return {key: value for key, value in child.items() if key not in _CHILD_UNREAD}
    kept = {key: child[key] for key in _COMMENT_KEYS if key in child}
    text_key = "body" if child.get("body") else "plain_body"
    if text_key == "body":
        kept.pop("plain_body", None)
    if isinstance(kept.get(text_key), str):
        quoted = not creating and child.get("public") is not True  # an internal note (`_comment_extras`)
        kept[text_key] = _quotable(kept[text_key], NOTE_TEXT_CHARS if quoted else 0)
    files = kept.get("attachments")
    if isinstance(files, list):
        kept["attachments"] = [
            {key: item[key] for key in _FILE_KEYS if key in item} if isinstance(item, MAPPINGS) else item
            for item in files
        ]
    return kept


def _quotable(text: str, chars: int) -> str:
    """The shortest start of `text` that reads as the whole one does: the same first `chars` characters once its
    whitespace is folded (`mappings.common.note_text`), and our marker if the text carries it."""
    folded, end = -1, len(text) if chars else 0
    for word in _WORD.finditer(text) if chars else ():
        folded += 1 + len(word.group())  # the word and the one space before it (none before the first)
        if folded >= chars:
            end = max(word.start() + 1, word.end() - (folded - chars))  # never before the word's first letter
            break
    if end >= len(text):
        return text
    cut = text[:end]
    at = text.find(OUR_MARKER)
    if at >= 0 and OUR_MARKER not in cut:
        close = text.find(")", at)
        marker = "(" + text[at : close if close >= 0 else at + NOTE_TEXT_CHARS] + ")"
        cut = f"{cut}\n\n{marker}" if cut else marker
    return cut
