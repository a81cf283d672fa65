"""Label value sanitising, exactly as upstream (internal/lm/resource.go)."""

from __future__ import annotations

import re

_DISALLOWED = re.compile(r"[^A-Za-z0-9\-_. ]")


def sanitise(text: str) -> str:
    """Drop every character outside `A-Za-z0-9-_.` and space, then join the words with `-`."""
    # After the substitution the only whitespace left is the ASCII space.
    return "-".join(_DISALLOWED.sub("", text).split())


def product(*parts: str) -> str:
    """Upstream skips empty raw parts, then sanitises each (a part may sanitise to nothing)."""
    return "-".join(sanitise(p) for p in parts if p)
