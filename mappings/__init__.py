"""Mappings: the only bridge between a platform's raw payloads and the common model.

Each platform has a schema module (`mappings/<platform>.py`) and a default data file (`mappings/<platform>.toml`)
that admins edit: which field holds the tier, which values mean P1, which tag means churn threat. A mapping is
validated in full at load, so a broken file fails at start with file, line, key and reason.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from connectors.base import RawRecord
from engine.configfile import ConfigFileError
from engine.model import TagScheme, Ticket, Tier

MAPPINGS_DIR = Path(__file__).parent
PLATFORMS = ("zendesk", "jsm", "servicenow")


class MappingError(ConfigFileError):
    """A mapping file is broken or inconsistent."""


class NormalizeError(Exception):
    """One record cannot be normalized (unknown priority, missing field): it is quarantined, not fatal."""

    def __init__(self, record_id: str, field: str, reason: str) -> None:
        self.record_id = record_id
        self.field = field
        self.reason = reason
        super().__init__(f"ticket {record_id}: {field}: {reason}")


class PlatformMapping(Protocol):
    path: str
    tags: TagScheme

    def normalize(self, record: RawRecord, instance: str) -> Ticket:
        """Raise NormalizeError when the record cannot become a Ticket."""
        ...

    def tier_fields(self, tier: Tier) -> dict[str, Any]:
        """The platform fields that put a ticket at `tier` (group id, custom field option, ...)."""
        ...


def load_mapping(platform: str, path: Path | None = None) -> PlatformMapping:
    """Load and validate `mappings/<platform>.toml` (or `path`); raise MappingError naming file, line, key."""
    if platform not in PLATFORMS:
        raise MappingError(path or MAPPINGS_DIR, f"unknown platform {platform!r}; expected one of {PLATFORMS}")
    module = importlib.import_module(f"mappings.{platform}")
    return module.load(path or MAPPINGS_DIR / f"{platform}.toml")
