"""Errors in files people edit name the file, the line and the key (engine/configfile.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from engine.configfile import ConfigFileError, load_model, locate


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hours: float


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    targets: dict[str, Target] = {}
    servers: list[Target] = []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sample.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n\n[targets.P1]\nhours = "soon"\n')
    with pytest.raises(ConfigFileError) as caught:
        load_model(Sample, path)
    assert (caught.value.line, caught.value.key) == (4, "targets.P1.hours")
    assert str(caught.value).startswith(f"{path}:4: targets.P1.hours: ")


def test_an_unknown_key_in_an_array_of_tables_points_at_its_entry(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n\n[[servers]]\nhours = 1\n\n[[servers]]\nhourz = 2\n')
    with pytest.raises(ConfigFileError) as caught:
        load_model(Sample, path)
    assert caught.value.key.startswith("servers.1")
    assert caught.value.line in (6, 7)


def test_broken_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\nhours = \n')
    with pytest.raises(ConfigFileError) as caught:
        load_model(Sample, path)
    assert caught.value.line == 2 and "not valid TOML" in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_model(Sample, tmp_path / "absent.toml")


def test_locate_finds_dotted_and_quoted_keys() -> None:
    text = '[policy]\nat_risk = 0.75\n\n[policy.sla."P1"]\nresolution_hours = 8\n'
    assert locate(text, ("policy", "sla", "P1", "resolution_hours")) == 5
    assert locate(text, ("policy", "at_risk")) == 2
    assert locate(text, ("policy", "nothing", "here")) == 1  # falls back to the closest enclosing key


class Keyed(BaseModel):
    targets: dict[Literal["P1", "P2"], Target]


def test_a_bad_table_name_is_named_without_pydantic_markers(tmp_path: Path) -> None:
    path = write(tmp_path, "[targets.P1]\nhours = 1\n\n[targets.P5]\nhours = 2\n")
    with pytest.raises(ConfigFileError) as caught:
        load_model(Keyed, path)
    assert (caught.value.key, caught.value.line) == ("targets.P5", 4)
