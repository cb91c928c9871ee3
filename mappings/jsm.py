"""Jira Service Management mapping: the schema of `mappings/jsm.toml` and the normalizer it drives.

Owns every fact about how a JSM issue (as `/rest/api/3/search/jql` or `GET /rest/api/3/issue/{key}`
returns it) becomes an `engine.model.Ticket`: which priority names mean P1-P4, which statuses pause or close,
which select custom field holds the support tier, which custom fields are JSM SLAs, where the customer segment
and the escalation flags live. The connector sends the `fields` of `JsmMapping.read_spec()` (it imports no mapping),
so a search returns nothing the mapping does not read.

Shapes handled (from Atlassian's REST docs and real recordings):
- timestamps `2015-11-21T07:03:02.000-0500` (no colon in the offset; the offset moves with DST inside one
  issue): parsed to aware UTC. Date objects of JSM (`{iso8601, jira, friendly, epochMillis}`) are read by
  `epochMillis` only: `friendly` is localized and relative.
- `description` is ADF in API v3 (a `doc` node tree) and a plain string in v2; both become plain text.
- users: Cloud sends `accountId`, Server/Data Center `name`/`key` and no `accountId`.
- `priority` may be absent or null (default priority), `resolution` may be null on a "Done" issue.
- select custom fields are option objects `{self, value, id}`, multi-selects arrays of them, the JSM
  organizations field an array of `{id, name, _links}`.
- SLA fields: `{id, name, completedCycles: [...], ongoingCycle?: {breached, paused, remainingTime.millis,
  goalDuration, breachTime.epochMillis}}`; `ongoingCycle` may be missing, `remainingTime.millis` negative.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, Field, field_validator, model_validator

from connectors.base import MAPPINGS, HistorySource, RawRecord, ReadSpec
from engine.model import (
    COMMENT_MARKER,
    Attachment,
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

PLATFORM = "jsm"
_CUSTOM_FIELD = re.compile(r"^customfield_\d+$")
_FIELD_ID = re.compile(r"^(customfield_\d+|[a-z][A-Za-z0-9]*)$")
_CATEGORY_KEYS = ("new", "indeterminate", "done", "undefined")
OUR_MARKER = COMMENT_MARKER.partition("{")[0]
_BOOLEAN_FLAGS = (
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
_STR_TYPE = frozenset({str})
_UNREAD = object()
"""A value not read yet (`_History._comments`)."""


def _check_field_id(value: str) -> str:
    if not _FIELD_ID.match(value):
        raise ValueError(f"{value!r} is not a Jira field id (e.g. 'labels' or 'customfield_10010')")
    return value


def _check_custom(value: str) -> str:
    if not _CUSTOM_FIELD.match(value):
        raise ValueError(f"{value!r} is not a custom field id (customfield_<number>)")
    return value


FieldId = Annotated[str, AfterValidator(_check_field_id)]
CustomFieldId = Annotated[str, AfterValidator(_check_custom)]


class PriorityMap(Strict):
    """Jira priority name (case-insensitive) -> P1..P4; `default` when the issue has no priority."""

    default: Priority = Priority.P3
    values: dict[str, Priority] = Field(min_length=1)


class StatusMap(Strict):
    """Status by name first (overrides such as "Waiting for customer" -> pending), then by status category."""

    names: dict[str, Status] = {}
    categories: dict[str, Status] = {"new": Status.NEW, "indeterminate": Status.OPEN, "done": Status.SOLVED}

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: dict[str, Status]) -> dict[str, Status]:
        for key in value:
            if key not in _CATEGORY_KEYS:
                raise ValueError(f"unknown status category key {key!r}; Jira has {', '.join(_CATEGORY_KEYS)}")
        return value


class TierOption(Strict):
    value: str = Field(min_length=1)
    id: str | None = None


class TierMap(Strict):
    """The single-select custom field holding the tier, and its option per tier (written by value or id)."""

    field: CustomFieldId
    write_by: Literal["value", "id"] = "value"
    options: dict[Tier, TierOption] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TierMap:
        values = [option.value.casefold() for option in self.options.values()]
        if len(set(values)) != len(values):
            raise ValueError("two tiers share one option value")
        if self.write_by == "id":
            missing = [tier.value for tier, option in self.options.items() if not option.id]
            if missing:
                raise ValueError(f"write_by = 'id' but no option id for {', '.join(missing)}")
        return self


class FieldRef(Strict):
    """A field to read a text value from: option objects give `value`, organizations give `name`."""

    field: FieldId
    values: dict[str, str] = {}
    """Optional translation of the raw value (case-insensitive) to the model's value."""


