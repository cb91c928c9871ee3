"""Start-up cost: the daemon must not import the CEL package's command-line tool (typer, rich, prompt_toolkit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sync

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
import sync
from engine.policy import load_policy
policy = load_policy(sync.EXAMPLE_CONFIG)
import cel
print(json.dumps({
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"typer", "rich", "prompt_toolkit", "pygments"}),
    "rules": len(policy.rules),
    "value": cel.compile("a + 1").execute(cel.Context({"a": 41})),
}))
"""


def test_the_cel_cli_is_not_imported_and_cel_still_evaluates() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["loaded"] == []
    assert result["rules"] > 0, "the policy's CEL conditions compiled through the evaluator-only package"
    assert result["value"] == 42


def test_cel_submodules_still_load_on_demand() -> None:
    probe = "import engine, cel.stdlib, cel; print(cel.stdlib.__name__, callable(cel.compile))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cel.stdlib", "True"]


SETTLE_PROBE = """
import ctypes, gc, json, sys
import sync


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2


def mapped(size):
    big = bytearray(24 * 1024 * 1024)
    del big  # freeing a mapped block raises glibc's dynamic threshold to its size, unless it is pinned
    before = mallinfo2().hblks
    block = bytearray(size)  # larger than any free block of the heap at start-up: mapped, or the heap grows
    return mallinfo2().hblks > before


if sys.argv[1] == "settled":
    sync.settle_memory()
print(json.dumps({"mapped": mapped(8 * 1024 * 1024), "young": gc.get_threshold()[0], "frozen": gc.get_freeze_count() > 0}))
"""


def _glibc_with_mallinfo2() -> bool:
    import ctypes
    import platform

    try:
        return platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's allocator (2.33 or later) only")
def test_settling_memory_pins_the_mmap_threshold_and_the_collector() -> None:
    """Issue 14 (memory): after `settle_memory` (what `once` and `run` do before the first cycle) a block of
    megabytes still gets a mapping of its own, returned to the system when freed, after a larger one was freed
    (glibc's default raises the threshold then, and such blocks grow the heap); the collector is settled too."""

    def probe(mode: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-c", SETTLE_PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    assert probe("settled") == {"mapped": True, "young": sync.GC_YOUNG_THRESHOLD, "frozen": True}
    assert probe("default")["mapped"] is False, "glibc's dynamic threshold is what the setting stops"


def test_settling_the_allocator_without_glibc_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:  # macOS: a C library without mallopt
        pass

    monkeypatch.setattr(sync.ctypes, "CDLL", lambda name: NoMallopt())
    assert sync._settle_allocator() is False


def test_the_metrics_library_is_imported_by_run_only() -> None:
    """Issue 14 (memory): `once` from cron serves no metrics, so prometheus_client (about 1 MB) is not imported
    with the daemon; `run` imports it at its start, so a broken install still fails before the first cycle."""
    probe = (
        "import sys, sync, runtime.wiring, connectors.zendesk; "
        "print('prometheus_client' in sys.modules, 'runtime.metrics' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_an_operators_mmap_threshold_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert sync._settle_allocator() is False
