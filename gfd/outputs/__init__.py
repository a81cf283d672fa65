"""Edges that write labels somewhere. They know nothing of GPUs."""

from __future__ import annotations

from typing import Protocol


class Output(Protocol):
    def write(self, labels: dict[str, str]) -> None: ...

    def remove(self) -> None: ...


class OutputError(Exception):
    """Writing the labels failed (file system or API); the message says where and why."""
