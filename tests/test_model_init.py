"""`engine.model.fast_init`: the frozen model types build through one dict update, with the dataclass's contract.

Why a test: the constructor replaces the dataclass-generated one for speed (issue 14), so everything callers
rely on must stay as it was: parameters by position and by name, defaults, a fresh default per instance from a
factory, TypeError on a missing, unknown or repeated argument, `replace`, equality, hashing, immutability.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from engine.model import Clock, ClockState, Flags, Priority, Status, Ticket, fast_init

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def _ticket(**changes: object) -> Ticket:
    base: dict[str, object] = {
        "platform": "zendesk",
        "instance": "i",
        "id": "1",
        "key": "1",
        "url": "",
        "subject": "s",
        "status": Status.OPEN,
        "priority": Priority.P2,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Ticket(**{**base, **changes})  # type: ignore[arg-type]


def test_defaults_and_factories_are_filled() -> None:
    ticket = _ticket()
    assert ticket.flags == Flags() and ticket.tags == frozenset() and ticket.public_replies is None
    assert ticket.effective_tier.value == "L1"


def test_positional_and_named_arguments_build_the_same_value() -> None:
    hour = timedelta(hours=1)
    by_position = Clock("first_response", hour, hour, timedelta(0), None, ClockState.MET, "cal")
    by_name = Clock(
        name="first_response",
        target=hour,
        elapsed=hour,
        remaining=timedelta(0),
        due_at=None,
        state=ClockState.MET,
        calendar="cal",
    )
    assert by_position == by_name and hash(by_position) == hash(by_name) and by_position.tier is None


def test_bad_arguments_are_refused_as_by_a_dataclass() -> None:
    with pytest.raises(TypeError):
        Ticket(platform="zendesk")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _ticket(bogus=1)
    with pytest.raises(TypeError):
        Flags(True, churn_threat=True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Flags(*([False] * 11))  # type: ignore[arg-type]


def test_replace_equality_and_immutability_hold() -> None:
    ticket = _ticket()
    moved = dataclasses.replace(ticket, subject="t")
    assert moved.subject == "t" and moved.id == ticket.id and moved != ticket
    assert dataclasses.replace(moved, subject="s") == ticket
    with pytest.raises(dataclasses.FrozenInstanceError):
        ticket.subject = "u"  # type: ignore[misc]


def test_a_factory_runs_per_instance() -> None:
    @fast_init
    @dataclasses.dataclass(frozen=True)
    class Holder:
        items: list[int] = dataclasses.field(default_factory=list)
        label: str = "x"

    first, second = Holder(), Holder()
    assert first.items == [] and first.items is not second.items and first.label == "x"
    assert Holder([1], label="y") == Holder(items=[1], label="y")
