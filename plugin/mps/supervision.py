"""When to give up on an MPS control daemon and start it again, and how often to try.

Restarting a daemon ends its process group: its MPS servers, and with them every client's CUDA work on the GPU. So
one bad probe never does it:
- Every check (each CHECK_S) looks at the daemon without a command: its process, its socket, `.started`
  (`MpsDaemon.dead`). Only every ANSWER_EVERY_S is it sent a query (PROBE_TIMEOUT_S to answer): each query is a
  `Cmd:` line in its log on tmpfs, so a query a second would grow that log forever.
- Once a probe has failed, every check asks again; the daemon is restarted after THRESHOLD failed probes in a
  row. A daemon whose process is gone fails every probe at once: restarted after THRESHOLD checks (~3 s; a new
  client cannot reach it meanwhile anyway). A daemon that runs but does not answer (stalled) is restarted, its
  servers killed with it, only once it has not answered THRESHOLD queries in a row (at least THRESHOLD x
  PROBE_TIMEOUT_S, ~9 s to ~12 s): a daemon that does not answer cannot take a new client, so waiting longer
  keeps the GPU from new work, and a shorter stall (a loaded node) is outlasted. One success starts the count
  again.
- A restart that fails is tried again after a capped exponential backoff (gfd/backoff.py), not at every check.
- Logged once per change of state: not answering, restarting, the first failed restart, serving again; further
  failed attempts only at debug level.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from gfd.backoff import Backoff
from plugin.mps import MpsError
from plugin.mps.daemon import MpsDaemon

log = structlog.get_logger("plugin.mps")

CHECK_S = 1.0
THRESHOLD = 3
# The query is answered from the daemon's memory in milliseconds; 3 s tolerates a loaded node and keeps a round
# over several stalled daemons short (the checks of a node's daemons run one after the other).
PROBE_TIMEOUT_S = 3.0
ANSWER_EVERY_S = 60.0
RESTART_INITIAL_S = 1.0
RESTART_CAP_S = 60.0


class Supervised:
    """One daemon's supervision. `on_health(reason)` is told when it stops serving (once the threshold is
    crossed, or a client needed it and found it dead) and `on_health(None)` when it serves again. Not thread-safe:
    the caller holds a lock around `judge`, `restart_now` and `serving` (`probe` may run outside it)."""

    def __init__(self, daemon: MpsDaemon, on_health: Callable[[str | None], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.daemon, self.on_health, self.clock = daemon, on_health, clock
        self.failures = 0  # failed probes in a row
        self.down: str | None = None  # why it does not serve, once given up on; None while it may serve
        self.retry_at = 0.0
        self.backoff = Backoff(RESTART_INITIAL_S, RESTART_CAP_S)
        self.next_query = clock() + ANSWER_EVERY_S
        self.generation = 0  # restarts so far: a probe of an earlier daemon is not counted against a new one

    def probe(self) -> tuple[int, str | None]:
        """This check's verdict, without changing what `judge` decides on: (generation, why it failed or None)."""
        generation = self.generation
        if self.down is not None:
            return generation, None  # given up on: `judge` restarts it when the backoff allows
        reason = self.daemon.dead()
        now = self.clock()
        if reason is None and (self.failures or now >= self.next_query):
            self.next_query = now + ANSWER_EVERY_S
            reason = self.daemon.control.answers(PROBE_TIMEOUT_S)
        return generation, reason

    def judge(self, generation: int, reason: str | None) -> None:
        """Count a probe's verdict; restart the daemon when THRESHOLD probes in a row failed, or when it is down
        and its backoff has passed."""
        if generation != self.generation:
            return  # restarted since the probe
        if self.down is not None:
            if self.clock() >= self.retry_at:
                self._attempt()
            return
        if reason is None:
            if self.failures:
                log.info("MPS daemon answers again", name=self.daemon.name)
            self.failures = 0
            return
        self.failures += 1
        if self.failures == 1:
            log.warning("MPS daemon not answering", name=self.daemon.name, reason=reason, threshold=THRESHOLD)
        if self.failures >= THRESHOLD:
            self._give_up(reason)
            self._attempt()

    def serving(self) -> str | None:
        """None when a client may be given this daemon: not given up on, and not found dead now."""
        return self.down or self.daemon.dead()

    def restart_now(self, reason: str) -> None:
        """A client needs the daemon, which does not serve (`reason`): restarted at once, whatever the backoff;
        MpsError (one line) when it does not start, the next attempt backed off as any."""
        if self.down is None:
            self._give_up(reason)
        error = self._attempt()
        if error is not None:
            raise MpsError(f"the MPS daemon of {self.daemon.name} does not serve ({self.down}) and did not start "
                           f"again: {error}")

    def _give_up(self, reason: str) -> None:
        log.error("MPS daemon not serving; starting it again", name=self.daemon.name, reason=reason,
                  failed_probes=self.failures)
        self.down = reason
        self.on_health(reason)

    def _attempt(self) -> str | None:
        """One restart: None when it serves again, else why not (the next attempt backed off)."""
        self.generation += 1
        try:
            self.daemon.restart()
        except MpsError as e:
            delay = self.backoff.next_delay()
            self.retry_at = self.clock() + delay
            level = log.error if self.backoff.failures == 1 else log.debug
            level("MPS daemon did not start; retrying with backoff", name=self.daemon.name, error=str(e),
                  retry_in_s=round(delay, 1), attempts=self.backoff.failures)
            return str(e)
        log.info("MPS daemon serving again", name=self.daemon.name, attempts=self.backoff.failures + 1)
        self.down, self.failures = None, 0
        self.backoff.reset()
        self.next_query = self.clock() + ANSWER_EVERY_S
        self.on_health(None)
        return None
