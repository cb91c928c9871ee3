"""ServiceNow mapping: turns a Table API record (raw mode) into a `Ticket`, and a tier into record fields.

What the Table API sends with `sysparm_display_value=false` (ServiceNow Table API reference, "Table - GET"; checked
against recorded responses): every value is a string, an empty value is "" (never null), booleans are "true" /
"false", numbers are strings ("0"), dates are "YYYY-MM-DD HH:MM:SS" in UTC, choices are their codes ("1"-"8" for
incident state), and a reference is either `{"link": ..., "value": <sys_id>}` or, with
`sysparm_exclude_reference_link=true`, the bare sys_id. Dot-walked fields ("company.u_segment") arrive as flat
keys. Both reference shapes are accepted here, whatever the connector asked for.

Everything platform-specific an admin may change lives in `mappings/servicenow.toml`: which state codes mean what
(instances customise the incident state choices), which priority codes are P1-P4, which assignment group (or
custom field value) is which tier, where the customer segment comes from, which fields or tags are flags, the
string field that holds our breach/at-risk tags (comma-separated, written only by the daemon: see `TagsMap`) and
the one that holds people's tags (read only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import HistorySource, RawRecord, ReadSpec
from engine.model import (
    COMMENT_MARKER,
    Flags,
    NoteText,
    PlatformSla,
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
)

PLATFORM = "servicenow"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
REVISION_SEPARATOR = "#"
OUR_MARKER = COMMENT_MARKER.partition("{")[0]
"""What every handoff note of ours carries: such a work note is our own write, not a person's note."""
# What we read of each task_sla row (ServiceNow "Task SLA table" reference). `sla.name` is dot-walked so the SLA
# definition's name arrives without display values (which would also localise the dates).
TASK_SLA_FIELDS = (
    "sys_id",
    "task",
    "sla.name",
    "stage",
    "has_breached",
    "planned_end_time",
    "business_time_left",
    "time_left",
    "percentage",
    "business_percentage",
    "active",
)


_SYS_ID = re.compile(r"[0-9A-Za-z_]{1,64}")
"""What a sys_id may look like (32 hex characters on every instance; custom tables allow a little more)."""


class FieldNames(Strict):
    """Which record field holds each ticket fact. "" means the instance has no such field."""

    id: str = "sys_id"
    key: str = "number"
    subject: str = "short_description"
    description: str = "description"
    status: str = "state"
    priority: str = "priority"
    created_at: str = "opened_at"
    updated_at: str = "sys_updated_on"
    mod_count: str = "sys_mod_count"
    solved_at: str = "resolved_at"
    closed_at: str = "closed_at"
    requester: str = "caller_id"
    organization: str = "company"
    assignee_group: str = "assignment_group"
    first_public_reply_at: str = ""
    last_public_reply_at: str = ""
    last_agent_action_at: str = ""

    @field_validator("id", "key", "subject", "status", "priority", "created_at", "updated_at", "mod_count")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("this field is required and cannot be empty")
        return value


class StatusMap(Strict):
    values: dict[str, Status] = Field(min_length=1)
    """State code -> status. Codes are the choice values ("1", "2", ...), never the labels."""


class PriorityMap(Strict):
    values: dict[str, Priority] = Field(min_length=1)
    empty: Priority | None = None
    """The priority of a record whose priority field is "" (None: such a record is quarantined)."""


class TierMap(Strict):
    """The tier is the value of one field: `assignment_group` (a group sys_id per tier) or a custom field."""

    field: str = "assignment_group"
    values: dict[Tier, str] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> TierMap:
        seen: dict[str, Tier] = {}
        for tier, value in self.values.items():
            if not value.strip():
                raise ValueError(f"the value for {tier} is empty")
            if value in seen:
                raise ValueError(f"{seen[value]} and {tier} have the same value {value!r}")
            seen[value] = tier
        return self


class SegmentMap(Strict):
    """Segment from a field (a reference such as `company`, a `u_` field, or dot-walked `company.u_segment`).

    With `values`, the field's value (a sys_id for a reference) is looked up there, else it is the segment itself.
    """

    field: str = ""
    values: dict[str, str] = Field(default_factory=dict)
    default: str = ""


