"""Files shipped inside the package (the example config, the default mappings) and `init`, which copies them.

An installed wheel has no checkout around it, so nothing here may find a file relative to the current directory
or to sync.py: the example config is package data of `escalation_sync` (in a checkout, a symlink to the one at the
repository root) and the default mappings are package data of `mappings`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from mappings import PLATFORMS

CONFIG_NAME = "config.toml"


class InitError(Exception):
    """`init` would overwrite a file the user has not asked it to replace."""


def example_config() -> Path:
    """The packaged config.example.toml, as a path (the package is always installed as plain files)."""
    return Path(str(files("escalation_sync").joinpath("config.example.toml")))


def example_notifications() -> Path:
    return Path(str(files("escalation_sync").joinpath("notifications.example.toml")))


def default_mapping(platform: str) -> Path:
    return Path(str(files("mappings").joinpath(f"{platform}.toml")))


def init(directory: Path, *, force: bool = False) -> list[Path]:
    """Write a starting config.toml, mappings/<platform>.toml and notifications.example.toml (inactive until
    renamed) into `directory`; return what was written.

    The example config names its mappings as ``mappings/<platform>.toml`` relative to itself, so the copies
    work as they are, from any working directory. Existing files are kept unless `force`: they may hold edits.
    """
    targets = {directory / CONFIG_NAME: example_config()}
    targets[directory / "notifications.example.toml"] = example_notifications()
    targets.update({directory / "mappings" / f"{p}.toml": default_mapping(p) for p in PLATFORMS})
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise InitError(f"{names}: already exists (use --force to overwrite)")
    for target, source in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return list(targets)