class FlagRule(Strict):
    """A boolean flag is true when the issue has one of `labels`, or `field` holds one of `values`
    (any non-empty value when `values` is empty)."""

    labels: list[str] = []
    field: FieldId | None = None
    values: list[str] = []

    @model_validator(mode="after")
    def _has_source(self) -> FlagRule:
        if not self.labels and self.field is None:
            raise ValueError("a flag needs labels or a field")
        if self.values and self.field is None:
            raise ValueError("values given without a field")
        return self


class NumberRule(Strict):
    """A numeric fact read from a number custom field (or a text field holding a number)."""

    field: FieldId


FlagsMap = FlagSources[FlagRule, NumberRule]


class SlaMap(Strict):
    """SLA custom field id -> clock name; `first_response`: the SLA whose first stop is the first reply."""

    fields: dict[CustomFieldId, str] = {}
    first_response: str | None = None

    @model_validator(mode="after")
    def _first_response_known(self) -> SlaMap:
        if self.first_response is not None and self.first_response not in self.fields.values():
            raise ValueError(f"first_response {self.first_response!r} is not one of the SLA names")
        return self


class HistoryMap(Strict):
    """Which history the connector reads with each page (see `JsmMapping.history_sources`).

    - `changelog`: the issues' changelog (status, assignee and tier-field changes): `expand=changelog` on the
      search itself, and one bulk changelog request per page for the issues whose embedded changelog is cut off.
    - `comments`: the `comment` field, with `jsdPublic` telling public replies from internal notes (Jira Cloud
      service projects; without it the reply facts are unknown).
    """

    changelog: bool = True
    comments: bool = True
    assignee_field: FieldId = "assignee"


class JsmMappingFile(Strict):
    priority: PriorityMap
    status: StatusMap = StatusMap()
    tier: TierMap
    sla: SlaMap = SlaMap()
    segment: FieldRef | None = None
    organization: FieldRef | None = None
    assignee_group: FieldRef | None = None
    flags: FlagsMap = FlagsMap()
    tags: TagNames = TagNames()
    history: HistoryMap = HistoryMap()
    sentiment: SentimentMap = SentimentMap()


# ---- value readers ---------------------------------------------------------------------------------------


def _is_mapping(value: Any) -> bool:
    """`isinstance(value, MAPPINGS)`, with the JSON cases (a dict, null) answered before the abstract-class test,
    which is the slow part and which the normalizer would otherwise pay for every null or text it looks at."""
    return type(value) is dict or (value is not None and isinstance(value, MAPPINGS))


