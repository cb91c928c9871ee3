"""plan(decision, observed, tags) -> WriteBack: only the difference between desired and observed.

The engine's Decision is the desired state; the observed Ticket is what the platform shows now. Writing only
the difference is what makes the daemon idempotent: the echo of our own write, a second poll of the same ticket
or a replay after a crash all plan an empty WriteBack. Tags we do not manage (`TagScheme.is_managed`) are never
touched, and neither are the tags of a clock that is UNKNOWN now (its facts cannot be read this time: the event
book catching up after a restart, unreadable comments, a missing history row): not knowing is not evidence, so
a breach tag written earlier stays rather than being removed now and written back once the facts return. So do
the breach tags of earlier stays at other tiers while the tier history is missing (`tier_changes` in the ticket's
`missing_facts`): the engine keeps them only from a known history, and a read without it (a Zendesk export page of
a ticket older than the followed event export) must not undo what a read with it (the ticket's audits) found. The
one event-like output, the handoff comment, is planned only when the tier actually changes on the platform or
the management track newly starts (its tag is not there yet); its idempotency key lets the ledger catch any
remaining duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from engine.escalate import signals_for
from engine.model import Clock, ClockState, Decision, Status, TagScheme, TagSignal, Ticket, Tier, WriteBack

_READ_ONLY = frozenset({Status.CLOSED, Status.DELETED})
_RANK = {tier: tier.rank for tier in Tier}
"""Tier.rank as a dict: the property parses the enum value on every call, and a plan compares ranks often."""
_UNKNOWN, _BREACHED, _AT_RISK = ClockState.UNKNOWN, ClockState.BREACHED, ClockState.AT_RISK
_NOTHING: frozenset[str] = frozenset()
_SOME_MOMENT = datetime(2000, 1, 1, tzinfo=UTC)
"""A breach instant for `_unknown_tags`' hypothetical clock: only whether it is set matters to `signals_for`."""


@lru_cache(maxsize=4096)
def _render(tags: TagScheme, signals: frozenset[TagSignal]) -> frozenset[str]:
    return frozenset(tags.render(signal) for signal in signals)


@lru_cache(maxsize=64)
def _manages(tags: TagScheme) -> Callable[[str], bool]:
    """`tags.is_managed` as a test compiled once per scheme (same patterns, same answers).

    Why not memoize by tag: tickets carry every tag people invent, so such a memo fills up with entries the
    garbage collector has to walk, while this test is one regular-expression match.
    """
    return tags.matcher()


@lru_cache(maxsize=1024)
def _unknown_tags(tags: TagScheme, clocks: tuple[tuple[str, Tier | None], ...]) -> frozenset[str]:
    """The tags UNKNOWN clocks (name, tier) could have set when their facts were known: breached or at risk
    under their own name and tier, or update due for a cadence clock.

    Asking `signals_for` about each clock as if breached and as if at risk keeps one rule for which clock sets
    which tag (escalate's), instead of a second copy here that could drift from it. Keyed by names and tiers,
    not by the clocks: a Clock's hash walks all its fields on every call."""
    zero = timedelta(0)
    hypothetical = []
    for name, tier in clocks:
        hypothetical.append(Clock(name, zero, zero, zero, None, _BREACHED, "", breached_at=_SOME_MOMENT, tier=tier))
        hypothetical.append(Clock(name, zero, zero, zero, None, _AT_RISK, "", tier=tier))
    return _render(tags, signals_for(hypothetical, False))


def plan(decision: Decision, observed: Ticket, tags: TagScheme) -> WriteBack:
    if observed.status in _READ_ONLY:
        # Closed and deleted tickets refuse every update (Zendesk 422, Jira workflows, ServiceNow ACLs); their
        # tags are history now, so plan nothing rather than queue a write that can only be dead-lettered.
        return WriteBack(decision.platform, decision.instance, decision.ticket_id, observed.revision)
    desired = _render(tags, decision.signals)
    present = observed.tags
    add = desired - present
    managed = _manages(tags)
    remove = frozenset(tag for tag in present if tag not in desired and managed(tag))
    held = _NOTHING
    if remove:
        # The tags of a clock UNKNOWN now stay as they are: kept when present, and never added for it (an
        # UNKNOWN clock gives no signal; `desired` holds such a tag only on other evidence, e.g. another cadence
        # clock). Only a tag about to be removed can be held, so most plans (nothing to remove) skip the look-up.
        unknown = tuple((clock.name, clock.tier) for clock in decision.clocks if clock.state is _UNKNOWN)
        if unknown:
            held = _unknown_tags(tags, unknown) & remove
        if "tier_changes" in observed.missing_facts:
            # Earlier stays cannot be dated on this read: their breach tags are neither confirmed nor disproved.
            current = decision.current_tier.value.lower()
            held = held | frozenset(tag for tag in remove if tags.breached_tier(tag) not in (None, current))
        remove -= held
    observed_tier = observed.effective_tier
    observed_rank = _RANK[observed_tier]
    target = decision.target_tier
    target_rank = _RANK[target]
    tier = None
    if target != observed_tier and (target_rank > observed_rank or target_rank < _RANK[decision.current_tier]):
        # Raise when the platform is below the target; lower only when the Decision itself lowered the tier
        # (policy allows de-escalation), never because the platform moved up on its own meanwhile.
        tier = target
    comment = None
    if decision.comment is not None:
        management_starts = decision.management and tags.management not in present
        if (tier is not None and target_rank > observed_rank) or management_starts:
            comment = decision.comment
    return WriteBack(
        platform=decision.platform,
        instance=decision.instance,
        ticket_id=decision.ticket_id,
        revision=observed.revision,
        tier=tier,
        add_tags=add,
        remove_tags=remove,
        comment=comment,
        tags=desired | held if add or remove else None,
    )
