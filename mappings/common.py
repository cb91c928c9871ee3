"""Schema pieces and loading every platform's mapping file shares: strictness, flag sources, tag names."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from engine.configfile import ConfigFileError, load_toml, validate
from engine.model import TagScheme, Tier, TierChange
from mappings import MappingError, NormalizeError


class Strict(BaseModel):
    """Refuse unknown keys: a typo in a mapping file must fail at load, not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Spec = TypeVar("Spec", bound=BaseModel)


def load_spec(model: type[Spec], path: Path) -> tuple[Spec, str]:
    """Read and validate a mapping file; the text comes back for cross-checks that point at a line."""
    try:
        data, text = load_toml(path)
        return validate(model, data, path, text), text
    except ConfigFileError as error:
        raise MappingError(error.path, error.reason, key=error.key, line=error.line, more=error.problems[1:]) from None


BoolRule = TypeVar("BoolRule", bound=BaseModel)
NumberRule = TypeVar("NumberRule", bound=BaseModel)


class FlagSources(Strict, Generic[BoolRule, NumberRule]):
    """Where each of engine.model.Flags comes from; each platform says how a source is described."""

    churn_threat: BoolRule | None = None
    public_complaint: BoolRule | None = None
    security_legal: BoolRule | None = None
    engineering_required: BoolRule | None = None
    vendor_dependency: BoolRule | None = None
    customer_requested: BoolRule | None = None
    revenue_at_risk: NumberRule | None = None
    affected_customers: NumberRule | None = None
    linked_incidents: NumberRule | None = None
    reopen_count: NumberRule | None = None


