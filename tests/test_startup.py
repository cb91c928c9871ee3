"""Start-up cost: the daemon must not import the CEL package's command-line tool (typer, rich, prompt_toolkit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
