"""The daemon's configuration file and environment: what to poll, where state lives, where secrets are.

The file (config.toml) names environment variables, never secret values; credentials are read from the
environment here, typed as `SecretStr`, and handed only to the connector's auth object. Relative paths in
the file (mappings, the SQLite store) are relative to the file's own directory, so the daemon behaves the
same whatever directory it is started from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.http import InsecureUrlError, check_base_url
from engine.configfile import ConfigFileError, load_toml, locate, validate
from engine.policy import Policy, policy_from_dict
from state.base import LEDGER_RETENTION

Platform = Literal["zendesk", "jsm", "servicenow"]

CONNECTOR_OPTIONS: dict[str, frozenset[str]] = {
    "zendesk": frozenset(
        {"page_size", "history_pages_per_poll", "subdomain", "initial_lookback_hours", "job_poll_seconds", "job_polls"}
    ),
    "jsm": frozenset({"page_size", "overlap_seconds", "jql", "initial_lookback_hours"}),
    "servicenow": frozenset(
        {
            "table",
            "page_size",
            "sla_batch",
            "settle_seconds",
            "journal_lookup",
            "history_batch",
            "initial_lookback_hours",
        }
    ),
}
"""Every `[instances.options]` key each connector reads (connectors/<platform>.py `__init__`): one list, so a
misspelled option (`page_sise`) is refused at load instead of silently falling back to the default. A new
connector option is added here and in its connector together."""


class Settings(BaseSettings):
    """Process-level settings from the environment (ESCALATION_SYNC_*), overriding the file where given."""

    model_config = SettingsConfigDict(env_prefix="ESCALATION_SYNC_")

    config: Path = Path("config.toml")
    state_url: str | None = None
    log_level: str = "INFO"


class DaemonSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(60.0, gt=0)
    log_format: Literal["json", "text"] = "json"
    max_write_attempts: int = Field(5, ge=1)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_address: str = "127.0.0.1"
    max_writes_per_cycle: int = Field(100, ge=1)
    batch_writes_from: int = Field(3, ge=2)
    """A cycle sends its due writes as batch jobs where the platform has them (Zendesk update_many) once at
    least this many are due together; fewer go one call each (a job costs its call and at least one poll)."""
    review_interval_seconds: float = Field(3600.0, gt=0)
    lease_ttl_seconds: float = Field(30.0, gt=0)
    """PostgreSQL: how long an instance's lease outlives its holder's last heartbeat (state/lease.py)."""


class StateSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "sqlite:///var/escalation-sync.sqlite3"
    ledger_retention_days: float = Field(LEDGER_RETENTION.days, gt=0)
    """Done write-ledger entries older than this are pruned (pending and dead ones never are)."""


class InstanceSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    platform: Platform
    base_url: str | None = None
    subdomain: str | None = None
    mapping: Path | None = None
    initial_lookback_hours: float = Field(72.0, gt=0)
    adopt: Literal["notes", "tag_only"] = "notes"
    """How the first sweep of an instance writes escalations that were already overdue when first seen."""
    credentials: dict[str, str] = Field(default_factory=dict)
    """Credential name -> environment variable name."""
    options: dict[str, Any] = Field(default_factory=dict)
    allow_insecure_http: bool = False
    """Accept a plain http:// base_url for a host that is not loopback (credentials then travel in clear)."""

    @model_validator(mode="after")
    def _needs_a_location(self) -> InstanceSection:
        if self.base_url is None and not (self.platform == "zendesk" and self.subdomain):
            hint = "base_url or subdomain" if self.platform == "zendesk" else "base_url"
            raise ValueError(f"instance {self.name!r} needs {hint}")
        try:
            check_base_url(self.url, allow_insecure_http=self.allow_insecure_http)
        except InsecureUrlError as error:
            raise ValueError(f"instance {self.name!r}: {error}") from None
        return self

    @property
    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"https://{self.subdomain}.zendesk.com"

    def read_credentials(self, environ: Mapping[str, str]) -> dict[str, SecretStr]:
        """Secrets from the environment; a missing variable is named (by variable, never by value)."""
        missing = [variable for variable in self.credentials.values() if not environ.get(variable)]
        if missing:
            raise ConfigFileError(
                "environment",
                f"instance {self.name!r} needs the environment variable(s) {', '.join(sorted(missing))}",
            )
        return {name: SecretStr(environ[variable]) for name, variable in self.credentials.items()}


class FileSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    daemon: DaemonSection = Field(default_factory=DaemonSection)
    state: StateSection = Field(default_factory=StateSection)
    instances: list[InstanceSection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> FileSection:
        names = [instance.name for instance in self.instances]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"instance names must be unique; repeated: {', '.join(duplicates)}")
        return self


@dataclass(frozen=True)
class AppConfig:
    path: Path
    daemon: DaemonSection
    state_url: str
    instances: tuple[InstanceSection, ...]
    policy: Policy
    state: StateSection = field(default_factory=StateSection)

    def mapping_path(self, instance: InstanceSection) -> Path | None:
        if instance.mapping is None:
            return None
        return instance.mapping if instance.mapping.is_absolute() else self.path.parent / instance.mapping


def resolve_state_url(url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the config file's directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def load_config(path: Path, settings: Settings | None = None) -> AppConfig:
    """Load and validate the whole file (sections, then policy); errors name file, line and key."""
    data, text = load_toml(path)
    policy_data = data.pop("policy", None)
    section = validate(FileSection, data, path, text)
    problems = [
        ConfigFileError(path, "unknown section", key=key, line=locate(text, (key,)))
        for key in sorted(set(section.model_extra or {}))
    ]
    problems += _unknown_options(section.instances, path, text)
    policy: Policy | None = None
    if policy_data is None:
        problems.append(ConfigFileError(path, "missing [policy] table (see config.example.toml)"))
    else:
        try:
            policy = policy_from_dict(policy_data, str(path), text)
        except ConfigFileError as error:  # reported with the sections' problems: one run shows them all
            problems.append(error)
    if problems or policy is None:
        raise problems[0].with_more(problems[1:])
    state_url = (settings.state_url if settings else None) or section.state.url
    return AppConfig(
        path=path,
        daemon=section.daemon,
        state_url=resolve_state_url(state_url, path.parent),
        instances=tuple(section.instances),
        policy=policy,
        state=section.state,
    )


def _unknown_options(instances: list[InstanceSection], path: Path, text: str) -> list[ConfigFileError]:
    problems = []
    for index, instance in enumerate(instances):
        known = CONNECTOR_OPTIONS[instance.platform]
        for name in sorted(set(instance.options) - known):
            close = get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            reason = f"unknown {instance.platform} option {name!r}{hint} (known: {', '.join(sorted(known))})"
            loc = ("instances", index, "options", name)
            problems.append(
                ConfigFileError(path, reason, key=f"instances.{instance.name}.options.{name}", line=locate(text, loc))
            )
    return problems


def environment() -> Mapping[str, str]:
    return os.environ
