"""Capped exponential backoff with full jitter, for NVML re-initialisation and API retries."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 1.0, cap: float = 60.0, jitter: bool = True) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        """Seconds to wait after one more failure: initial * 2^n, capped, jittered into [d/2, d]."""
        delay = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        # Jitter keeps thousands of nodes that failed together (an API outage) from retrying in lock-step.
        return random.uniform(delay / 2, delay) if self.jitter else delay

    def reset(self) -> None:
        self.failures = 0
