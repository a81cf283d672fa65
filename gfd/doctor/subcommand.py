"""`<program> doctor`: the subcommand both daemons' entry points accept, routed before their own parsing.
Light to import (a daemon's start-up pays nothing for the checks it does not run)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gfd.config.options import Option
from gfd.program import process_arguments

Main = Callable[[list[str], Mapping[str, str]], int]


class EntryPoint(Protocol):
    """A console script's main: the process's arguments and environment unless a test passes them."""

    def __call__(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int: ...


def with_doctor(prog: str, options: Callable[[], Sequence[Option]],
                driver: str = "device-plugin") -> Callable[[Main], EntryPoint]:
    """`prog doctor ...` runs the doctor with the program's `options` and the checks about its `driver`
    ("device-plugin", GFD's too, or "dra": gfd.doctor.checks); anything else runs the program."""
    def wrap(main: Main) -> EntryPoint:
        @functools.wraps(main)
        def entry_point(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
            args, env = process_arguments(argv, environ)
            if args[:1] == ["doctor"]:
                from gfd.doctor.cli import main as doctor

                return doctor(prog, options(), args[1:], env, driver)
            return main(args, env)

        return entry_point

    return wrap
