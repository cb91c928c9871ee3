"""deploy/: the systemd unit passes `systemd-analyze verify`, and both recipes run the command we ship.

`systemd-analyze verify` checks that ExecStart's binary exists, so it is given a copy of the unit pointing at
the console script installed in this venv. No container engine is assumed on a CI machine: the Containerfile is
checked for what the daemon relies on (entry point, stop signal, health probe, port).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "escalation-sync.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
INSTALLED = "/opt/escalation-sync/bin/escalation-sync"


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_the_unit_runs_the_shipped_command() -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert unit_values(text, "ExecStart") == [f"{INSTALLED} run"]
    assert unit_values(text, "ExecStartPre") == [f"{INSTALLED} check"]
    assert Path(INSTALLED).name in SCRIPTS
    assert unit_values(text, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_values(text, "RestartPreventExitStatus") == ["2"], "a configuration error is not retried"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    script = Path(sys.executable).parent / "escalation-sync"
    if not script.exists():
        pytest.skip(f"{script} is not installed: run `make install`")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(script)), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    about_ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert about_ours == [], "systemd-analyze warned about the unit"


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("KillSignal=", "KilSignal="), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert "KilSignal" in result.stdout + result.stderr


def test_the_container_recipe() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    entrypoint = re.search(r"^ENTRYPOINT \[(.+)\]$", text, re.M)
    assert entrypoint is not None and entrypoint.group(1).strip('"') in SCRIPTS
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M), "SIGTERM finishes the current ticket"
    assert "/healthz" in text and re.search(r"^EXPOSE 9464$", text, re.M)
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert "# metrics_port = 9464" in example, "the port the image exposes is the one the example suggests"
    assert re.search(r"^USER \d+$", text, re.M), "not root"
