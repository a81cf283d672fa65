"""How an option is declared: once, as a field of the program's config dataclass (its name, type and
default), with flag spellings, env vars in precedence order, config-file key, help and accepted values in
the field's metadata. argparse, env and file parsing (gfd.config.loader, gfd.config.file) and `--help` are
derived from it by `options_of`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gfd.config.duration import INFINITE_NS, format_duration, parse_duration

_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_go_bool(text: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f'parsing "{text}": invalid syntax')


# Durations are bounded: 0 or 1ns would be a busy loop, and a huge one overflows timers.
MIN_DURATION_NS = 10_000_000
MAX_DURATION_NS = 8760 * 3600 * 10**9


_METADATA_KEY = "option"


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # empty for an env-only option
    envs: tuple[str, ...]  # in precedence order
    kind: str  # "str" | "bool" | "duration" | "int" | "float" | "list" | "intlist"
    default: Any
    file_key: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    # The problem text for a value outside `choices` ({} is the value): upstream's wording where it has one.
    invalid: str = 'invalid value "{}"'
    # What --help says of the default when the field's default alone would mislead (it depends on other options).
    default_help: str = ""
    dest: str = ""  # the config attribute; set by options_of from the field's name

    def field(self, **changes: Any) -> Any:
        """This option (with a program's own env vars, flags or help as `changes`) as a config field."""
        option = replace(self, **changes)
        return dataclasses.field(default=option.default, metadata={_METADATA_KEY: option})

    @property
    def name(self) -> str:
        return self.flags[0].lstrip("-") if self.flags else self.dest.replace("_", "-")

    def parse_text(self, text: str) -> Any:
        """Convert a flag or env string; ValueError names what went wrong."""
        parsers: dict[str, Callable[[str], Any]] = {
            "str": str,
            "bool": parse_go_bool,
            "duration": parse_duration,
            "int": int,
            "float": float,
            # Comma-separated lists, as urfave/cli StringSlice / IntSlice flags and env vars.
            "list": lambda t: tuple(i.strip() for i in t.split(",") if i.strip()),
            "intlist": lambda t: tuple(int(i) for i in t.split(",") if i.strip()),
        }
        value = parsers[self.kind](text)
        self.check_value(value)
        return value

    def check_value(self, value: Any) -> None:
        """ValueError for a value outside the option's accepted set (choices, or the duration bounds)."""
        if self.kind == "duration" and not (MIN_DURATION_NS <= value <= MAX_DURATION_NS or value == INFINITE_NS):
            raise ValueError(f"{format_duration(value) if value >= 0 else f'{value}ns'} is out of range")
        for item in value if isinstance(value, tuple) else (value,):
            if self.choices is not None and item not in self.choices:
                raise ValueError(self.invalid.format(item))

    @property
    def accepted(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        return {
            "bool": "true, false",
            "duration": "a Go duration from 10ms to 8760h such as 60s or 1m30s, or infinite",
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "list": "a comma-separated list",
            "intlist": "a comma-separated list of integers",
        }[self.kind]

    def show_default(self) -> str:
        if self.kind == "bool":
            return str(self.default).lower()  # as Go prints it, and as the accepted values are spelt
        if self.kind == "duration":
            return format_duration(self.default)
        return ",".join(map(str, self.default)) if isinstance(self.default, tuple) else str(self.default)

    def show(self, value: Any) -> Any:
        """A config value as the "Running with config" line shows it (durations as Go prints them)."""
        if self.kind == "duration":
            return format_duration(value)
        return list(value) if isinstance(value, tuple) else value

    @property
    def config_name(self) -> str:
        """The option's name in upstream's config file (`migStrategy`), else its flag's name in camelCase."""
        if self.file_key:
            return self.file_key[-1]
        first, *rest = self.name.split("-")
        return first + "".join(word.capitalize() for word in rest)


def running_config(config: Any, options: Sequence[Option]) -> dict[str, Any]:
    """Every option's effective value by its config name: the program's "Running with config" line (upstream
    logs its whole config at start)."""
    return {opt.config_name: opt.show(getattr(config, opt.dest)) for opt in options}


def options_of(config_class: type) -> tuple[Option, ...]:
    """The options a config dataclass declares, in field order."""
    return tuple(replace(f.metadata[_METADATA_KEY], dest=f.name)
                 for f in dataclasses.fields(config_class) if _METADATA_KEY in f.metadata)
