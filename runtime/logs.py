"""Logging set-up: JSON lines for the daemon (one object per event), plain text for people at a terminal.

Fields passed with `extra=` become keys of the JSON object. Secrets never reach here: the HTTP layer redacts
them before logging, and configuration only ever holds environment variable names.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from engine.configfile import ConfigFileError

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        suffix = " ".join(f"{key}={value}" for key, value in extras.items())
        line = f"{record.levelname.lower():7} {record.getMessage()}" + (f"  {suffix}" if suffix else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def level_problem(level: str) -> str | None:
    """Why `level` (ESCALATION_SYNC_LOG_LEVEL) is not a log level, or None."""
    if level.upper() in LEVELS:
        return None
    return f"ESCALATION_SYNC_LOG_LEVEL={level!r} is not a log level: use one of {', '.join(LEVELS)}"


def configure(log_format: str, level: str = "INFO", stream: Any = None) -> None:
    """Log to `stream` (stderr); an unknown `level` is a configuration error, not a ValueError traceback."""
    problem = level_problem(level)
    if problem:
        raise ConfigFileError("environment", problem)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "zenpy", "jira"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
