"""The escalation policy: schema, loading from the `[policy]` table of the config, and compiling rules.

Policy is data admins edit, so everything here is about failing early and clearly: the TOML is validated with
pydantic through engine.configfile (errors name file, line and key), cross references (calendar names) are
checked, and every rule condition is compiled with CEL at load. A CEL syntax error names the rule, the
position inside the condition and the file line; a condition that reads an unknown fact fails the same way.

Fact vocabulary (what a rule condition can read; all facts always exist, so no `has()` is needed):

  ticket.priority        string  "P1".."P4"           ticket.priority_rank   int     1 (P1) .. 4 (P4)
  ticket.status          string  new, open, pending, on_hold, solved, closed, deleted
  ticket.tier            string  "L1".."L4" (L1 when the platform shows none)
  ticket.tier_rank       int     1..4                 ticket.is_open         bool    not solved/closed/deleted
  ticket.segment         string  "" when unknown      ticket.organization    string  "" when unknown
  ticket.assignee_group  string  "" when unknown      ticket.platform        string  zendesk, jsm, servicenow
  ticket.tags            list of strings              ticket.age_hours       double  wall hours since created
  ticket.has_public_reply bool   an agent replied publicly at least once
  flags.churn_threat, flags.public_complaint, flags.security_legal, flags.engineering_required,
  flags.vendor_dependency, flags.customer_requested                                       bool
  flags.revenue_at_risk  double  flags.affected_customers, flags.linked_incidents, flags.reopen_count  int
  hours_at_tier          double  business hours at the current tier (calendar of the priority, pauses left out)
  clocks.<clock>.state   string  ok, at_risk, breached, paused, met, unknown, or "none" when the ticket has no such clock
  clocks.<clock>.elapsed_minutes / .remaining_minutes / .target_minutes  double (remaining < 0: overdue)
  clocks.<clock>.active  bool    the ticket has this clock
      <clock> is one of: first_response, resolution, customer_update, acknowledgment, assessment,
      mgmt_acknowledgment, mgmt_executive_notification, mgmt_customer_contact, mgmt_resolution_plan,
      mgmt_update
  any_clock_breached, any_clock_at_risk  bool   (customer_update excluded: it signals update_due instead)
  history.customer_escalations_30d  int      history.tier_entries  int (escalations recorded for the ticket)
  history.management_active  bool  a management track started earlier and has not ended
  platform_slas.any_breached bool  platform_slas.breached  list of names (JSM / ServiceNow own SLAs)
  thresholds.<name>      double  the numbers of [policy.thresholds], inlined into the condition at load

Types matter in arithmetic (CEL does not coerce: `flags.reopen_count + 1.0` fails) but not in comparisons.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from difflib import get_close_matches
from pathlib import Path
from string import Template
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cel
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.calendar import BusinessCalendar, weekly_from_spec
from engine.configfile import ConfigFileError, load_toml, locate, validate
from engine.model import Priority, Tier

CLOCK_NAMES = (
    "first_response",
    "resolution",
    "customer_update",
    "acknowledgment",
    "assessment",
    "mgmt_acknowledgment",
    "mgmt_executive_notification",
    "mgmt_customer_contact",
    "mgmt_resolution_plan",
    "mgmt_update",
)
CLOCK_FIELDS: dict[str, Any] = {
    "state": "ok",
    "elapsed_minutes": 0.0,
    "remaining_minutes": 0.0,
    "target_minutes": 0.0,
    "active": False,
}
BOOL_FLAGS = (
    "churn_threat",
    "public_complaint",
    "security_legal",
    "engineering_required",
    "vendor_dependency",
    "customer_requested",
)
_TICKET_FACTS: dict[str, Any] = {
    "priority": "P3",
    "priority_rank": 3,
    "status": "open",
    "tier": "L1",
    "tier_rank": 1,
    "is_open": True,
    "segment": "",
    "organization": "",
    "assignee_group": "",
    "platform": "",
    "tags": [],
    "age_hours": 0.0,
    "has_public_reply": False,
}


def _fact_samples() -> dict[str, Any]:
    """Every fact path with a sample value of its type: the vocabulary, used to check rules at load."""
    facts: dict[str, Any] = {f"ticket.{name}": value for name, value in _TICKET_FACTS.items()}
    facts.update({f"flags.{name}": False for name in BOOL_FLAGS})
    facts["flags.revenue_at_risk"] = 0.0
    for name in ("affected_customers", "linked_incidents", "reopen_count"):
        facts[f"flags.{name}"] = 0
    facts["hours_at_tier"] = 0.0
    for clock in CLOCK_NAMES:
        for field_name, value in CLOCK_FIELDS.items():
            facts[f"clocks.{clock}.{field_name}"] = value
    facts["any_clock_breached"] = False
    facts["any_clock_at_risk"] = False
    facts["history.customer_escalations_30d"] = 0
    facts["history.tier_entries"] = 0
    facts["history.management_active"] = False
    facts["platform_slas.any_breached"] = False
    facts["platform_slas.breached"] = []
    return facts


FACTS: dict[str, Any] = _fact_samples()
_ROOTS = frozenset(path.split(".")[0] for path in FACTS) | {"thresholds"}


def flat_name(path: str) -> str:
    """The CEL variable a fact path becomes after rewriting ("clocks.resolution.state" -> "clocks__resolution__state")."""
    return path.replace(".", "__")


# -- schema (what the TOML may say) ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalendarModel(_Strict):
    timezone: str = "UTC"
    hours: dict[str, list[str]] = Field(default_factory=dict)
    always_open: bool = False
    union: list[str] = Field(default_factory=list)
    holidays_country: str | None = None
    holidays_subdivision: str | None = None
    custom_holidays: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        weekly_from_spec(value)  # raises ValueError with the offending range
        return value

    @model_validator(mode="after")
    def _shape(self) -> CalendarModel:
        shapes = sum((self.always_open, bool(self.union), bool(self.hours)))
        if shapes != 1:
            raise ValueError("a calendar needs exactly one of: hours, always_open = true, union = [...]")
        return self


class SlaModel(_Strict):
    calendar: str | None = None
    first_response_hours: float = Field(ge=0)
    resolution_hours: float = Field(ge=0)
    customer_update_hours: float = Field(default=0, ge=0)


class TierModel(_Strict):
    label: str
    acknowledgment_minutes: float = Field(default=0, ge=0)
    assessment_minutes: float = Field(default=0, ge=0)


class ManagementModel(_Strict):
    calendar: str | None = None
    acknowledgment_minutes: float = Field(default=30, ge=0)
    executive_notification_minutes: float = Field(default=60, ge=0)
    customer_contact_minutes: float = Field(default=120, ge=0)
    resolution_plan_minutes: float = Field(default=240, ge=0)
    update_interval_hours: float = Field(default=24, ge=0)
    resolution_plan_tag: str = Field(default="esc_resolution_plan", min_length=1)
    end_after_quiet_hours: float = Field(default=0, ge=0)


class RuleModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    when: str = Field(min_length=1)
    tier: Literal["L1", "L2", "L3", "L4", "next"] | None = None
    management: bool = False
    deescalate: bool = False
    reason: str | None = None

    @model_validator(mode="after")
    def _target(self) -> RuleModel:
        if self.tier is None and not self.management:
            raise ValueError('a rule needs a target: tier = "L2" (or "next") and/or management = true')
        if self.deescalate and self.tier in (None, "next"):
            raise ValueError('a de-escalation rule (deescalate = true) needs a fixed tier to lower to, such as "L1"')
        return self


DEFAULT_TEMPLATE = """\
Escalation handoff: $ticket
Priority: $priority
Escalated from $from_tier to $to_tier at $time
Path: $path
Management escalation: $management
SLA:
$sla
Customer's description:
$description
Impact: $impact
Troubleshooting steps taken (internal notes):
$notes
Attachments: $attachments
Last customer communication: $last_contact
Customer notified of the escalation: $customer_notified
Customer sentiment: $sentiment
Relationship: $relationship
Why:
$rules
Receiving tier must:
$todo
Management must:
$management_todo
Deadlines already past:
$past_deadlines
Acceptance (received by / when):
$acceptance"""


HANDOFF_PLACEHOLDERS = frozenset(
    (
        "ticket",
        "priority",
        "from_tier",
        "to_tier",
        "time",
        "management",
        "sla",
        "description",
        "impact",
        "rules",
        "todo",
        "path",
        "notes",
        "attachments",
        "last_contact",
        "customer_notified",
        "sentiment",
        "relationship",
        "management_todo",
        "past_deadlines",
        "acceptance",
    )
)
"""The `$names` a handoff template may use (engine/handoff.py fills exactly these). Any other name would be
empty in every note, and its line silently dropped: refused at load instead."""


class HandoffModel(_Strict):
    template: str = DEFAULT_TEMPLATE
    description_lines: int = Field(default=5, ge=0)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return CalendarModel._zone(value)


class PolicyModel(_Strict):
    allow_deescalation: bool = False
    at_risk_fraction: float = Field(default=0.75, gt=0, le=1)
    default_calendar: str
    calendars: dict[str, CalendarModel]
    sla: dict[Priority, SlaModel]
    tiers: dict[Tier, TierModel]
    management: ManagementModel = Field(default_factory=ManagementModel)
    thresholds: dict[str, float] = Field(default_factory=dict)
    rules: list[RuleModel] = Field(default_factory=list)
    handoff: HandoffModel = Field(default_factory=HandoffModel)

    @field_validator("sla")
    @classmethod
    def _all_priorities(cls, value: dict[Priority, SlaModel]) -> dict[Priority, SlaModel]:
        missing = [p.value for p in Priority if p not in value]
        if missing:
            raise ValueError(f"missing SLA targets for {', '.join(missing)}")
        return value

    @field_validator("tiers")
    @classmethod
    def _all_tiers(cls, value: dict[Tier, TierModel]) -> dict[Tier, TierModel]:
        missing = [t.value for t in Tier if t not in value]
        if missing:
            raise ValueError(f"missing tier definitions for {', '.join(missing)}")
        return value


# -- the compiled policy the engine uses ------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaTargets:
    calendar: BusinessCalendar
    first_response: timedelta
    resolution: timedelta
    customer_update: timedelta
    """Zero means "not tracked"."""


@dataclass(frozen=True)
class TierPolicy:
    label: str
    acknowledgment: timedelta
    assessment: timedelta


@dataclass(frozen=True)
class ManagementPolicy:
    calendar: BusinessCalendar
    acknowledgment: timedelta
    executive_notification: timedelta
    customer_contact: timedelta
    resolution_plan: timedelta
    update_interval: timedelta
    resolution_plan_tag: str = "esc_resolution_plan"
    """The tag a person sets once the resolution plan is delivered: stops the resolution plan clock."""
    end_after_quiet_hours: timedelta = timedelta(0)
    """The track ends this long after the resolution plan, once no management rule fires (zero: never)."""


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    when: str
    program: Any = field(repr=False, compare=False)
    """The compiled CEL program over flattened fact names (see `flat_name`)."""
    facts: tuple[str, ...]
    """Fact paths the condition reads, in order of first appearance (thresholds excluded)."""
    tier: Tier | Literal["next"] | None
    management: bool
    reason: str | None
    deescalate: bool = False
    """Meant to lower the tier: only such rules may, and only when the policy allows de-escalation."""
    reason_facts: tuple[str, ...] = ()
    """Facts the reason template shows besides those of the condition."""
    direct: str | None = None
    """Set when the condition is one boolean fact (`flags.churn_threat`): read in Python, no CEL round trip."""
    shown: Any = field(default=None, repr=False, compare=False)
    """Picks this rule's facts (condition and reason) out of a dict of shown values: the outcome cache key."""