class BoolFlag(Strict):
    """A flag is true when `field` holds one of `true_values`, or when `tag` is in the tags field."""

    field: str = ""
    true_values: list[str] = Field(default_factory=lambda: ["true"], min_length=1)
    tag: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> BoolFlag:
        if bool(self.field) == bool(self.tag):
            raise ValueError("set exactly one of 'field' or 'tag'")
        return self


class NumberFlag(Strict):
    field: str = Field(min_length=1)


FlagsMap = FlagSources[BoolFlag, NumberFlag]
_FLAG_NAMES = tuple(FlagsMap.model_fields)
"""The flag names, read once: `model_fields` is a computed property in pydantic 2.11 (read per ticket)."""


class TagsMap(TagNames):
    """Our breach/at-risk tags live in a string field only the daemon writes (a separated list, written whole);
    people's tags (the flags' `tag = ...`) live in `people_field`, which the daemon reads and never writes.

    Why not one shared field: the Table API has no conditional update, so rewriting a field people also edit
    loses an edit made between our read and our write. Why not the platform's own tags (`label_entry` rows,
    added and removed one by one): creating one needs write access to its `table` / `table_key` fields, which
    the platform's ACLs reserve to the maint role, and no integration user has that on a customer instance.
    """

    field: str = "u_escalation_tags"
    people_field: str = ""
    separator: str = Field(default=",", min_length=1)

    @model_validator(mode="after")
    def _two_fields(self) -> TagsMap:
        if self.people_field == self.field:
            raise ValueError("people_field must not be the daemon's own tags field")
        return self


class PlatformSlaMap(Strict):
    """Read the platform's own SLAs (task_sla rows of the record) as facts; costs one query per page."""

    enabled: bool = False
    remaining: Literal["business_time_left", "time_left"] = "business_time_left"
    skip_stages: list[str] = Field(default_factory=lambda: ["cancelled"])


class HistoryMap(Strict):
    """Which history tables to read per page of records (one query each; an integration user without read
    rights on one gets the facts it feeds reported as unknown, never guessed).

    - `audit`: `sys_audit` rows of the status, tier and assignee fields: status history, tier entries, agent
      status / assignee changes.
    - `journal`: `sys_journal_field` rows of `comments` (public) and `work_notes` (internal): replies, customer
      messages, internal notes, agent actions.
    """

    audit: bool = True
    journal: bool = True
    assignee: str = "assigned_to"
    requester_user_name: str = "caller_id.user_name"
    """The requester's user_name (dot-walked), which journal and audit rows name their author by: it tells the
    customer's own comments from agents' replies. "" treats every author as an agent."""
    public_element: str = "comments"
    internal_element: str = "work_notes"
    system_users: list[str] = Field(default_factory=lambda: ["system"])
    """Authors whose changes are the platform's own (business rules, SLA engine, auto-close): no agent actions."""


class ServiceNowMappingFile(Strict):
    fields: FieldNames = Field(default_factory=FieldNames)
    status: StatusMap
    priority: PriorityMap
    tier: TierMap
    segment: SegmentMap = Field(default_factory=SegmentMap)
    flags: FlagsMap = Field(default_factory=FlagsMap)
    tags: TagsMap = Field(default_factory=TagsMap)
    platform_sla: PlatformSlaMap = Field(default_factory=PlatformSlaMap)
    history: HistoryMap = Field(default_factory=HistoryMap)
    sentiment: SentimentMap = Field(default_factory=SentimentMap)


_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
"""The one shape raw-mode dates have; `fromisoformat` parses exactly it (the shape is checked first, because
`fromisoformat` also takes offsets, fractions and "T" that are no Table API date)."""


