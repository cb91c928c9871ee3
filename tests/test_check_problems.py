"""A file with several problems reports them all, each with file, line and key; `check` refuses a misspelled
connector option and a misspelled handoff placeholder (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import sync
from engine.configfile import ConfigFileError, load_model
from mappings import MappingError, load_mapping
from runtime.config import CONNECTOR_OPTIONS, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hours: float


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    items: dict[str, Item] = {}


def _config(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8").replace('mapping = "mappings/', f'mapping = "{ROOT}/mappings/')
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _line(path: Path, fragment: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


def test_every_validation_error_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "sample.toml"
    path.write_text('name = 3\n\n[items.a]\nhours = "soon"\n\n[items.b]\nhourz = 1\n', encoding="utf-8")
    with pytest.raises(ConfigFileError) as caught:
        load_model(Sample, path)
    found = [(problem.line, problem.key) for problem in caught.value.problems]
    assert (1, "name") in found and (4, "items.a.hours") in found and (7, "items.b.hourz") in found
    assert "more)" not in str(caught.value)
    assert len(str(caught.value).splitlines()) == len(caught.value.problems) >= 3


def test_a_mapping_with_three_problems_names_all_three(tmp_path: Path) -> None:
    text = (ROOT / "mappings" / "servicenow.toml").read_text(encoding="utf-8")
    text = text.replace('"1" = "P1"', '"1" = "P9"').replace('"2" = "open" ', '"2" = "opne" ')
    text = text.replace('L2 = "23b8c1e9392456de3eb13b9046685257"', 'L2 = "bdd640fb06671ad11c80317fa3b1799d"')
    path = tmp_path / "servicenow.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping("servicenow", path)
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["status.values.2", "priority.values.1", "tier"]
    assert "L1 and L2 have the same value" in caught.value.problems[2].reason
    assert caught.value.problems[1].line == _line(path, '"1" = "P9"')


def test_check_refuses_a_misspelled_connector_option_and_placeholder(tmp_path: Path, capsys) -> None:
    path = _config(
        tmp_path, ("page_size = 100", "page_sise = 100"), ("Escalation handoff: $ticket", "Escalation handoff: $tikcet")
    )
    assert sync.main(["check", "--config", str(path)]) == 2
    out = capsys.readouterr().err
    option_line, template_line = _line(path, "page_sise"), _line(path, "$tikcet")
    assert (
        f"configuration error: {path}:{option_line}: instances.acme-zendesk.options.page_sise: unknown zendesk option "
        "'page_sise'; did you mean 'page_size'?" in out
    )
    assert f"configuration error: {path}:{template_line}: policy.handoff.template: unknown placeholder $tikcet: " in out
    assert "did you mean $ticket?" in out
    assert len(out.splitlines()) == 2


def test_once_refuses_them_too(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, ("overlap_seconds = 120", "overlap_secs = 120"))
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert caught.value.key == "instances.acme-jsm.options.overlap_secs"
    assert sync.main(["once", "--dry-run", "--config", str(path)]) == 2


def test_an_option_of_another_platform_is_unknown(tmp_path: Path) -> None:
    path = _config(tmp_path, ("overlap_seconds = 120", 'overlap_seconds = 120\ntable = "incident"'))
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert "unknown jsm option 'table'" in str(caught.value)


def test_the_example_uses_only_known_options_and_placeholders() -> None:
    config = load_config(EXAMPLE.resolve())
    for section in config.instances:
        assert set(section.options) <= CONNECTOR_OPTIONS[section.platform]


def test_a_dollar_that_starts_no_placeholder_is_not_an_error(tmp_path: Path) -> None:
    path = _config(tmp_path, ("Priority: $priority", "Priority: $priority (credit $5, $$ticket literal)"))
    assert load_config(path).policy.handoff_template.count("$5") == 1


def test_the_placeholder_list_is_what_the_handoff_fills() -> None:
    """engine/handoff.py fills HANDOFF_PLACEHOLDERS: a name added there without here would be refused."""
    import inspect

    from engine import handoff
    from engine.policy import HANDOFF_PLACEHOLDERS

    source = inspect.getsource(handoff.render_handoff)
    filled = {name for name in HANDOFF_PLACEHOLDERS if f'"{name}":' in source}
    assert filled == HANDOFF_PLACEHOLDERS