@dataclass(frozen=True)
class Policy:
    calendars: dict[str, BusinessCalendar]
    sla: dict[Priority, SlaTargets]
    tiers: dict[Tier, TierPolicy]
    management: ManagementPolicy
    rules: tuple[Rule, ...]
    thresholds: dict[str, float]
    at_risk_fraction: float = 0.75
    allow_deescalation: bool = False
    handoff_template: str = DEFAULT_TEMPLATE
    description_lines: int = 5
    handoff_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    outcome_cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Memo of rule outcomes (engine.escalate.run_rules); a pure function's cache, never changes a result."""
    fact_paths: tuple[str, ...] = ()
    """Union of the facts all rules and reasons read: the engine computes only these."""
    cel_paths: tuple[str, ...] = ()
    """The facts the conditions read: only these are converted into CEL values."""
    cel_names: tuple[tuple[str, str], ...] = ()
    """(CEL variable, fact path) for each of cel_paths, precomputed for the per-ticket activation."""


# -- loading ----------------------------------------------------------------------------------------------------


def load_policy(path: Path) -> Policy:
    """Read and compile the `[policy]` table of a config file. Raises ConfigFileError."""
    data, text = load_toml(path)
    if "policy" not in data:
        raise ConfigFileError(path, "no [policy] table (see config.example.toml)")
    return _build(data["policy"], str(path), text)