def parse_datetime(value: str) -> datetime:
    """A raw-mode Table API date ("YYYY-MM-DD HH:MM:SS", UTC) as an aware UTC datetime.

    `datetime.strptime` looks up the locale on every call (a fifth of ServiceNow's normalize time, issue 14):
    values of the fixed shape go through `fromisoformat`, anything else through `strptime` as before, so what
    was accepted or refused (with its message) stays the same.
    """
    if _DATE_SHAPE.fullmatch(value):
        try:
            # "Z" read as UTC by `fromisoformat` itself: a fifth of the cost of `.replace(tzinfo=UTC)` afterwards.
            return datetime.fromisoformat(value + "Z")
        except ValueError:
            pass  # out of range (month 13, hour 25): strptime's refusal and message below
    return datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)


_DISPLAY_MODE = (
    "the record was fetched in display-value mode ({evidence}): labels instead of codes and times in the "
    "reader's time zone; fetch it with sysparm_display_value=false (the connector does; for a saved export, "
    "add sysparm_display_value=false&sysparm_exclude_reference_link=true to the URL)"
)
_SYS_ID = re.compile(r"[0-9a-f]{32}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""What raw durations count from (`_Normalizer._duration`)."""
_TEXT_TYPES = frozenset({str, type(None)})
"""Value types that are no reference object (`_Normalizer.refuse_display_values`)."""


def text_value(value: Any) -> str:
    """A field value as the string the Table API means: references give their sys_id, null gives ""."""
    if type(value) is str:  # raw mode sends nearly every field as text: returned as it is, as `str()` would
        return value
    if value is None:
        return ""
    if isinstance(value, dict):
        inner = value.get("value")
        if isinstance(inner, str):
            return inner
        raise TypeError("a reference without 'value' (was sysparm_display_value not false?)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError(f"unexpected {type(value).__name__}")


def make_revision(updated_on: str, mod_count: str) -> str:
    """The concurrency token: sys_updated_on has one-second resolution, sys_mod_count tells same-second writes apart."""
    return f"{updated_on}{REVISION_SEPARATOR}{mod_count}"


class ServiceNowMapping:
    """A validated servicenow mapping file; implements mappings.PlatformMapping."""

    def __init__(self, spec: ServiceNowMappingFile, path: str) -> None:
        self.spec = spec
        self.path = path
        self.tags = spec.tags.scheme()
        self._tier_by_value = {value: tier for tier, value in spec.tier.values.items()}
        # The file read once into plain values: normalize runs for every polled record (issue 14).
        self._numeric_codes = all(code.isdigit() for code in spec.status.values)
        """Whether every state code is a number (then a state label such as "Closed" shows display-value mode)."""
        # Flags: (name, tag, field, true values or None for a true/false field read through `truth`) and
        # (name, field, whole number?), in the order of FlagSources.
        self._bool_flags = tuple(
            (name, flag.tag, flag.field, None if flag.true_values == ["true"] else flag.true_values)
            for name in _FLAG_NAMES
            if isinstance(flag := getattr(spec.flags, name), BoolFlag)
        )
        self._number_flags = tuple(
            (name, flag.field, name != "revenue_at_risk")
            for name in _FLAG_NAMES
            if isinstance(flag := getattr(spec.flags, name), NumberFlag)
        )

    # -- what the connector needs to know ---------------------------------------------------------------------

    @property
    def tags_field(self) -> str:
        return self.spec.tags.field

    @property
    def tags_separator(self) -> str:
        return self.spec.tags.separator

    @property
    def wants_platform_slas(self) -> bool:
        return self.spec.platform_sla.enabled

    @property
    def task_sla_fields(self) -> tuple[str, ...]:
        return TASK_SLA_FIELDS

    def read_spec(self) -> ReadSpec:
        """What connectors/servicenow.py reads for this mapping (it imports no mapping: see connectors.base)."""
        return ReadSpec(
            fields=tuple(self.poll_fields()),
            history=self.history_sources(),
            platform_slas=self.wants_platform_slas,
            sla_fields=self.task_sla_fields,
        )

    def render_patch(self, writeback: WriteBack, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The PATCH fields for the write-back: the tier's field value, and, when tags change, the daemon's tags
        field written whole from the plan's set of managed tags (no read first: only the daemon writes it)."""
        patch: dict[str, Any] = {}
        if writeback.tier is not None:
            patch.update(self.tier_fields(Tier(writeback.tier)))
        if writeback.add_tags or writeback.remove_tags:
            if writeback.tags is None:
                raise ValueError("a tag change for ServiceNow needs the plan's whole set of managed tags")
            patch[self.tags_field] = self.join_tags(sorted(writeback.tags))
        return patch

    def history_sources(self) -> tuple[HistorySource, ...]:
        """The history tables the connector reads per page, with the fields (sys_audit) or elements
        (sys_journal_field) wanted: plain data, so the connector needs nothing of this mapping's schema."""
        spec = self.spec
        sources = []
        if spec.history.audit:
            audited = (spec.fields.status, spec.tier.field, spec.history.assignee, spec.fields.priority)
            sources.append(HistorySource("sys_audit", tuple(dict.fromkeys(name for name in audited if name))))
        if spec.history.journal:
            elements = (spec.history.public_element, spec.history.internal_element)
            sources.append(HistorySource("sys_journal_field", elements))
        return tuple(sources)

    def poll_fields(self) -> list[str]:
        """Every record field this mapping reads: the connector asks for these and no more (sysparm_fields)."""
        spec = self.spec
        names = [value for value in spec.fields.model_dump().values() if value]
        names += [name for name in (spec.tier.field, spec.tags.field, spec.tags.people_field) if name]
        if spec.segment.field:
            names.append(spec.segment.field)
        if spec.history.requester_user_name:
            names.append(spec.history.requester_user_name)
        for flag in (getattr(spec.flags, name) for name in FlagsMap.model_fields):
            if flag is not None and getattr(flag, "field", ""):
                names.append(flag.field)
        return list(dict.fromkeys(names))

    def tier_fields(self, tier: Tier) -> dict[str, Any]:
        value = self.spec.tier.values.get(tier)
        if value is None:
            raise MappingError(self.path, f"no value for tier {tier}", key="tier.values")
        return {self.spec.tier.field: value}

    def split_tags(self, value: str) -> list[str]:
        return [part.strip() for part in value.split(self.spec.tags.separator) if part.strip()]

    def join_tags(self, tags: list[str]) -> str:
        return self.spec.tags.separator.join(tags)

    def revision_of(self, data: dict[str, Any]) -> str:
        fields = self.spec.fields
        return make_revision(text_value(data.get(fields.updated_at)), text_value(data.get(fields.mod_count)))

    # -- normalization ----------------------------------------------------------------------------------------

    def normalize(self, record: RawRecord, instance: str) -> Ticket:
        return _Normalizer(self, record).ticket(instance)


class _Normalizer:
    """One record's normalization; every failure names the record and the field."""

    def __init__(self, mapping: ServiceNowMapping, record: RawRecord) -> None:
        self.mapping = mapping
        self.spec = mapping.spec
        self.data = record.data
        self.related = record.related
        self.record_id = record.id or "?"

    def fail(self, field: str, reason: str) -> NormalizeError:
        return NormalizeError(self.record_id, field, reason)

    def text(self, field: str) -> str:
        if not field:
            return ""
        value = self.data.get(field)
        if type(value) is str:  # `text_value`'s own fast path, without the call: a record has some 25 of them
            return value
        try:
            return text_value(value)
        except TypeError as error:
            raise self.fail(field, str(error)) from None

    def reference(self, field: str) -> str | None:
        """A reference field's sys_id; anything else there ("no value", a name) is no reference at all, never a
        customer. A dot-walked field (`caller_id.email`) is plain text and kept as it is."""
        value = self.text(field)
        if "." in field:
            return value or None
        return value if _SYS_ID.fullmatch(value) else None

    def date(self, field: str, *, required: bool = False) -> datetime | None:
        value = self.text(field)
        if not value:
            if required:
                raise self.fail(field, "missing date")
            return None
        try:
            return parse_datetime(value)
        except ValueError:
            raise self.fail(field, f"not a date of the form YYYY-MM-DD HH:MM:SS: {value!r}") from None

    def number(self, field: str) -> float:
        value = self.text(field)
        return finite_number(self.record_id, field, value) if value else 0.0

    def ticket(self, instance: str) -> Ticket:
        fields = self.spec.fields
        raw_id = self.data.get(fields.id)
        sys_id = self.text(fields.id)
        if not sys_id:
            raise self.fail(fields.id, "missing sys_id")
        # sys_ids are 32 hex characters; a value of another type or shape (false, a number, a list) is a broken
        # record, not a ticket to write to.
        if not isinstance(raw_id, (str, dict)) or not _SYS_ID.fullmatch(sys_id):
            raise self.fail(fields.id, f"not a sys_id: {str(raw_id)[:60]!r}")
        self.record_id = sys_id
        self.refuse_display_values()
        tags = self.tags()
        status = self.status()
        solved_at = self.date(fields.solved_at)
        if solved_at is None and status.is_terminal:
            solved_at = self.date(fields.closed_at)
        instance_url = str(self.related.get("instance_url", "")).rstrip("/")
        table = str(self.related.get("table", "incident"))
        tier_value = self.tier_value()
        updated = self.date(fields.updated_at, required=True)
        assert updated is not None
        created = self.date(fields.created_at, required=True) or updated
        tier = self.mapping._tier_by_value.get(tier_value)
        reader = _History(self, created, status, tier)
        history = reader.facts()
        times = summary_times(history)
        return Ticket(
            platform=PLATFORM,
            instance=instance,
            id=sys_id,
            key=self.text(fields.key) or sys_id,
            url=f"{instance_url}/{table}.do?sys_id={sys_id}",
            subject=self.text(fields.subject),
            description=self.text(fields.description),
            status=status,
            priority=self.priority(),
            created_at=created,
            updated_at=updated,
            first_public_reply_at=self.date(fields.first_public_reply_at) or times.get("first_public_reply_at"),
            last_public_reply_at=self.date(fields.last_public_reply_at) or times.get("last_public_reply_at"),
            last_agent_action_at=self.date(fields.last_agent_action_at) or times.get("last_agent_action_at"),
            solved_at=solved_at,
            requester=self.reference(fields.requester),
            organization=self.reference(fields.organization),
            segment=self.segment(),
            tags=tags,
            assignee_group=self.text(fields.assignee_group) or None,
            tier=tier,
            tier_entered_at=tier_entry(history.get("tier_changes"), tier),
            flags=self.flags(tags),
            platform_slas=self.platform_slas(),
            revision=make_revision(self.text(fields.updated_at), self.text(fields.mod_count)),
            **history,
            note_texts=reader.note_texts(),
            sentiment=sentiment_from_tags(tags, self.spec.sentiment),
        )

    def tags(self) -> frozenset[str]:
        """The daemon's field and the people's field together; a managed tag counts only in the daemon's field
        (one typed into the people's field could never be removed without rewriting that field)."""
        ours = self.text(self.spec.tags.field)
        people = self.text(self.spec.tags.people_field)
        if not people:  # the common case: nothing typed into the people's field (`split_tags` of "" is empty)
            return frozenset(self.mapping.split_tags(ours)) if ours else frozenset()
        return frozenset(
            [
                *self.mapping.split_tags(ours),
                *(tag for tag in self.mapping.split_tags(people) if not self.mapping.tags.is_managed(tag)),
            ]
        )

    def tier_value(self) -> str:
        """The tier field's raw value: a reference (`{value}` or its sys_id text) or a choice code. A boolean or a
        number there is a broken record, refused rather than read as "no tier" (which moved tickets to L1)."""
        field = self.spec.tier.field
        raw = self.data.get(field)
        if raw is not None and not isinstance(raw, str | dict):
            raise self.fail(field, f"not a reference or choice value: {str(raw)[:60]!r}")
        return self.text(field)

    def refuse_display_values(self) -> None:
        """A record read with sysparm_display_value=true (a saved browser or REST-explorer export) has labels
        for codes and times in the reader's zone: refused as such, not as "unknown state code 'Closed'", whose
        advice (add it to [status.values]) would let the record through with times hours off."""
        fields = self.spec.fields
        # Only a record holding some object is looked at field by field (a raw-mode record holds text only).
        if not set(map(type, self.data.values())) <= _TEXT_TYPES:
            for name, value in self.data.items():
                if isinstance(value, dict) and "display_value" in value and "value" not in value:
                    evidence = f"{name} is a {{display_value, link}} reference"
                    raise self.fail(name, _DISPLAY_MODE.format(evidence=evidence))
        codes = self.spec.status.values
        state = self.data.get(fields.status)
        numeric = self.mapping._numeric_codes
        if isinstance(state, str) and state and state not in codes and numeric and not state.isdigit():
            raise self.fail(fields.status, _DISPLAY_MODE.format(evidence=f"state is the label {state!r}"))

    def status(self) -> Status:
        field = self.spec.fields.status
        code = self.text(field)
        status = self.spec.status.values.get(code)
        if status is None:
            raise self.fail(field, f"unknown state code {code!r}; add it to [status.values] in the mapping")
        return status

    def priority(self) -> Priority:
        field = self.spec.fields.priority
        code = self.text(field)
        if not code and self.spec.priority.empty is not None:
            return self.spec.priority.empty
        priority = self.spec.priority.values.get(code)
        if priority is None:
            raise self.fail(field, f"unknown priority code {code!r}; add it to [priority.values] in the mapping")
        return priority

    def segment(self) -> str | None:
        segment = self.spec.segment
        if not segment.field:
            return segment.default or None
        value = self.text(segment.field)
        if segment.values:
            return segment.values.get(value, segment.default) or None
        return value or segment.default or None

    def flags(self, tags: frozenset[str]) -> Flags:
        values: dict[str, Any] = {}
        for name, tag, field, true_values in self.mapping._bool_flags:
            if tag:
                values[name] = tag in tags
            elif true_values is None:
                # A true/false field (the default `true_values = ["true"]`) reads through mappings.common.truth,
                # so a value that is no boolean is refused.
                value = self.text(field)
                values[name] = value == "true" or (value != "false" and truth(self.record_id, field, value))
            else:
                values[name] = self.text(field) in true_values  # a choice field: true for these codes
        for name, field, whole in self.mapping._number_flags:
            number = self.number(field)
            values[name] = int(number) if whole else number
        return Flags(**values)

    def platform_slas(self) -> tuple[PlatformSla, ...]:
        rows = self.related.get("task_sla") or []
        config = self.spec.platform_sla
        result: list[PlatformSla] = []
        # Malformed rows are refused, as a bad planned_end_time always was: an SLA read wrong or left out could
        # hide a breach the platform itself reports.
        if not isinstance(rows, list):
            raise self.fail("task_sla", f"not a list of rows: {str(rows)[:60]!r}")
        for row in rows:
            if not isinstance(row, dict):
                raise self.fail("task_sla", f"row is not an object: {str(row)[:60]!r}")
            stage = self._sla_text(row, "stage")
            if stage in config.skip_stages:
                continue
            name = self._sla_text(row, "sla.name") or self._sla_text(row, "sla") or "task_sla"
            result.append(
                PlatformSla(
                    name=name,
                    breached=self._sla_text(row, "has_breached") == "true",
                    paused=stage == "paused",
                    remaining=self._duration(self._sla_text(row, config.remaining)),
                    due_at=self._sla_date(self._sla_text(row, "planned_end_time")),
                    completed=stage == "completed",
                )
            )
        return tuple(result)

    def _sla_text(self, row: dict[str, Any], field: str) -> str:
        """A task_sla row's field as text (`text_value`); another shape is refused as `task_sla.<field>`."""
        value = row.get(field)
        if type(value) is str:
            return value
        try:
            return text_value(value)
        except TypeError as error:
            raise self.fail(f"task_sla.{field}", str(error)) from None

    def _sla_date(self, value: str) -> datetime | None:
        if not value:
            return None
        try:
            return parse_datetime(value)
        except ValueError:
            raise self.fail("task_sla.planned_end_time", f"not a date: {value!r}") from None

    def _duration(self, value: str) -> timedelta | None:
        """Raw durations are datetimes after the epoch ("1970-01-01 02:17:00" is 2 h 17 min)."""
        if not value:
            return None
        try:
            return parse_datetime(value) - _EPOCH
        except ValueError:
            raise self.fail("task_sla.time_left", f"not a duration: {value!r}") from None


_HISTORY_TEXT_FIELDS = ("sys_id", "fieldname", "oldvalue", "newvalue", "element", "value")
"""The fields of sys_audit and sys_journal_field rows that `_History` reads as text (`text_value`)."""


class _History:
    """The history facts of one record, from the sys_audit and sys_journal_field rows the connector attached.

    sys_audit does not record inserts on a default instance (`glide.sys.audit_inserts` is false), so the value
    a field had at creation is the `oldvalue` of its first audited change, or its current value when it never
    changed. A source the mapping does not read, the connector could not read (`related["history_unavailable"]`)
    or that holds a malformed row leaves its facts absent and listed in `missing_facts`.
    """

    def __init__(self, normalizer: _Normalizer, created: datetime, status: Status, tier: Tier | None) -> None:
        self.n = normalizer
        self.spec = normalizer.spec
        self.created = created
        self.status = status
        self.tier = tier
        self.unavailable = set(normalizer.related.get("history_unavailable") or ())
        history = self.spec.history
        self.requester = normalizer.text(history.requester_user_name) if history.audit or history.journal else ""
        # The rows are read once, here (the facts and the notes' texts both need the journal).
        self.audit = self._rows("sys_audit", "user") if history.audit else None
        self.journal = self._rows("sys_journal_field", "sys_created_by") if history.journal else None

    def _rows(self, source: str, author: str) -> list[tuple[datetime, dict[str, Any]]] | None:
        """The source's rows oldest first with their time, or None when the source is absent or malformed."""
        rows = self.n.related.get(source)
        if source in self.unavailable or not isinstance(rows, list):
            return None
        timed = []
        for row in rows:
            if not isinstance(row, dict):
                return None
            try:
                at = parse_datetime(text_value(row.get("sys_created_on")))
                # Every field the readers take as text (sort key included), checked here once: a row holding
                # another shape is malformed, and leaves the source's facts missing like any malformed row.
                for field in _HISTORY_TEXT_FIELDS:
                    if field in row and type(row[field]) is not str:
                        text_value(row[field])
                text_value(row.get(author))
            except (ValueError, TypeError):
                return None
            timed.append((at, row))
        timed.sort(key=lambda item: (item[0], text_value(item[1].get("sys_id"))))
        return timed

    def facts(self) -> dict[str, Any]:
        history = self.spec.history
        facts: dict[str, Any] = {}
        missing: set[str] = set()
        actions: list[datetime] = []
        audit, journal = self.audit, self.journal
        if history.audit:
            if audit is None:
                missing.update(("status_history", "tier_changes"))
            else:
                statuses = self._status_history(audit)
                if statuses is None:
                    missing.add("status_history")
                else:
                    facts["status_history"] = statuses
                facts["tier_changes"] = self._tier_changes(audit)
                priorities = self._priority_changes(audit)
                if priorities is not None:
                    facts["priority_changes"] = priorities
                for at, row in audit:
                    field = text_value(row.get("fieldname"))
                    if field in (self.spec.fields.status, history.assignee) and self._by_agent(row, "user"):
                        actions.append(at)
        if history.journal:
            if journal is None:
                missing.update(("public_replies", "agent_actions", "internal_notes"))
            else:
                replies, notes, customer = [], [], None
                for at, row in journal:
                    element = text_value(row.get("element"))
                    ours = OUR_MARKER in text_value(row.get("value"))
                    if element == history.public_element:
                        if self._by_agent(row, "sys_created_by"):
                            replies.append(at)
                            actions.append(at)
                        else:
                            customer = at
                    elif element == history.internal_element and not ours:
                        notes.append(at)
                        if self._by_agent(row, "sys_created_by"):
                            actions.append(at)
                facts.update(
                    public_replies=tuple(replies),
                    internal_notes=tuple(notes),
                    last_customer_message_at=customer,
                    agent_actions=tuple(sorted(actions)),
                )
        if missing:
            facts["missing_facts"] = frozenset(missing)
        return facts

    def note_texts(self) -> tuple[NoteText, ...] | None:
        """The work notes `facts` counts as internal notes, with their text (`value`) for the handoff; None where
        the journal is not read. Attachments (sys_attachment) are not read: no request is added for them."""
        history = self.spec.history
        journal = self.journal
        if journal is None:
            return None
        return tuple(
            NoteText(at, note_text(text_value(row.get("value"))))
            for at, row in journal
            if text_value(row.get("element")) == history.internal_element
            and OUR_MARKER not in text_value(row.get("value"))
        )

    def _by_agent(self, row: dict[str, Any], author: str) -> bool:
        name = text_value(row.get(author))
        if name in self.spec.history.system_users:
            return False
        return not self.requester or name != self.requester

    def _status_history(self, audit: list[tuple[datetime, dict[str, Any]]]) -> tuple[StatusChange, ...] | None:
        field = self.spec.fields.status
        codes = self.spec.status.values
        rows = [(at, row) for at, row in audit if text_value(row.get("fieldname")) == field]
        if not rows:
            return (StatusChange(self.created, self.status),)
        first = codes.get(text_value(rows[0][1].get("oldvalue")))
        changes = [StatusChange(self.created, first)] if first is not None else []
        for at, row in rows:
            status = codes.get(text_value(row.get("newvalue")))
            if status is None:
                return None  # a state code the mapping does not know: the history is not usable
            changes.append(StatusChange(at, status))
        return tuple(changes)

    def _priority_changes(self, audit: list[tuple[datetime, dict[str, Any]]]) -> tuple[PriorityChange, ...] | None:
        """Priority over time from sys_audit rows of the priority field (`oldvalue` / `newvalue` are the choice
        codes, "1".."5"); None when a code is not in [priority.values] (nothing to go on). ServiceNow derives
        priority from impact and urgency, and audits the derived field like any other.
        https://docs.servicenow.com/bundle/utah-platform-administration/page/administer/security/concept/c_UnderstandingTheSysAuditTable.html
        """
        field = self.spec.fields.priority
        rows = [(at, row) for at, row in audit if text_value(row.get("fieldname")) == field]
        if not rows:
            return ()
        codes, empty = self.spec.priority.values, self.spec.priority.empty

        def level(code: str) -> Priority | None:
            return empty if not code else codes.get(code)

        first = level(text_value(rows[0][1].get("oldvalue")))
        if first is None:
            return None
        changes = [PriorityChange(self.created, first)]
        for at, row in rows:
            priority = level(text_value(row.get("newvalue")))
            if priority is None:
                return None
            if priority != changes[-1].priority:
                changes.append(PriorityChange(at, priority))
        return tuple(changes)

    def _tier_changes(self, audit: list[tuple[datetime, dict[str, Any]]]) -> tuple[TierChange, ...]:
        field = self.spec.tier.field
        tiers = self.n.mapping._tier_by_value
        rows = [(at, row) for at, row in audit if text_value(row.get("fieldname")) == field]
        initial = tiers.get(text_value(rows[0][1].get("oldvalue"))) if rows else self.tier
        changes = [TierChange(self.created, initial)]
        for at, row in rows:
            tier = tiers.get(text_value(row.get("newvalue")))
            if (tier or Tier.L1) != (changes[-1].tier or Tier.L1):
                changes.append(TierChange(at, tier))
        return tuple(changes)


def load(path: Path) -> ServiceNowMapping:
    """Load and validate a ServiceNow mapping; MappingError names file, line, key and reason."""
    spec, _ = load_spec(ServiceNowMappingFile, Path(path))
    return ServiceNowMapping(spec, str(path))
