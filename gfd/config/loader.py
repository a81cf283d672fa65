"""Merging flags, environment and the config file: flag > env > file > default (upstream urfave/cli)."""

from __future__ import annotations

import argparse
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from gfd import UPSTREAM_VERSION, __version__
from gfd.config.errors import ConfigError
from gfd.config.model import GFD_OPTIONS, Config
from gfd.config.options import Option

T = TypeVar("T")


@dataclass(frozen=True)
class CommandLine:
    """What flags and environment set, parsed once per process (the file is re-read on reload)."""

    given: Mapping[str, Any]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError("command line", "", message, "see --help")


# Each program's --help description, and the upstream program and release it replaces.
_DEVICE_PLUGIN_REPO = f"{UPSTREAM_VERSION} (NVIDIA/k8s-device-plugin)"
_PROGRAMS = {
    "gpu-feature-discovery": ("GPU Feature Discovery: generate labels for NVIDIA devices",
                              f"gpu-feature-discovery {_DEVICE_PLUGIN_REPO}"),
    "nvidia-device-plugin": ("NVIDIA device plugin for Kubernetes", f"nvidia-device-plugin {_DEVICE_PLUGIN_REPO}"),
    "config-manager": ("Select this node's config by its node label and signal the main process",
                       f"config-manager {_DEVICE_PLUGIN_REPO}"),
    "mps-control-daemon": (None, f"mps-control-daemon {_DEVICE_PLUGIN_REPO}"),
    "nvidia-dra-plugin": ("DRA driver gpu.nvidia.com: ResourceSlices and the kubelet DRA plugin",
                          "gpu-kubelet-plugin v0.5.0-dev (kubernetes-sigs/dra-driver-nvidia-gpu)"),
}


def version_line(prog: str) -> str:
    """Ours, and the upstream release a program follows (flags, labels, behaviour)."""
    upstream = _PROGRAMS.get(prog, (None, ""))[1]
    follows = f" (follows NVIDIA {upstream})" if upstream else ""
    return f"{prog} {__version__}{follows}"


class _Version(argparse.Action):
    """Prints the version line as it is (argparse's own action wraps it to the terminal's width)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> NoReturn:
        print(version_line(parser.prog))
        parser.exit()


def _build_parser(options: Sequence[Option], prog: str) -> _Parser:
    description = _PROGRAMS.get(prog, (None, ""))[0]
    if prog in ("gpu-feature-discovery", "nvidia-device-plugin"):  # the programs with a doctor (gfd.doctor)
        description = f"{description}. Subcommand: `doctor` checks this node's set-up (driver, device nodes, " \
                      "container runtime, kubelet, NFD) and says what would fix it (`doctor --help`)"
    elif prog.endswith(" doctor"):
        description = "Check this node's set-up for NVIDIA GPUs in Kubernetes: each check says ok, warning, " \
                      "failed or skipped, what it read, and what would fix it"
    env_only = [f"{', '.join(o.envs)}: {_described(o)}" for o in options if not o.flags]
    parser = _Parser(prog=prog, description=description, allow_abbrev=False,
                     epilog="environment only: " + "; ".join(env_only) if env_only else None)
    # `-v` is --version unless the program declares klog's verbosity flag (`-v`/`--v`) itself.
    klog_verbosity = any("--v" in o.flags for o in options)
    parser.add_argument("--version", *(() if klog_verbosity else ("-v",)), action=_Version, nargs=0,
                        help="show the version and exit")
    for opt in options:
        if not opt.flags:
            continue  # env-only (upstream has no flag for it)
        kwargs: dict[str, Any] = {"dest": opt.dest, "default": None,
                                  "help": f"{_described(opt)[:-1]}; env: {', '.join(opt.envs)})"}
        if opt.kind == "bool":
            parser.add_argument(*_spellings(opt), nargs="?", const="true", metavar="BOOL", **kwargs)
        else:
            parser.add_argument(*_spellings(opt), metavar=opt.kind.upper(), **kwargs)
    return parser


def _spellings(opt: Option) -> list[str]:
    # Go's flag syntax also accepts a single dash before long names (`-oneshot`).
    return [*opt.flags, *("-" + f[2:] for f in opt.flags if f.startswith("--"))]


def _described(opt: Option) -> str:
    return f"{opt.help} (accepted: {opt.accepted}; default: {opt.default_help or repr(opt.show_default())})"


def _unknown_flag(arg: str, options: Sequence[Option]) -> ConfigError:
    """Upstream's words for a flag nobody declared, with the closest declared flag when there is one."""
    name = arg.split("=", 1)[0]
    known = ["--help", "--version", *(f for o in options for f in o.flags if f.startswith("--"))]
    close = difflib.get_close_matches("--" + name.lstrip("-"), known, n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError("command line", "", f"flag provided but not defined: {name}{hint}", "see --help")


def _split_bool_values(argv: Sequence[str], options: Sequence[Option]) -> list[str]:
    """Bool flags take a value only as `--flag=value`; `--flag value` leaves `value` alone (as Go does).

    argparse would swallow the next word for an optional value, so a bare bool flag gets an explicit
    `=true` before parsing.
    """
    bool_names = {n for o in options if o.kind == "bool" for f in o.flags for n in (f, "-" + f[2:])}
    return [f"{arg}=true" if arg in bool_names else arg for arg in argv]


def parse_command_line(
    argv: Sequence[str], environ: Mapping[str, str], options: Sequence[Option] = GFD_OPTIONS,
    prog: str = "gpu-feature-discovery",
) -> CommandLine:
    parser = _build_parser(options, prog)
    namespace, extra = parser.parse_known_args(_split_bool_values(argv, options))
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        raise _unknown_flag(unknown[0], options)
    given: dict[str, Any] = {}
    for opt in options:
        flag_value = getattr(namespace, opt.dest, None)
        if flag_value is not None:
            given[opt.dest] = _convert(opt, flag_value, f"flag {opt.flags[0]}")
            continue
        for env in opt.envs:
            if env not in environ:
                continue
            text = environ[env]
            if text == "" and opt.kind in ("duration", "int", "float", "intlist"):
                break  # urfave/cli ignores an empty numeric env var (default kept)
            if text == "" and opt.kind == "bool":
                given[opt.dest] = False
            else:
                given[opt.dest] = _convert(opt, text, f"environment variable {env}")
            break
    return CommandLine(given)


def _convert(opt: Option, text: str, source: str) -> Any:
    try:
        return opt.parse_text(text)
    except ValueError as e:
        raise ConfigError(source, opt.name, str(e), opt.accepted) from e


def load_config(cmdline: CommandLine) -> Config:
    """GFD's effective config; re-run on SIGHUP to re-read the file."""
    return load(cmdline, GFD_OPTIONS, Config)


def load(cmdline: CommandLine, options: Sequence[Option], factory: Callable[..., T]) -> T:
    """Defaults < config file < env < flags, into `factory` (GFD's Config or the plugin's)."""
    values: dict[str, Any] = {o.dest: o.default for o in options}
    explicit = set(cmdline.given)
    path = cmdline.given.get("config_file", "")
    kwargs: dict[str, Any] = {}
    if path:
        from gfd.config.file import read_config_file  # only runs with a config file

        file_values, sharing, imex = read_config_file(path, options)
        values.update(file_values)
        explicit |= set(file_values)
        # The file's sections, for the programs that read them (the DRA driver reads only its options).
        accepted = inspect.signature(factory).parameters
        kwargs = {name: section for name, section in (("sharing", sharing), ("imex", imex)) if name in accepted}
    values.update(cmdline.given)
    return factory(**values, **kwargs, explicit=frozenset(explicit))