def policy_from_dict(data: dict[str, Any], path: str = "<policy>", text: str = "") -> Policy:
    """Compile a policy given as the contents of the `[policy]` table; `text`, the file it came from, lets
    errors name their line (the daemon's config loader has already read the file)."""
    return _build(data, path, text)


def _error(path: str, text: str, loc: tuple[str | int, ...], reason: str, line: int | None = None) -> ConfigFileError:
    key = ".".join(str(part) for part in loc)
    return ConfigFileError(path, reason, key=key, line=line if line is not None else locate(text, loc))


def _template_problems(template: str, path: str, text: str) -> list[ConfigFileError]:
    """Every placeholder of the handoff template that engine/handoff.py does not fill, at its own line."""
    loc: tuple[str | int, ...] = ("policy", "handoff", "template")
    start = locate(text, loc)
    lines = text.splitlines()
    # A multi-line string opened by `"""` at the end of the key's line starts on the next line.
    first = start + 1 if start and lines[start - 1].rstrip().endswith(('"""', "'''")) else start
    problems = []
    for offset, line in enumerate(template.splitlines()):
        # A `$` that starts no name ("$5", "$ ") is shown as it is, as engine/handoff.py renders it.
        for name in Template(line).get_identifiers():
            if name in HANDOFF_PLACEHOLDERS:
                continue
            close = get_close_matches(name, HANDOFF_PLACEHOLDERS, n=1)
            hint = f"did you mean ${close[0]}? " if close else ""
            known = ", ".join("$" + known for known in sorted(HANDOFF_PLACEHOLDERS))
            reason = f"unknown placeholder ${name}: {hint}(known: {known}); its line would be dropped from every note"
            problems.append(_error(path, text, loc, reason, line=first + offset if first else None))
    return problems