def parse_jira_time(value: Any, record_id: str, field: str) -> datetime:
    """`2015-11-21T07:03:02.000-0500` (or a JSM date object) -> aware UTC; anything else: NormalizeError.

    The text is tested first: for a string, the abstract-class test of a mapping is the slowest step."""
    if type(value) is not str:
        if _is_mapping(value) and "epochMillis" in value:
            return from_epoch_millis(value["epochMillis"], record_id, field)
        if not isinstance(value, str):
            raise NormalizeError(record_id, field, f"expected a timestamp, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise NormalizeError(record_id, field, f"not a timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise NormalizeError(record_id, field, f"timestamp without a UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def from_epoch_millis(value: Any, record_id: str, field: str) -> datetime:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise NormalizeError(record_id, field, f"epochMillis is not a number: {value!r}")
    return datetime.fromtimestamp(value / 1000, UTC)


def adf_to_text(node: Any) -> str:
    """Plain text of an Atlassian Document Format tree (v3) or a plain string (v2); blocks end a line."""
    if type(node) is not dict:  # a node is an object (a dict) but for the document's lists and a v2 string
        if node is None:
            return ""
        if isinstance(node, str):
            return node
        if isinstance(node, list):
            return "".join([adf_to_text(child) for child in node])
        if not isinstance(node, MAPPINGS):
            return ""
    kind = node.get("type")
    if kind == "text":
        return str(node.get("text", ""))
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "emoji"):
        attrs = node.get("attrs")
        if not _is_mapping(attrs):
            return ""  # no attributes to show, as for any node this reader does not know: text, never a refusal
        return str(attrs.get("text") or attrs.get("shortName") or "")
    if kind in ("inlineCard", "blockCard"):
        attrs = node.get("attrs")
        return str(attrs.get("url", "")) if _is_mapping(attrs) else ""
    content = node.get("content")
    # A node's content is a list of nodes: joined here, one call per child (this runs for every description).
    inner = "".join([adf_to_text(child) for child in content]) if type(content) is list else adf_to_text(content or [])
    if kind in ("paragraph", "heading", "codeBlock", "listItem", "blockquote", "rule", "mediaSingle"):
        return inner.rstrip("\n") + "\n"
    return inner


def user_ref(user: Any) -> str | None:
    """Cloud users are identified by accountId; Server/Data Center users by name (or key)."""
    if not _is_mapping(user):
        return None
    for key in ("accountId", "name", "key", "emailAddress"):
        value = user.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def field_texts(value: Any) -> list[str]:
    """Every text a field value holds: option objects -> value, orgs/users -> name, arrays flattened."""
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true"] if value else []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, list):
        return [text for item in value for text in field_texts(item)]
    if _is_mapping(value):
        for key in ("value", "name", "displayName", "key", "id"):
            item = value.get(key)
            if isinstance(item, str) and item:
                texts = [item]
                child = value.get("child")  # cascading select: parent and child option
                return texts + field_texts(child) if child else texts
    return []


class JsmMapping:
    """A validated `jsm.toml`: normalizes raw JSM issues and names the fields that put a ticket at a tier."""

    platform = PLATFORM

    def __init__(self, spec: JsmMappingFile, path: Path | str) -> None:
        self.spec = spec
        self.path = str(path)
        self.tags = spec.tags.scheme()
        self._priorities = {name.casefold(): value for name, value in spec.priority.values.items()}
        self._status_names = {name.casefold(): value for name, value in spec.status.names.items()}
        self._tier_by_text: dict[str, Tier] = {}
        for tier, option in spec.tier.options.items():
            self._tier_by_text[option.value.casefold()] = tier
            if option.id:
                self._tier_by_text[option.id] = tier
        # The rest of the file read once into plain values: normalize runs for every polled issue (issue 14).
        # Boolean flags: (name, casefolded labels, field, casefolded values); those read from labels alone are
        # answered together (an issue with none of their labels, most issues, skips the per-flag tests).
        rules = tuple(
            (
                name,
                frozenset(label.casefold() for label in rule.labels),
                rule.field,
                [v.casefold() for v in rule.values],
            )
            for name in _BOOLEAN_FLAGS
            if (rule := getattr(spec.flags, name)) is not None
        )
        self._label_flags = tuple((name, labels) for name, labels, field, _ in rules if field is None)
        self._label_flag_names = tuple(name for name, _ in self._label_flags)
        self._label_flag_labels = frozenset().union(*(labels for _, labels in self._label_flags))
        self._field_flags = tuple(rule for rule in rules if rule[2] is not None)
        self._unset_flags = dict.fromkeys((name for name in _BOOLEAN_FLAGS if getattr(spec.flags, name) is None), False)
        # Number flags: (name, kind, field).
        self._number_rules = tuple(
            (name, kind, rule.field) for name, kind in _NUMBER_FLAGS if (rule := getattr(spec.flags, name)) is not None
        )
        self._sla_fields = tuple(_SlaField.of(field_id, name) for field_id, name in spec.sla.fields.items())
        first = spec.sla.first_response
        self._first_response_field = next((fid for fid, name in spec.sla.fields.items() if name == first), None)
        # Text fields: (field id, casefolded raw value -> model value), or None when the mapping names no field.
        self._segment_ref = _text_ref(spec.segment)
        self._organization_ref = _text_ref(spec.organization)
        self._group_ref = _text_ref(spec.assignee_group)

    # -- what the connector needs -------------------------------------------------------------------------

    @property
    def tier_field(self) -> str:
        return self.spec.tier.field

    @property
    def request_fields(self) -> list[str]:
        """The `fields` list for searches and issue reads: exactly what `normalize` reads."""
        spec = self.spec
        wanted = [
            "summary",
            "status",
            "priority",
            "created",
            "updated",
            "resolutiondate",
            "statuscategorychangedate",
            "description",
            "reporter",
            "labels",
            spec.tier.field,
            *spec.sla.fields,
        ]
        for ref in (spec.segment, spec.organization, spec.assignee_group):
            if ref is not None:
                wanted.append(ref.field)
        if spec.history.comments:
            wanted.append("comment")
        wanted.append("attachment")  # the handoff's attachments (see `_attachments`)
        for name in FlagsMap.model_fields:
            rule = getattr(spec.flags, name)
            if rule is not None and rule.field:
                wanted.append(rule.field)
        return list(dict.fromkeys(wanted))

    def read_spec(self) -> ReadSpec:
        """What connectors/jsm.py reads for this mapping (it imports no mapping: see connectors.base)."""
        return ReadSpec(fields=tuple(self.request_fields), history=self.history_sources())

    def render_patch(self, writeback: WriteBack, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The one edit body: the tier's select option as `fields`, labels as `update` add/remove operations (no
        read-modify-write, so a label someone adds meanwhile survives)."""
        payload: dict[str, Any] = {}
        if writeback.tier is not None:
            payload["fields"] = self.tier_fields(Tier(writeback.tier))
        operations: list[dict[str, str]] = [{"add": label} for label in sorted(writeback.add_tags)]
        operations += [{"remove": label} for label in sorted(writeback.remove_tags)]
        if operations:
            payload["update"] = {"labels": operations}
        return payload

    def history_sources(self) -> tuple[HistorySource, ...]:
        """What the connector reads besides the fields: the changelog of these fields (comments come as the
        `comment` field, already in `request_fields`)."""
        history = self.spec.history
        if not history.changelog:
            return ()
        return (HistorySource("changelog", ("status", history.assignee_field, self.spec.tier.field)),)

    def tier_fields(self, tier: Tier) -> dict[str, Any]:
        """`{customfield_N: {"value": ...}}` (or `{"id": ...}`): the select option that means `tier`."""
        option = self.spec.tier.options.get(tier)
        if option is None:
            raise MappingError(self.path, f"no option configured for tier {tier.value}", key="tier.options")
        if self.spec.tier.write_by == "id":
            return {self.spec.tier.field: {"id": option.id}}
        return {self.spec.tier.field: {"value": option.value}}

    # -- normalize ----------------------------------------------------------------------------------------

    def normalize(self, record: RawRecord, instance: str) -> Ticket:
        data = record.data
        rid = str(data.get("key") or record.id)
        fields = data.get("fields")
        if not _is_mapping(fields):
            raise NormalizeError(rid, "fields", "missing or not an object")
        issue_id = data.get("id")
        key = data.get("key")
        if not isinstance(issue_id, str) or not issue_id or not isinstance(key, str) or not key:
            raise NormalizeError(rid, "id/key", "issue id or key missing")
        summary = fields.get("summary")
        if not isinstance(summary, str):
            raise NormalizeError(rid, "summary", "missing")
        labels = fields.get("labels") or []
        # The exact types first (one C call); only a list holding other types is checked label by label.
        if not isinstance(labels, list) or (
            not set(map(type, labels)) <= _STR_TYPE and not all(isinstance(label, str) for label in labels)
        ):
            raise NormalizeError(rid, "labels", "not a list of strings")
        tags = frozenset(labels)
        status = self._status(rid, fields)
        created_at = parse_jira_time(self._required(rid, fields, "created"), rid, "created")
        updated_at = parse_jira_time(self._required(rid, fields, "updated"), rid, "updated")
        solved_at = None
        if fields.get("resolutiondate"):
            solved_at = parse_jira_time(fields["resolutiondate"], rid, "resolutiondate")
        elif status.is_terminal and fields.get("statuscategorychangedate"):
            # "Done" with resolution null: the move into the done category is when it was solved.
            solved_at = parse_jira_time(fields["statuscategorychangedate"], rid, "statuscategorychangedate")
        slas = self._slas(rid, fields)
        first_reply = self._first_reply(rid, fields)
        tier = self._tier(rid, fields)
        reader = _History(self, record, fields, created_at, status, tier)
        history = reader.facts()
        times = summary_times(history)
        return Ticket(
            platform=PLATFORM,
            instance=instance,
            id=issue_id,
            key=key,
            url=_browse_url(data, key),
            subject=summary,
            status=status,
            priority=self._priority(rid, fields),
            created_at=created_at,
            updated_at=updated_at,
            description=adf_to_text(fields.get("description")).strip(),
            # The engine reads the replies themselves; the single time agrees with them where they are known.
            first_public_reply_at=times.get("first_public_reply_at", first_reply),
            last_public_reply_at=times.get("last_public_reply_at"),
            last_agent_action_at=times.get("last_agent_action_at"),
            solved_at=solved_at,
            requester=user_ref(fields.get("reporter")),
            organization=self._text(fields, self._organization_ref),
            segment=self._segment(fields),
            tags=tags,
            assignee_group=self._text(fields, self._group_ref),
            tier=tier,
            tier_entered_at=tier_entry(history.get("tier_changes"), tier),
            flags=self._flags(rid, fields, labels),
            platform_slas=slas,
            revision=str(fields["updated"]) if isinstance(fields["updated"], str) else updated_at.isoformat(),
            **history,
            **self._handoff_facts(reader, record, fields, tags),
        )

    def _handoff_facts(
        self, history: _History, record: RawRecord, fields: Mapping[str, Any], labels: frozenset[str]
    ) -> dict[str, Any]:
        """The handoff form's facts: internal notes' texts, the `attachment` field, the sentiment label."""
        return {
            "note_texts": _note_texts(history) if self.spec.history.comments else None,
            "attachments": _attachments(str(record.data.get("key") or record.id), fields.get("attachment")),
            "sentiment": sentiment_from_tags(labels, self.spec.sentiment) if self.spec.sentiment.tags else None,
        }

    @staticmethod
    def _required(rid: str, fields: Mapping[str, Any], name: str) -> Any:
        value = fields.get(name)
        if value is None:
            raise NormalizeError(rid, name, "missing")
        return value

    def _priority(self, rid: str, fields: Mapping[str, Any]) -> Priority:
        raw = fields.get("priority")
        if raw is None:
            return self.spec.priority.default
        name = raw.get("name") if _is_mapping(raw) else raw
        if not isinstance(name, str):
            raise NormalizeError(rid, "priority", f"unreadable priority {raw!r}")
        found = self._priorities.get(name.casefold())
        if found is None:
            raise NormalizeError(rid, "priority", f"unknown priority {name!r} (not in priority.values)")
        return found

    def _status(self, rid: str, fields: Mapping[str, Any]) -> Status:
        raw = fields.get("status")
        if not _is_mapping(raw) or not isinstance(raw.get("name"), str):
            raise NormalizeError(rid, "status", "missing or without a name")
        by_name = self._status_names.get(raw["name"].casefold())
        if by_name is not None:
            return by_name
        category = raw.get("statusCategory")
        category_key = category.get("key") if _is_mapping(category) else None
        found = self.spec.status.categories.get(category_key) if isinstance(category_key, str) else None
        if found is None and category is None:  # Jira Server 5.x: statuses carry no statusCategory
            raise NormalizeError(
                rid,
                "status",
                f"status {raw['name']!r} has no statusCategory (Jira Server 5.x?): add it to [status.names]",
            )
        if found is None:
            raise NormalizeError(
                rid, "status", f"status {raw['name']!r} (category {category_key!r}) is not in the mapping"
            )
        return found

    def _tier(self, rid: str, fields: Mapping[str, Any]) -> Tier | None:
        raw = fields.get(self.spec.tier.field)
        if raw is None:
            return None
        if not _is_mapping(raw):
            raise NormalizeError(rid, self.spec.tier.field, f"expected a select option, got {raw!r}")
        by_text = self._tier_by_text
        option = raw.get("id")  # the option's id first, then its value
        if isinstance(option, str) and option in by_text:
            return by_text[option]
        value = str(raw.get("value", "")).casefold()
        if value in by_text:
            return by_text[value]
        # An option nobody mapped (added in Jira later) is not a tier we know: treat as untiered, not fatal.
        return None

    @staticmethod
    def _text(fields: Mapping[str, Any], ref: tuple[str, dict[str, str]] | None) -> str | None:
        if ref is None:
            return None
        texts = field_texts(fields.get(ref[0]))
        if not texts:
            return None
        text = texts[0]
        return ref[1].get(text.casefold(), text)

    def _segment(self, fields: Mapping[str, Any]) -> str | None:
        """With [segment.values], a value not listed there is no segment: the field may hold anything (a Java
        toString of an approvals object on some Server sites), never to be passed through as a segment."""
        ref = self._segment_ref
        if ref is None or not ref[1]:
            return self._text(fields, ref)
        field, known = ref
        return next(
            (known[text.casefold()] for text in field_texts(fields.get(field)) if text.casefold() in known), None
        )

    def _flags(self, rid: str, fields: Mapping[str, Any], labels: list[str]) -> Flags:
        present = {label.casefold() for label in labels} if labels else set()
        if present.isdisjoint(self._label_flag_labels):
            values: dict[str, Any] = dict.fromkeys(self._label_flag_names, False)
        else:
            values = {name: not rule_labels.isdisjoint(present) for name, rule_labels in self._label_flags}
        values.update(self._unset_flags)
        for name, rule_labels, field, wanted in self._field_flags:
            values[name] = not rule_labels.isdisjoint(present) or _field_flag(rid, field, fields.get(field), wanted)
        for name, kind, field in self._number_rules:
            values[name] = _number(rid, field, fields.get(field), kind)
        return Flags(**values)

    def _slas(self, rid: str, fields: Mapping[str, Any]) -> tuple[PlatformSla, ...]:
        found = []
        for field in self._sla_fields:
            sla = _sla(rid, field, fields.get(field.field_id))
            if sla is not None:
                found.append(sla)
        return tuple(found)

    def _first_reply(self, rid: str, fields: Mapping[str, Any]) -> datetime | None:
        """The first stop of the first-response SLA is when the first public reply went out."""
        field_id = self._first_response_field
        if field_id is None:
            return None
        raw = fields.get(field_id)
        if not _is_mapping(raw):
            return None
        cycles = raw.get("completedCycles") or []
        if not cycles or not _is_mapping(cycles[0]) or "stopTime" not in cycles[0]:
            return None
        return parse_jira_time(cycles[0]["stopTime"], rid, f"{field_id}.completedCycles[0].stopTime")


class _History:
    """The history facts of one issue, from its changelog and its `comment` field.

    The changelog is `related["changelog"]` (the complete histories the connector fetched in bulk) or else the
    issue's embedded `changelog` when it is complete (`total` equals the histories shown). A field's value at
    creation is the `from` of its first change, or its current value when it never changed. Status names map
    through `status.names` (or the issue's current status when the name is the current one); other names count
    as open, so statuses that pause or close should be named there. Customers are the reporter and every author
    whose `accountType` is "customer"; apps (`accountType` "app": automation rules) are neither customers nor agents. Anything cut off or malformed leaves its facts absent (`missing_facts`).
    """

    def __init__(
        self,
        mapping: JsmMapping,
        record: RawRecord,
        fields: Mapping[str, Any],
        created: datetime,
        status: Status,
        tier: Tier | None,
    ) -> None:
        self.mapping = mapping
        self.spec = mapping.spec
        self.record = record
        self.fields = fields
        self.rid = str(record.data.get("key") or record.id)
        self.created = created
        self.status = status
        self.tier = tier
        self.reporter = user_ref(fields.get("reporter"))
        raw_status = fields.get("status")
        self.status_name = raw_status.get("name") if _is_mapping(raw_status) else None
        self._read_comments: Any = _UNREAD

    def _is_agent(self, user: Any) -> bool:
        """A person on the support side: not a customer, and not an app (Automation for Jira, integrations)."""
        if _is_mapping(user) and user.get("accountType") == "app":
            return False
        return user is not None and not self._is_customer(user)

    def _is_customer(self, user: Any) -> bool:
        if _is_mapping(user) and user.get("accountType") == "customer":
            return True
        return user_ref(user) is not None and user_ref(user) == self.reporter

    def facts(self) -> dict[str, Any]:
        history = self.spec.history
        facts: dict[str, Any] = {}
        missing: set[str] = set()
        actions: list[datetime] = []
        actions_known = True
        if history.changelog:
            changes = self._changelog()
            if changes is None:
                missing.update(("status_history", "tier_changes", "agent_actions"))
                actions_known = False
            else:
                facts["status_history"] = self._statuses(changes)
                facts["tier_changes"] = self._tiers(changes)
                priorities = self._priority_changes(changes)
                if priorities is not None:
                    facts["priority_changes"] = priorities
                for at, author, item in changes:
                    if item.get("fieldId") in ("status", history.assignee_field) and self._is_agent(author):
                        actions.append(at)
        if history.comments:
            comments = self._comments()
            if comments is None:
                missing.update(("public_replies", "internal_notes", "agent_actions"))
                actions_known = False
            else:
                replies, notes, customer = [], [], None
                public_known = True
                for at, author, public, ours in comments:
                    if self._is_customer(author):
                        if public is not False:
                            customer = at
                        continue
                    if ours or not self._is_agent(author):
                        continue
                    actions.append(at)
                    if public is None:
                        public_known = False
                    elif public:
                        replies.append(at)
                    else:
                        notes.append(at)
                facts["last_customer_message_at"] = customer
                if public_known:
                    facts.update(public_replies=tuple(replies), internal_notes=tuple(notes))
                else:
                    missing.update(("public_replies", "internal_notes"))
        if actions_known and (history.changelog or history.comments):
            facts["agent_actions"] = tuple(sorted(actions))
        if missing:
            facts["missing_facts"] = frozenset(missing)
        return facts

    def _changelog(self) -> list[tuple[datetime, Any, Mapping[str, Any]]] | None:
        """Every change item with its time and author, oldest first; None when cut off or malformed."""
        if "changelog" in self.record.related:
            histories = self.record.related["changelog"]
        else:
            embedded = self.record.data.get("changelog")
            if not _is_mapping(embedded):
                return None
            histories = embedded.get("histories")
            if not isinstance(histories, list) or embedded.get("total", len(histories)) != len(histories):
                return None
        if not isinstance(histories, list):
            return None
        found = []
        for history in histories:
            if not _is_mapping(history) or not isinstance(history.get("items"), list):
                return None
            try:
                at = parse_jira_time(history.get("created"), self.rid, "changelog.created")
            except NormalizeError:
                return None
            for item in history["items"]:
                if not _is_mapping(item):
                    return None
                found.append((at, history.get("author"), item))
        found.sort(key=lambda change: change[0])
        return found

    def _status_of(self, name: Any) -> Status:
        if isinstance(name, str):
            named = self.mapping._status_names.get(name.casefold())
            if named is not None:
                return named
            if name == self.status_name:
                return self.status
        return Status.OPEN

    def _statuses(self, changes: list[tuple[datetime, Any, Mapping[str, Any]]]) -> tuple[StatusChange, ...]:
        moves = [(at, item) for at, _, item in changes if item.get("fieldId") == "status"]
        if not moves:
            return (StatusChange(self.created, self.status),)
        result = [StatusChange(self.created, self._status_of(moves[0][1].get("fromString")))]
        result += [StatusChange(at, self._status_of(item.get("toString"))) for at, item in moves]
        return tuple(result)

    def _priority_changes(
        self, changes: list[tuple[datetime, Any, Mapping[str, Any]]]
    ) -> tuple[PriorityChange, ...] | None:
        """Priority over time from the changelog's `priority` items (`fromString` / `toString` are the names,
        as in the issue's `priority.name`); None when a name is not in priority.values (nothing to go on).
        https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-changelog-get
        """
        moves = [(at, item) for at, _, item in changes if item.get("fieldId", item.get("field")) == "priority"]
        if not moves:
            return ()
        default = self.mapping.spec.priority.default

        def level(name: Any) -> Priority | None:
            if name in (None, ""):
                return default
            return self.mapping._priorities.get(str(name).casefold())

        first = level(moves[0][1].get("fromString"))
        if first is None:
            return None
        result = [PriorityChange(self.created, first)]
        for at, item in moves:
            priority = level(item.get("toString"))
            if priority is None:
                return None
            if priority != result[-1].priority:
                result.append(PriorityChange(at, priority))
        return tuple(result)

    def _tier_of(self, item: Mapping[str, Any], side: str) -> Tier | None:
        by_text = self.mapping._tier_by_text
        option, text = item.get(side), item.get(f"{side}String")
        if isinstance(option, str) and option in by_text:
            return by_text[option]
        return by_text.get(text.casefold()) if isinstance(text, str) else None

    def _tiers(self, changes: list[tuple[datetime, Any, Mapping[str, Any]]]) -> tuple[TierChange, ...]:
        field = self.spec.tier.field
        moves = [(at, item) for at, _, item in changes if item.get("fieldId") == field]
        result = [TierChange(self.created, self._tier_of(moves[0][1], "from") if moves else self.tier)]
        for at, item in moves:
            tier = self._tier_of(item, "to")
            if (tier or Tier.L1) != (result[-1].tier or Tier.L1):
                result.append(TierChange(at, tier))
        return tuple(result)

    def _comments(self) -> list[tuple[datetime, Any, bool | None, bool]] | None:
        """(time, author, public or None when the platform does not say, ours) per comment; None when cut off.
        Read once per issue (the facts and the notes' texts both ask)."""
        if self._read_comments is _UNREAD:
            self._read_comments = self._read_comment_field()
        return self._read_comments

    def _read_comment_field(self) -> list[tuple[datetime, Any, bool | None, bool]] | None:
        raw = self.fields.get("comment")
        if not _is_mapping(raw) or not isinstance(raw.get("comments"), list):
            return None
        comments = raw["comments"]
        if raw.get("total", len(comments)) != len(comments):
            return None
        found = []
        for comment in comments:
            if not _is_mapping(comment):
                return None
            try:
                at = parse_jira_time(comment.get("created"), self.rid, "comment.created")
            except NormalizeError:
                return None
            public = comment.get("jsdPublic")
            ours = OUR_MARKER in adf_to_text(comment.get("body"))
            found.append((at, comment.get("author"), public if isinstance(public, bool) else None, ours))
        found.sort(key=lambda comment: comment[0])
        return found


def _note_texts(history: _History) -> tuple[NoteText, ...] | None:
    """The internal notes `_History.facts` counts (agents' comments with `jsdPublic` false, ours left out) with
    their text; None when the comments are cut off or do not say which are public."""
    raw = history.fields.get("comment")
    if history._comments() is None or not _is_mapping(raw):
        return None
    notes = []
    for comment in raw["comments"]:
        public = comment.get("jsdPublic")
        if not isinstance(public, bool):
            return None
        text = adf_to_text(comment.get("body"))
        author = comment.get("author")
        if public or OUR_MARKER in text or history._is_customer(author) or not history._is_agent(author):
            continue
        notes.append(NoteText(parse_jira_time(comment.get("created"), history.rid, "comment.created"), note_text(text)))
    return tuple(sorted(notes, key=lambda note: note.at))


def _attachments(rid: str, value: Any) -> tuple[Attachment, ...] | None:
    """The issue's `attachment` field (`[{self, id, filename, author, created, size, mimeType, content}]`, "Get
    issue", Jira Cloud REST API): `content` is the download link. None when the field was not returned, or is
    malformed: the list is left out of the note rather than the ticket quarantined, which would stop its clocks."""
    if not isinstance(value, list):
        return None
    files = []
    for item in value:
        if not _is_mapping(item) or not isinstance(item.get("content"), str):
            return None
        try:
            at = parse_jira_time(item["created"], rid, "attachment.created") if item.get("created") else None
        except NormalizeError:
            return None
        files.append(Attachment(str(item.get("filename") or ""), item["content"], at))
    return tuple(sorted(files, key=lambda item: item.at or datetime.min.replace(tzinfo=UTC)))


def _text_ref(ref: FieldRef | None) -> tuple[str, dict[str, str]] | None:
    """A text field as `JsmMapping._text` reads it: its id and its translations, casefolded once at load."""
    if ref is None:
        return None
    return ref.field, {raw.casefold(): value for raw, value in ref.values.items()}


def _field_flag(rid: str, field: str, raw: Any, wanted: list[str]) -> bool:
    """Whether a flag's field sets it: one of `wanted` (casefolded) among its texts, or with no values listed, a
    true scalar (through the documented true/false texts: "false" or 0 must not count as "a value is set") or
    any option, user or array present."""
    if not wanted and isinstance(raw, (bool, int, float, str)):
        return truth(rid, field, raw)
    texts = [text.casefold() for text in field_texts(raw)]
    if not wanted:
        return bool(texts)
    return any(value in texts for value in wanted)


def _number(rid: str, field: str, value: Any, kind: type) -> Any:
    if value is None:
        return kind(0)
    if _is_mapping(value):  # a select whose option values are numbers
        texts = field_texts(value)
        value = texts[0] if texts else None
        if value is None:
            return kind(0)
    return kind(finite_number(rid, field, value))


def _millis(rid: str, where: str, value: Any) -> timedelta | None:
    if value is None:
        return None
    if not _is_mapping(value) or isinstance(value.get("millis"), bool):
        raise NormalizeError(rid, where, f"expected {{millis, friendly}}, got {value!r}")
    millis = value.get("millis")
    if type(millis) is not int and not isinstance(millis, (int, float)):
        raise NormalizeError(rid, where, f"millis is not a number: {millis!r}")
    return timedelta(milliseconds=millis)


class _SlaField(NamedTuple):
    """An SLA field, its clock's name and the names its parts have in error messages, built once at load."""

    field_id: str
    name: str
    completed_cycles: str
    ongoing_cycle: str
    ongoing_breach: str
    ongoing_remaining: str
    completed_breach: str
    completed_remaining: str

    @classmethod
    def of(cls, field_id: str, name: str) -> _SlaField:
        return cls(
            field_id,
            name,
            f"{field_id}.completedCycles",
            f"{field_id}.ongoingCycle",
            f"{field_id}.ongoingCycle.breachTime",
            f"{field_id}.ongoingCycle.remainingTime",
            f"{field_id}.completedCycles.breachTime",
            f"{field_id}.completedCycles.remainingTime",
        )


def _sla(rid: str, field: _SlaField, raw: Any) -> PlatformSla | None:
    """One JSM SLA field -> PlatformSla; None when the SLA does not apply (null, or no cycles at all)."""
    if raw is None:
        return None
    if not _is_mapping(raw):
        raise NormalizeError(rid, field.field_id, f"expected an SLA object, got {type(raw).__name__}")
    ongoing = raw.get("ongoingCycle")
    completed = raw.get("completedCycles") or []
    if not isinstance(completed, list):
        raise NormalizeError(rid, field.completed_cycles, "not a list")
    if _is_mapping(ongoing):
        if not all(_is_mapping(cycle) for cycle in completed):
            # Refused as the last cycle is below: a breach recorded in it cannot be read.
            raise NormalizeError(rid, field.completed_cycles, "cycle is not an object")
        due_at = None
        breach = ongoing.get("breachTime")
        if type(breach) is dict or isinstance(breach, Mapping):
            due_at = parse_jira_time(breach, rid, field.ongoing_breach)
        return PlatformSla(
            name=field.name,
            breached=bool(ongoing.get("breached")) or any(bool(c.get("breached")) for c in completed),
            paused=bool(ongoing.get("paused")),
            remaining=_millis(rid, field.ongoing_remaining, ongoing.get("remainingTime")),
            due_at=due_at,
            completed=False,
        )
    if ongoing is not None:
        raise NormalizeError(rid, field.ongoing_cycle, "not an object")
    if not completed:
        return None
    last = completed[-1]
    if not _is_mapping(last):
        raise NormalizeError(rid, field.completed_cycles, "cycle is not an object")
    due_at = None
    breach = last.get("breachTime")
    if type(breach) is dict or isinstance(breach, Mapping):
        due_at = parse_jira_time(breach, rid, field.completed_breach)
    return PlatformSla(
        name=field.name,
        breached=any(_is_mapping(c) and bool(c.get("breached")) for c in completed),
        paused=False,
        remaining=_millis(rid, field.completed_remaining, last.get("remainingTime")),
        due_at=due_at,
        completed=True,
    )


def _browse_url(data: Mapping[str, Any], key: str) -> str:
    """The agent view of the issue, on the host the issue's `self` link names."""
    self_url = data.get("self")
    if isinstance(self_url, str) and "/rest/" in self_url:
        return f"{self_url.split('/rest/', 1)[0]}/browse/{key}"
    return f"/browse/{key}"


def load(path: Path) -> JsmMapping:
    """Load and validate a JSM mapping file; every problem is a MappingError naming file, line and key."""
    spec, _ = load_spec(JsmMappingFile, Path(path))
    return JsmMapping(spec, path)
