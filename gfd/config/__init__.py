"""Configuration shared by every entry point: the v1 file, flags and env, merged once per load."""

from gfd.config.errors import ConfigError
from gfd.config.loader import CommandLine, load_config, parse_command_line
from gfd.config.model import Config, ReplicatedResource, ReplicatedResources, Sharing

__all__ = [
    "CommandLine",
    "Config",
    "ConfigError",
    "ReplicatedResource",
    "ReplicatedResources",
    "Sharing",
    "load_config",
    "parse_command_line",
]