def _build(data: dict[str, Any], path: str, text: str) -> Policy:
    model = validate(PolicyModel, data, path, text, base=("policy",))
    template_problems = _template_problems(model.handoff.template, path, text)
    if template_problems:
        raise template_problems[0].with_more(template_problems[1:])
    calendars = _calendars(model, path, text)

    def calendar(name: str | None, loc: tuple[str | int, ...]) -> BusinessCalendar:
        chosen = name or model.default_calendar
        if chosen not in calendars:
            raise _error(path, text, loc, f"unknown calendar {chosen!r}; defined: {', '.join(sorted(calendars))}")
        return calendars[chosen]

    calendar(model.default_calendar, ("policy", "default_calendar"))
    sla = {
        priority: SlaTargets(
            calendar=calendar(item.calendar, ("policy", "sla", priority.value, "calendar")),
            first_response=timedelta(hours=item.first_response_hours),
            resolution=timedelta(hours=item.resolution_hours),
            customer_update=timedelta(hours=item.customer_update_hours),
        )
        for priority, item in model.sla.items()
    }
    tiers = {
        tier: TierPolicy(
            label=item.label,
            acknowledgment=timedelta(minutes=item.acknowledgment_minutes),
            assessment=timedelta(minutes=item.assessment_minutes),
        )
        for tier, item in model.tiers.items()
    }
    mgmt = model.management
    management = ManagementPolicy(
        calendar=calendar(mgmt.calendar, ("policy", "management", "calendar")),
        acknowledgment=timedelta(minutes=mgmt.acknowledgment_minutes),
        executive_notification=timedelta(minutes=mgmt.executive_notification_minutes),
        customer_contact=timedelta(minutes=mgmt.customer_contact_minutes),
        resolution_plan=timedelta(minutes=mgmt.resolution_plan_minutes),
        update_interval=timedelta(hours=mgmt.update_interval_hours),
        resolution_plan_tag=mgmt.resolution_plan_tag,
        end_after_quiet_hours=timedelta(hours=mgmt.end_after_quiet_hours),
    )
    rules = _rules(model, path, text)
    cel_paths: list[str] = []
    for rule in rules:
        if rule.direct:
            continue
        cel_paths.extend(fact for fact in rule.facts if fact not in cel_paths)
    paths = list(cel_paths)
    for rule in rules:
        paths.extend(fact for fact in (*rule.facts, *rule.reason_facts) if fact not in paths)
    return Policy(
        calendars=calendars,
        sla=sla,
        tiers=tiers,
        management=management,
        rules=rules,
        thresholds=dict(model.thresholds),
        at_risk_fraction=model.at_risk_fraction,
        allow_deescalation=model.allow_deescalation,
        handoff_template=model.handoff.template,
        description_lines=model.handoff.description_lines,
        handoff_zone=ZoneInfo(model.handoff.time_zone),
        fact_paths=tuple(paths),
        cel_paths=tuple(cel_paths),
        cel_names=tuple((flat_name(path), path) for path in cel_paths),
    )


