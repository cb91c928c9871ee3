"""The installed command, as a new user gets it: the built wheel in a fresh venv, run from another directory.

Everything that works from the checkout must work from the wheel: the example config and default mappings are
package data, `init` writes a starting directory, and no path may assume the checkout around sync.py. The wheel
test builds and installs for real (dependencies from the package registry or pip's cache), so it is one
module-scoped fixture shared by the assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sync
from escalation_sync import resources

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "zendesk" / "ticket_show.json"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable")
"""pip's messages when the registry cannot be reached: only then is the wheel test skipped rather than failed."""
CREDENTIALS = {
    "ZENDESK_EMAIL": "bot@example.com",
    "ZENDESK_API_TOKEN": "zd-token",
    "JSM_EMAIL": "bot@example.com",
    "JSM_API_TOKEN": "jsm-token",
    "SERVICENOW_USERNAME": "integration",
    "SERVICENOW_PASSWORD": "snow-password",
}


def test_init_writes_a_config_that_checks(tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    target = tmp_path / "etc"
    assert sync.main(["init", str(target)]) == 0
    assert (target / "config.toml").read_text(encoding="utf-8") == resources.example_config().read_text("utf-8")
    assert sorted(p.name for p in (target / "mappings").iterdir()) == ["jsm.toml", "servicenow.toml", "zendesk.toml"]
    monkeypatch.chdir(tmp_path)  # the mappings resolve next to the config, not in the working directory
    assert sync.main(["check", "--config", str(target / "config.toml")]) == 0
    assert capsys.readouterr().out.count("ok ") == 5


def test_init_keeps_existing_files_unless_forced(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.toml").write_text("# mine\n", encoding="utf-8")
    assert sync.main(["init", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "config.toml").read_text(encoding="utf-8") == "# mine\n"
    assert not (tmp_path / "mappings").exists(), "nothing is written when anything would be overwritten"
    assert sync.main(["init", "--force", str(tmp_path)]) == 0
    assert "[policy]" in (tmp_path / "config.toml").read_text(encoding="utf-8")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        sync.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"escalation-sync {VERSION}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built wheel (and its declared dependencies) installed; returns its bin/."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds, and the checkout is not
    # the test's to litter (nor may a stale build/ there leak into the wheel).
    source = base / "source"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "var")
    shutil.copytree(ROOT, source, ignore=junk)
    wheels = base / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(source)]
    built = subprocess.run(build, capture_output=True, text=True, timeout=300, check=False)
    if built.returncode != 0 and any(sign in built.stderr for sign in OFFLINE):
        pytest.skip(f"setuptools for the build cannot be fetched (no package registry): {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("escalation_sync-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 and any(sign in done.stderr for sign in OFFLINE):
        pytest.skip(f"the dependencies cannot be fetched (no package registry, no pip cache): {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ESCALATION_SYNC_", "PYTHON"))}
    environ.update(CREDENTIALS)
    environ.update(env or {})
    return subprocess.run(list(args), cwd=cwd, env=environ, capture_output=True, text=True, timeout=180, check=False)


def test_wheel_runs_from_anywhere(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli, python = str(installed / "escalation-sync"), str(installed / "python")
    where = run(elsewhere, python, "-c", "import sync, mappings; print(sync.__file__)")
    assert where.returncode == 0, where.stderr
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout, "imports come from the wheel"

    version = run(elsewhere, cli, "--version")
    assert version.stdout.strip() == f"escalation-sync {VERSION}"

    state_dir = str(elsewhere / "demo-state")
    demo = run(elsewhere, cli, "demo", "--hours", "1", "--tickets", "10", "--json", "--state-dir", state_dir)
    assert demo.returncode == 0, demo.stderr
    summary = json.loads(demo.stdout)
    assert summary, "the demo ran its instances from the packaged policy"

    at = "2026-11-23T15:00:00+00:00"
    explained = run(
        elsewhere,
        python,
        "-m",
        "escalation_sync",
        "explain",
        "--platform",
        "zendesk",
        "--file",
        str(FIXTURE),
        "--at",
        at,
    )
    assert explained.returncode == 0, explained.stderr
    assert "first_response" in explained.stdout

    assert run(elsewhere, cli, "init", "site").returncode == 0
    check = run(elsewhere / "site", cli, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("ok ") == 5

    state = f"sqlite:///{elsewhere / 'demo-state' / 'demo.sqlite3'}"
    report = run(elsewhere / "site", cli, "report", "--html", "report.html", env={"ESCALATION_SYNC_STATE_URL": state})
    assert report.returncode == 0, report.stderr
    assert "escalations by tier" in report.stdout
    assert "Chart.js v4" in (elsewhere / "site" / "report.html").read_text(encoding="utf-8"), "assets are package data"

    mapping = elsewhere / "site" / "mappings" / "zendesk.toml"
    mapping.write_text(mapping.read_text(encoding="utf-8") + "\nbogus_key = 1\n", encoding="utf-8")
    broken = run(elsewhere / "site", cli, "check")
    assert broken.returncode == 2 and "zendesk.toml" in broken.stdout
    once = run(elsewhere / "site", cli, "once")
    assert once.returncode == 2 and "zendesk.toml" in once.stderr, "the same exit code as check"
    assert "Traceback" not in broken.stdout + broken.stderr
