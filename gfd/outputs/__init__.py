"""Edges that write labels somewhere. They know nothing of GPUs."""

from __future__ import annotations

from typing import Protocol


class Output(Protocol):
    def write(self, labels: dict[str, str]) -> None: ...

    def needs_resync(self) -> bool:
        """True when the destination must be rewritten even if the labels did not change."""
        ...

    def remove(self) -> None:
        """Take back what was published, on a clean stop (only the feature file does)."""
        ...

    def close(self) -> None:
        """Stop whatever the output runs in the background (nothing for most)."""
        ...


class OutputError(Exception):
    """Writing the labels failed (file system or API); the message says where and why."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