def _calendars(model: PolicyModel, path: str, text: str) -> dict[str, BusinessCalendar]:
    built: dict[str, BusinessCalendar] = {}
    # Zone and 24x7 calendars first, then follow-the-sun unions of them.
    for name, spec in sorted(model.calendars.items(), key=lambda item: bool(item[1].union)):
        loc: tuple[str | int, ...] = ("policy", "calendars", name)
        try:
            if spec.always_open:
                built[name] = BusinessCalendar.always(name)
            elif spec.union:
                missing = [member for member in spec.union if member not in built]
                if missing:
                    raise _error(path, text, (*loc, "union"), f"unknown or follow-the-sun member calendar(s) {missing}")
                built[name] = BusinessCalendar.union(name, [built[member] for member in spec.union])
            else:
                built[name] = BusinessCalendar(
                    name,
                    spec.timezone,
                    weekly_from_spec(spec.hours),
                    holiday_country=spec.holidays_country,
                    holiday_subdivision=spec.holidays_subdivision,
                    custom_holidays=spec.custom_holidays,
                )
        except (ValueError, NotImplementedError, KeyError) as error:
            if isinstance(error, ConfigFileError):
                raise
            raise _error(path, text, loc, str(error).strip("'\"")) from None
    return built


# -- rule compilation -------------------------------------------------------------------------------------------

_STRING = re.compile(r"""[rRbB]{0,2}('''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")""", re.S)
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+[uU]?|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[uU]?|\.\d+(?:[eE][+-]?\d+)?")
_CHAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*")
_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*([^\n]*)")


