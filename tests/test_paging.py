"""connectors/paging.py: each strategy moves on, and refuses a position that does not advance while more remain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from connectors.base import TransientError
from connectors.paging import CursorExport, Keyset, StuckCursorError, TimeExport

ROOT = Path(__file__).resolve().parent.parent


def test_cursor_export_moves_on_and_refuses_a_repeated_cursor() -> None:
    paging = CursorExport("acme", "ticket export")
    assert paging.next_cursor(None, "c1", end_of_stream=False) == "c1"
    assert paging.next_cursor("c1", "c2", end_of_stream=False) == "c2"
    assert paging.next_cursor("c2", "c2", end_of_stream=True) == "c2"  # caught up: staying put is right
    assert paging.next_cursor("c2", None, end_of_stream=True) == "c2"
    with pytest.raises(StuckCursorError, match=r"acme: ticket export: cursor 'c2' did not advance"):
        paging.next_cursor("c2", "c2", end_of_stream=False)
    with pytest.raises(TransientError, match="no cursor"):
        paging.next_cursor(None, None, end_of_stream=False)


def test_time_export_moves_to_end_time_and_refuses_a_full_page_in_one_second() -> None:
    paging = TimeExport("acme", "event export")
    assert paging.next_start(100, 250, end_of_stream=False) == 250
    assert paging.next_start(250, 250, end_of_stream=True) == 250
    with pytest.raises(StuckCursorError, match="start_time 250 did not advance"):
        paging.next_start(250, 250, end_of_stream=False)
    with pytest.raises(Exception, match="not an epoch time"):
        paging.next_start(250, "soon", end_of_stream=False)


def test_keyset_refuses_a_last_key_not_after_the_position() -> None:
    paging = Keyset("acme", "incident keyset poll")
    assert paging.next_key(("2026-11-20 09:00:00", "a"), ("2026-11-20 09:00:00", "b"), has_more=True) == (
        "2026-11-20 09:00:00",
        "b",
    )
    with pytest.raises(StuckCursorError, match="did not advance"):
        paging.next_key(("2026-11-20 09:00:00", "b"), ("2026-11-20 09:00:00", "b"), has_more=True)


@pytest.mark.parametrize("module", sorted((ROOT / "connectors").glob("*.py")), ids=lambda path: path.name)
def test_no_connector_imports_a_mapping(module: Path) -> None:
    """Data flows one way (DESIGN.md principle 9): the mapping declares and renders, the connector moves bytes."""
    tree = ast.parse(module.read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name == "mappings" or name.startswith("mappings.")]
