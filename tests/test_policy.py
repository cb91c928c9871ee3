"""Policy loading: the example config compiles; every mistake names the file line, the key, the rule and the
position inside the condition."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.configfile import ConfigFileError
from engine.model import Priority, Tier
from engine.policy import FACTS, load_policy, policy_from_dict, rewrite

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

BASE = """\
[daemon]
interval_seconds = 60

[policy]
default_calendar = "office"

[policy.calendars.office]
timezone = "Europe/Berlin"
hours = { weekdays = ["09:00-17:00"] }

[policy.calendars.always]
always_open = true

[policy.sla.P1]
calendar = "always"
first_response_hours = 0.5
resolution_hours = 8

[policy.sla.P2]
first_response_hours = 2
resolution_hours = 24

[policy.sla.P3]
first_response_hours = 8
resolution_hours = 72

[policy.sla.P4]
first_response_hours = 24
resolution_hours = 160

[policy.tiers.L1]
label = "Front line"

[policy.tiers.L2]
label = "Specialist"
acknowledgment_minutes = 15

[policy.tiers.L3]
label = "Engineering"

[policy.tiers.L4]
label = "Vendor"

[policy.thresholds]
l1_max_hours = 2
"""

RULE = """
[[policy.rules]]
name = "{name}"
when = {when}
tier = "L2"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_config_loads():
    policy = load_policy(EXAMPLE)
    assert [rule.name for rule in policy.rules][:2] == ["l1-time-limit", "l2-time-limit"]
    assert policy.sla[Priority.P1].calendar.is_always
    assert policy.sla[Priority.P3].calendar.name == "business_hours"
    assert policy.tiers[Tier.L2].acknowledgment.total_seconds() == 15 * 60
    assert policy.calendars["follow_the_sun"].name == "follow_the_sun"
    assert set(policy.cel_paths) <= set(policy.fact_paths) <= set(FACTS)
    assert policy.at_risk_fraction == 0.75


def test_minimal_policy_with_a_rule(tmp_path):
    text = BASE + RULE.format(name="slow", when="\"ticket.tier == 'L1' && hours_at_tier >= thresholds.l1_max_hours\"")
    policy = load_policy(write(tmp_path, text))
    (rule,) = policy.rules
    assert rule.facts == ("ticket.tier", "hours_at_tier")
    assert policy.cel_paths == ("ticket.tier", "hours_at_tier")


@pytest.mark.parametrize(
    ("case", "when", "message", "line_offset"),
    [
        ("syntax error", "\"ticket.tier == 'L1' &&& true\"", "rule 'broken': condition at 1:", 0),
        ("unknown fact", "\"ticket.prio == 'P1'\"", "rule 'broken': condition at 1:1: unknown fact 'ticket.prio'", 0),
        (
            "unknown fact after an operator",
            "\"true && clocks.resolution.stat == 'ok'\"",
            "condition at 1:9: unknown fact 'clocks.resolution.stat'",
            0,
        ),
        ("unknown clock", "\"clocks.answer.state == 'ok'\"", "clocks are: first_response", 0),
        ("unknown threshold", '"hours_at_tier > thresholds.nope"', "unknown threshold 'nope'", 0),
        ("undefined variable", "\"customer == 'x'\"", "rule 'broken': condition: Undefined variable", 0),
        ("not a boolean", '"flags.reopen_count"', "must be true or false, gives int", 0),
        ("type clash found by the dry run", '"flags.reopen_count + 1.5 > 2.0"', "No such overload", 0),
        (
            "error on the second line of a multi-line condition",
            '"""\nticket.tier == \'L1\' &&\n  ticket.nope\n"""',
            "condition at 2:3: unknown fact 'ticket.nope'",
            2,
        ),
    ],
)
def test_rule_errors_name_rule_position_and_line(tmp_path, case, when, message, line_offset):
    text = BASE + RULE.format(name="broken", when=when)
    with pytest.raises(ConfigFileError) as caught:
        load_policy(write(tmp_path, text))
    error = caught.value
    assert message in str(error), case
    assert error.line == line_of(text, "when =") + line_offset, case
    assert error.key == "policy.rules.0.when"
    assert str(error).startswith(f"{tmp_path / 'config.toml'}:{error.line}: policy.rules.0.when: ")