@dataclass(frozen=True)
class _Rewritten:
    source: str
    facts: tuple[str, ...]


class _FactError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def rewrite(source: str, thresholds: dict[str, float]) -> _Rewritten:
    """Replace fact paths by flat variable names and thresholds by literals; collect the facts read.

    Why: converting a nested Python dict into CEL values costs about a microsecond per value, so the engine
    hands CEL only the facts the rules read, as flat variables, and never the constant thresholds.
    Raises _FactError (with the offset in `source`) for an unknown fact or threshold.
    """
    out: list[str] = []
    facts: list[str] = []
    position = 0
    length = len(source)
    while position < length:
        char = source[position]
        string = None
        if char in "'\"" or (char in "rRbB" and _is_prefixed_string(source, position)):
            string = _STRING.match(source, position)
        if string:
            out.append(string.group(0))
            position = string.end()
            continue
        if char.isdigit() or (char == "." and position + 1 < length and source[position + 1].isdigit()):
            number = _NUMBER.match(source, position)
            if number:
                out.append(number.group(0))
                position = number.end()
                continue
        chain = _CHAIN.match(source, position) if (char.isalpha() or char == "_") else None
        if chain is None:
            out.append(char)
            position += 1
            continue
        parts = [part.strip() for part in chain.group(0).split(".")]
        preceded_by_dot = source[:position].rstrip().endswith(".")
        if preceded_by_dot or parts[0] not in _ROOTS:
            out.append(chain.group(0))
            position = chain.end()
            continue
        out.append(_replace_chain(parts, thresholds, facts, position))
        position = chain.end()
    return _Rewritten("".join(out), tuple(facts))


def _is_prefixed_string(source: str, position: int) -> bool:
    """`r'..'` / `b".."` are string literals only when the prefix is not the tail of an identifier."""
    before = source[position - 1] if position else " "
    if before.isalnum() or before == "_":
        return False
    rest = source[position : position + 3]
    index = 0
    while index < len(rest) and rest[index] in "rRbB":
        index += 1
    return index < len(rest) and rest[index] in "'\""


def _replace_chain(parts: list[str], thresholds: dict[str, float], facts: list[str], offset: int) -> str:
    if parts[0] == "thresholds":
        if len(parts) < 2 or parts[1] not in thresholds:
            known = ", ".join(sorted(thresholds)) or "none defined"
            name = parts[1] if len(parts) > 1 else ""
            raise _FactError(f"unknown threshold {name!r} (known: {known})", offset)
        rest = ".".join(parts[2:])
        return repr(float(thresholds[parts[1]])) + ("." + rest if rest else "")
    for size in range(len(parts), 0, -1):
        path = ".".join(parts[:size])
        if path in FACTS:
            if path not in facts:
                facts.append(path)
            rest = ".".join(parts[size:])
            return flat_name(path) + ("." + rest if rest else "")
    raise _FactError(f"unknown fact {'.'.join(parts)!r}{_hint(parts)}", offset)


def _hint(parts: list[str]) -> str:
    prefix = parts[0] + "."
    if parts[0] == "clocks" and len(parts) > 1 and parts[1] not in CLOCK_NAMES:
        return f" (clocks are: {', '.join(CLOCK_NAMES)})"
    options = sorted(path[len(prefix) :] for path in FACTS if path.startswith(prefix))
    if parts[0] == "clocks":
        options = sorted(CLOCK_FIELDS)
    return f" (known under {parts[0]}: {', '.join(options)})" if options else ""