class TagNames(Strict):
    """Tag names the engine's signals become (see engine.model.TagScheme); `{clock}` names the clock, `{tier}`
    the tier of a tier clock (acknowledgment, assessment)."""

    breached: str = TagScheme.breached
    at_risk: str = TagScheme.at_risk
    management: str = TagScheme.management
    update_due: str = TagScheme.update_due
    tier_breached: str = TagScheme.tier_breached
    tier_at_risk: str = TagScheme.tier_at_risk

    @field_validator("breached", "at_risk", "management", "update_due", "tier_breached", "tier_at_risk")
    @classmethod
    def _well_formed(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name in ("breached", "at_risk", "tier_breached", "tier_at_risk") and "{clock}" not in value:
            raise ValueError("must contain {clock}, one tag per SLA clock")
        if info.field_name in ("tier_breached", "tier_at_risk") and "{tier}" not in value:
            raise ValueError("must contain {tier}, so that L2's breach can be told from L3's")
        if any(character.isspace() for character in value):
            # Zendesk tags, Jira labels and most list fields split on whitespace: a tag with a space would
            # come back as two, and we would never recognise our own tag again.
            raise ValueError("a tag cannot contain spaces")
        return value

    def scheme(self) -> TagScheme:
        return TagScheme(
            breached=self.breached,
            at_risk=self.at_risk,
            management=self.management,
            update_due=self.update_due,
            tier_breached=self.tier_breached,
            tier_at_risk=self.tier_at_risk,
        )


def tier_entry(changes: tuple[TierChange, ...] | None, tier: Tier | None) -> datetime | None:
    """When the ticket last entered `tier` according to its tier history (None: no history, or it lags).

    The mapping's `tier_entered_at` estimate, made exact: what `explain` shows next to the tier. The engine reads
    the history itself (engine.escalate.tier_started_at); this only keeps the two in agreement.
    """
    if changes is None:
        return None
    current = tier or Tier.L1
    entered: datetime | None = None
    previous: Tier | None = None
    for change in sorted(changes, key=lambda change: change.at):
        level = change.tier or Tier.L1
        if level != previous:
            entered, previous = (change.at if level == current else None), level
    return entered


def summary_times(history: dict[str, Any]) -> dict[str, datetime]:
    """The single-time facts (first and last public reply, last agent action) the history implies, for the
    fields that predate it (`explain` shows them, `ticket.has_public_reply` reads the first reply): only those
    the history holds, so a mapping keeps its own estimate where the history is absent."""
    times: dict[str, datetime] = {}
    replies = history.get("public_replies")
    if replies:
        times["first_public_reply_at"] = min(replies)
        times["last_public_reply_at"] = max(replies)
    actions = history.get("agent_actions")
    if actions:
        times["last_agent_action_at"] = max(actions)
    return times


# -- values at the edge -----------------------------------------------------------------------------------------

TRUE_TEXTS = frozenset({"true", "yes", "y", "1", "on", "checked", "x"})
"""Texts a boolean field may hold that read as true (case and surrounding spaces ignored)."""
FALSE_TEXTS = frozenset({"", "false", "no", "n", "0", "off", "unchecked", "none", "null"})
"""Texts that read as false. A number written as text ("0.0", "1") reads as its value; any other text is not a
boolean at all and quarantines the record: guessing "true" for it once started management tracks."""


def _quoted(value: Any) -> str:
    """A bad value for an error message, cut short (a 1 MB field must not make a 1 MB log line)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_EXACT_INT = 2**53
"""Integers up to this size become floats exactly and never overflow; a larger one goes the checked way."""


def finite_number(record_id: str, field: str, value: Any) -> float:
    """A number from a JSON number or its text; NaN and infinities ("1e999" overflows to one) are refused:
    `inf` revenue at risk once started the management track ("revenue at risk inf")."""
    # Fast paths for what fields hold (a JSON number, or digits as text: ServiceNow counts), the same value
    # as below; anything else, and any number that is not finite, goes the checked way.
    if type(value) is float and math.isfinite(value):
        return value
    if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:  # a count, as a JSON integer
        return float(value)
    if type(value) is str and value.isascii() and value.isdigit():
        number = float(value)
        if math.isfinite(number):
            return number
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NormalizeError(record_id, field, f"not a number: {_quoted(value)}")
    try:
        number = float(value.replace(",", "").strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise NormalizeError(record_id, field, f"not a number: {_quoted(value)}") from None
    if not math.isfinite(number):
        raise NormalizeError(record_id, field, f"not a finite number: {_quoted(value)}")
    return number


def whole_number(record_id: str, field: str, value: Any) -> int:
    """A count (affected customers, reopens): a finite number, truncated."""
    return int(finite_number(record_id, field, value))


def truth(record_id: str, field: str, value: Any) -> bool:
    """A boolean from what a checkbox or flag field holds: JSON booleans, finite numbers (0 is false), the texts
    in TRUE_TEXTS / FALSE_TEXTS or a number as text, null, an empty object or list (false) and a non-empty list
    (a multi-select with options: true). Anything else is refused with the field named."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return finite_number(record_id, field, value) != 0
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, dict) and not value:
        return False
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXTS:
            return True
        if text in FALSE_TEXTS:
            return False
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number != 0
    raise NormalizeError(record_id, field, f"not a boolean (expected true/false, yes/no, 1/0): {_quoted(value)}")


NOTE_TEXT_CHARS = 500
"""An internal note's text is kept this long for the handoff's troubleshooting summary (which cuts it shorter):
a summary needs the first words, and a ticket's whole notes would sit in memory for every ticket of a page."""


def note_text(text: str) -> str:
    """A note's text on one line, cut to NOTE_TEXT_CHARS."""
    flat = " ".join(text.split())
    return flat[:NOTE_TEXT_CHARS]


class SentimentMap(Strict):
    """Which tags (labels) carry the customer's sentiment, and what the handoff shows for each. Empty by default:
    no platform has a standard sentiment tag, and a sentiment nobody set is never guessed."""

    tags: dict[str, str] = {}


def sentiment_from_tags(tags: frozenset[str], spec: SentimentMap) -> str | None:
    """The first mapped tag the ticket carries (in the mapping's order), shown with the tag it came from."""
    for tag, shown in spec.tags.items():
        if tag in tags:
            return f"{shown} (tag {tag})"
    return None