@pytest.mark.parametrize(
    ("case", "edit", "key", "needle", "reason"),
    [
        (
            "fraction out of range",
            ('default_calendar = "office"', 'default_calendar = "office"\nat_risk_fraction = 2'),
            "policy.at_risk_fraction",
            "at_risk_fraction",
            "less than or equal to 1",
        ),
        (
            "unknown calendar",
            ('calendar = "always"', 'calendar = "allways"'),
            "policy.sla.P1.calendar",
            'calendar = "allways"',
            "unknown calendar 'allways'",
        ),
        (
            "bad hours",
            ('["09:00-17:00"]', '["17:00-09:00"]'),
            "policy.calendars.office.hours",
            "17:00-09:00",
            "end must come after",
        ),
        (
            "bad time zone",
            ('"Europe/Berlin"', '"Europe/Berlinn"'),
            "policy.calendars.office.timezone",
            "Berlinn",
            "unknown time zone",
        ),
        (
            "unknown key",
            ("first_response_hours = 2", "first_response_hours = 2\nescalate_hours = 3"),
            "policy.sla.P2.escalate_hours",
            "escalate_hours",
            "Extra inputs",
        ),
        (
            "not a priority",
            ("[policy.sla.P4]", "[policy.sla.P5]"),
            "policy.sla.P5",
            "[policy.sla.P5]",
            "Input should be",
        ),
        (
            "missing priority",
            ("[policy.sla.P4]\nfirst_response_hours = 24\nresolution_hours = 160\n", ""),
            "policy.sla",
            "[policy]",
            "missing SLA targets for P4",
        ),
        (
            "negative target",
            ("resolution_hours = 72", "resolution_hours = -1"),
            "policy.sla.P3.resolution_hours",
            "resolution_hours = -1",
            "greater than or equal to 0",
        ),
    ],
)
def test_schema_errors_name_key_and_line(tmp_path, case, edit, key, needle, reason):
    text = BASE.replace(*edit)
    with pytest.raises(ConfigFileError) as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.key == key, case
    assert reason in caught.value.reason, case
    assert caught.value.line == line_of(text, needle), case


def test_rule_without_target_and_duplicate_names(tmp_path):
    text = BASE + '\n[[policy.rules]]\nname = "x"\nwhen = "true"\n'
    with pytest.raises(ConfigFileError, match="needs a target"):
        load_policy(write(tmp_path, text))
    twice = BASE + RULE.format(name="x", when='"true"') + RULE.format(name="x", when='"false"')
    with pytest.raises(ConfigFileError) as caught:
        load_policy(write(tmp_path, twice))
    assert "duplicate rule name 'x'" in str(caught.value)
    assert caught.value.line == [n for n, line in enumerate(twice.splitlines(), 1) if line == 'name = "x"'][1]


def test_unknown_follow_the_sun_member(tmp_path):
    text = BASE + '\n[policy.calendars.sun]\nunion = ["office", "tokyo"]\n'
    with pytest.raises(ConfigFileError, match=r"member calendar\(s\) \['tokyo'\]") as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.line == line_of(text, "union =")


def test_unknown_fact_in_reason(tmp_path):
    text = BASE + RULE.format(name="r", when='"true"') + 'reason = "because {ticket.nope}"\n'
    with pytest.raises(ConfigFileError, match=r"unknown name \{ticket.nope\} in reason"):
        load_policy(write(tmp_path, text))


def test_missing_policy_table_and_bad_toml(tmp_path):
    with pytest.raises(ConfigFileError, match=r"no \[policy\] table"):
        load_policy(write(tmp_path, "[daemon]\n"))
    with pytest.raises(ConfigFileError, match="not valid TOML") as caught:
        load_policy(write(tmp_path, BASE + "\n[[policy.rules]\n"))
    assert caught.value.line is not None


def test_policy_from_dict_reports_without_a_file():
    with pytest.raises(ConfigFileError) as caught:
        policy_from_dict({"default_calendar": "x"})
    assert str(caught.value).startswith("<policy>: policy.")


@pytest.mark.parametrize(
    ("source", "rewritten", "facts"),
    [
        ("ticket.tier == 'L1'", "ticket__tier == 'L1'", ("ticket.tier",)),
        ("ticket.tags.exists(t, t == 'ticket.tier')", "ticket__tags.exists(t, t == 'ticket.tier')", ("ticket.tags",)),
        ('size(ticket.tags) > 2 && "flags.x" != r"y"', 'size(ticket__tags) > 2 && "flags.x" != r"y"', ("ticket.tags",)),
        ("hours_at_tier >= thresholds.l1_max_hours", "hours_at_tier >= 2.0", ("hours_at_tier",)),
        ("clocks . resolution . state == 'ok'", "clocks__resolution__state == 'ok'", ("clocks.resolution.state",)),
        ("1.5 < flags.revenue_at_risk", "1.5 < flags__revenue_at_risk", ("flags.revenue_at_risk",)),
    ],
)
def test_rewrite(source, rewritten, facts):
    result = rewrite(source, {"l1_max_hours": 2.0})
    assert result.source == rewritten
    assert result.facts == facts
