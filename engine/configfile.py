"""Loading TOML files that people edit, with errors that name the file, the line and the key.

Used for the policy (engine/policy.py), the mappings and the daemon config: a broken file must fail at start
with something an admin can act on ("mappings/zendesk.toml:14: priority.values.urgent: not one of P1-P4"),
never with a traceback mid-cycle.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(
    r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
)
_KEY_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")


class ConfigFileError(Exception):
    """A file a person edits is wrong. The message is the whole story: file, line, key, reason.

    A file with several problems is one error whose `problems` lists each (this one first), so an admin fixes
    them all in one pass instead of one per run; the message has one `file:line: key: reason` line each.
    """

    def __init__(
        self,
        path: Path | str,
        reason: str,
        key: str = "",
        line: int | None = None,
        more: Sequence[ConfigFileError] = (),
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.key = key
        self.line = line
        where = f"{self.path}:{line}" if line else self.path
        self.headline = f"{where}: {key + ': ' if key else ''}{reason}"
        flat: list[ConfigFileError] = [self]
        for problem in (problem for extra in more for problem in extra.problems):
            if all(problem is not known for known in flat):
                flat.append(problem)
        self.problems: tuple[ConfigFileError, ...] = tuple(flat)
        super().__init__("\n".join(problem.headline for problem in self.problems))

    def with_more(self, more: Sequence[ConfigFileError]) -> ConfigFileError:
        """This error with further problems of the same file after it (keeps its type)."""
        if not more:
            return self
        return type(self)(self.path, self.reason, key=self.key, line=self.line, more=[*self.problems[1:], *more])


def _split_key(text: str) -> list[str]:
    return [next(group for group in match.groups() if group is not None) for match in _KEY_PART.finditer(text)]


def _key_lines(text: str) -> list[tuple[tuple[str | int, ...], int]]:
    """Every key defined in the file with its full path and line number (arrays of tables get indices)."""
    found: list[tuple[tuple[str | int, ...], int]] = []
    table: tuple[str | int, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            parts = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = array_counts.get(parts, -1) + 1
                array_counts[parts] = index
                table = (*parts, index)
            else:
                table = _in_array(parts, array_counts)
            found.append((table, number))
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            found.append(((*table, *_split_key(assignment.group(1))), number))
    return found


def _in_array(parts: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> tuple[str | int, ...]:
    """`[instances.options]` after `[[instances]]` is a table of the array's last element (TOML): give it
    that element's index, as pydantic's error locations do (`instances.0.options`)."""
    for length in range(len(parts) - 1, 0, -1):
        if parts[:length] in arrays:
            return (*parts[:length], arrays[parts[:length]], *parts[length:])
    return parts


def locate(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line that defines `loc`, or the closest enclosing key that exists in the file."""
    lines = _key_lines(text)
    for length in range(len(loc), 0, -1):
        prefix = loc[:length]
        for path, number in lines:
            if path == prefix:
                return number
    return None


def load_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigFileError(path, f"cannot read: {error.strerror or error}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        raise ConfigFileError(path, f"not valid TOML: {error}", line=int(match.group(1)) if match else None) from None


def validate(model: type[Model], data: Any, path: Path | str, text: str, base: tuple[str | int, ...] = ()) -> Model:
    """Validate with pydantic; every error becomes one problem of a ConfigFileError, each at its line."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems: list[ConfigFileError] = []
        seen: set[tuple[str, str]] = set()
        for item in error.errors():
            # pydantic names a bad dict key "<key>.[key]": the admin only needs the key itself.
            loc = (*base, *(part for part in item["loc"] if part != "[key]"))
            key = ".".join(str(part) for part in loc)
            if (key, item["msg"]) in seen:
                continue
            seen.add((key, item["msg"]))
            problems.append(ConfigFileError(path, item["msg"], key=key, line=locate(text, loc)))
        raise problems[0].with_more(problems[1:]) from None


def load_model(model: type[Model], path: Path) -> Model:
    data, text = load_toml(path)
    return validate(model, data, path, text)
