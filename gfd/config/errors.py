"""One error type for every configuration problem, rendered as one line."""

from __future__ import annotations


class ConfigError(Exception):
    """A bad config file, flag or environment value.

    `source` names where the value came from (`config file /etc/gfd.yaml`, `flag --mig-strategy`,
    `environment variable MIG_STRATEGY`), `field` the option, `accepted` what would have been valid.
    """

    def __init__(self, source: str, field: str, problem: str, accepted: str = "") -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.accepted = accepted
        text = f"{source}: {field}: {problem}" if field else f"{source}: {problem}"
        text = " ".join(text.split())  # one line, whatever a value contained
        if accepted:
            text += f" (accepted: {accepted})"
        super().__init__(text)


def short(value: object, limit: int = 60) -> str:
    """A bad value quoted in an error: its repr, cut to a short prefix (never a multi-megabyte line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
