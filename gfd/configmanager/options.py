"""config-manager's options: upstream's flags, env vars and defaults (cmd/config-manager), declared as
the fields of its settings like every program's (gfd.config.options)."""

from __future__ import annotations

from dataclasses import dataclass

from gfd.config import common
from gfd.config.options import Option, options_of

FALLBACKS = ("named", "single", "empty")


@dataclass(frozen=True)
class Settings:
    oneshot: bool = Option(("--oneshot",), ("ONESHOT",), "bool", False,
                           help="check and update the config only once and then exit").field()
    kubeconfig: str = common.KUBECONFIG.field()
    node_name: str = common.NODE_NAME.field()
    node_label: str = Option(("--node-label",), ("NODE_LABEL",), "str", "nvidia.com/device-plugin.config",
                             help="the node label that selects a config").field()
    srcdir: str = Option(("--config-file-srcdir",), ("CONFIG_FILE_SRCDIR",), "str", "",
                         help="the directory holding the available config files").field()
    dst: str = Option(("--config-file-dst",), ("CONFIG_FILE_DST",), "str", "",
                      help="the config file path the main process reads (made a symlink)").field()
    default: str = Option(("--default-config",), ("DEFAULT_CONFIG",), "str", "",
                          help="the config to use when the label is not set").field()
    fallbacks: tuple[str, ...] = Option(("--fallback-strategies",), ("FALLBACK_STRATEGIES",), "list", (),
                                        choices=FALLBACKS,
                                        help="ordered fallbacks when neither the label nor a default names a "
                                             "config").field()
    send_signal: bool = Option(("--send-signal",), ("SEND_SIGNAL",), "bool", True,
                               help="signal <process-to-signal> once the config changed").field()
    signal: int = Option(("--signal",), ("SIGNAL",), "int", 1, help="the signal number to send (1 = SIGHUP)").field()
    process: str = Option(("--process-to-signal",), ("PROCESS_TO_SIGNAL",), "str", "nvidia-device-plugin",
                          help="the program to signal (its name or path; found as argv[0] or as the script a "
                               "Python interpreter runs)").field()
    log_format: str = common.LOG_FORMAT.field(envs=("GFD_LOG_FORMAT",))
    log_level: str = common.LOG_LEVEL.field(envs=("GFD_LOG_LEVEL",))
    explicit: frozenset[str] = frozenset()

    def check(self) -> None:
        """Upstream's start-up validation, in its order and with its messages."""
        for value, flag in ((self.node_name, "node-name"), (self.node_label, "node-label"),
                            (self.srcdir, "config-file-srcdir"), (self.dst, "config-file-dst")):
            if not value:
                raise ValueError(f"invalid <{flag}>: must not be empty string ({_how_to_set(flag)})")
        if self.send_signal and not self.process:
            raise ValueError("invalid <process-to-signal>: must not be empty string when --send-signal is set")


CONFIG_MANAGER_OPTIONS = options_of(Settings)


def _how_to_set(flag: str) -> str:
    """Where an empty required value can be given: its flag and env vars (the chart sets NODE_NAME from the
    pod's spec.nodeName)."""
    option = next(o for o in CONFIG_MANAGER_OPTIONS if o.name == flag)
    return f"set {option.flags[0]} or {' or '.join(option.envs)}"
