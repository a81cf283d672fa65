"""What every program's entry point does first: take its arguments and environment, load its config, set
up logging from it; a config that cannot be loaded is one line on stderr and exit status 1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from gfd import logs
from gfd.config.errors import ConfigError


class LoggingOptions(Protocol):
    @property
    def log_format(self) -> str: ...

    @property
    def log_level(self) -> str: ...


C = TypeVar("C", bound=LoggingOptions)


def process_arguments(argv: Sequence[str] | None,
                      environ: Mapping[str, str] | None) -> tuple[list[str], Mapping[str, str]]:
    """A program's arguments and environment: the process's own unless a caller (a test) passes them."""
    return list(sys.argv[1:] if argv is None else argv), os.environ if environ is None else environ


def configured(prog: str, load: Callable[[], C], log_level: str = "") -> C | None:
    """The loaded config with logging set up from it (at `log_level` when given), or None after one line
    on stderr naming the problem."""
    try:
        config = load()
    except (ConfigError, ValueError) as e:  # ValueError: config-manager's upstream start-up checks
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    logs.configure(config.log_format, log_level or config.log_level)
    return config