def _position(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _rules(model: PolicyModel, path: str, text: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, spec in enumerate(model.rules):
        loc: tuple[str | int, ...] = ("policy", "rules", index)
        if spec.name in seen:
            raise _error(path, text, (*loc, "name"), f"duplicate rule name {spec.name!r}")
        seen.add(spec.name)
        rules.append(_compile_rule(spec, model.thresholds, path, text, loc))
    return tuple(rules)


def _when_line(text: str, loc: tuple[str | int, ...], cel_line: int) -> int | None:
    """The file line of line `cel_line` of a rule's `when`, counting into a multi-line string."""
    line = locate(text, (*loc, "when"))
    if line is None:
        return None
    raw = text.splitlines()[line - 1]
    starts_block = raw.rstrip().endswith(('"""', "'''"))
    return line + cel_line - (0 if starts_block else 1)


def _compile_rule(
    spec: RuleModel, thresholds: dict[str, float], path: str, text: str, loc: tuple[str | int, ...]
) -> Rule:
    when_loc = (*loc, "when")

    def fail(reason: str, cel_line: int | None = None, column: int | None = None) -> ConfigFileError:
        where = f" at {cel_line}:{column}" if cel_line is not None else ""
        line = _when_line(text, loc, cel_line or 1) if text else None
        return _error(path, text, when_loc, f"rule {spec.name!r}: condition{where}: {reason}", line=line)

    try:
        cel.compile(spec.when)
    except ValueError as error:
        found = _CEL_POSITION.search(str(error))
        if found:
            raise fail(found.group(3), int(found.group(1)), int(found.group(2))) from None
        raise fail(str(error)) from None
    try:
        rewritten = rewrite(spec.when, thresholds)
    except _FactError as error:
        line, column = _position(spec.when, error.offset)
        raise fail(str(error), line, column) from None
    try:
        program = cel.compile(rewritten.source)
    except ValueError as error:
        raise fail(
            f"cannot be used with facts ({_first_line(error)}); has() is not needed: facts always exist"
        ) from None
    sample = {flat_name(fact): FACTS[fact] for fact in rewritten.facts}
    try:
        result = program.execute(cel.Context(sample))
    except Exception as error:  # the CEL runtime raises RuntimeError, TypeError, ValueError
        raise fail(_first_line(error)) from None
    if not isinstance(result, bool):
        raise fail(f"must be true or false, gives {type(result).__name__} {result!r}")
    tier: Tier | Literal["next"] | None = None
    if spec.tier == "next":
        tier = "next"
    elif spec.tier is not None:
        tier = Tier(spec.tier)
    reason_facts: list[str] = []
    if "{hours_at_tier_text}" in (spec.reason or "") and "hours_at_tier" not in rewritten.facts:
        reason_facts.append("hours_at_tier")
    for name in re.findall(r"\{([^{}]+)\}", spec.reason or ""):
        if name in FACTS:
            reason_facts.append(name)
        elif name not in _REASON_EXTRAS and not (name.startswith("thresholds.") and name[11:] in thresholds):
            raise _error(path, text, (*loc, "reason"), f"rule {spec.name!r}: unknown name {{{name}}} in reason")
    return Rule(
        name=spec.name,
        description=spec.description,
        when=spec.when,
        program=program,
        facts=rewritten.facts,
        tier=tier,
        management=spec.management,
        reason=spec.reason,
        deescalate=spec.deescalate,
        reason_facts=tuple(reason_facts),
        shown=_picker((*rewritten.facts, *reason_facts)),
        direct=_direct_fact(rewritten),
    )


def _direct_fact(rewritten: _Rewritten) -> str | None:
    if len(rewritten.facts) == 1 and rewritten.source.strip() == flat_name(rewritten.facts[0]):
        path = rewritten.facts[0]
        return path if isinstance(FACTS[path], bool) else None
    return None


def _picker(paths: tuple[str, ...]) -> Any:
    if not paths:
        return lambda values: ()
    getter = operator.itemgetter(*paths)
    return getter if len(paths) > 1 else lambda values: (getter(values),)


_REASON_EXTRAS = frozenset({"hours_at_tier_text", "target_tier"})
"""Names a reason template may use besides facts and thresholds."""


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
