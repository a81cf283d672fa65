"""The long-running GFD: labels every sleep interval, survives NVML and API failures, reloads on SIGHUP.

Differences from upstream, on purpose (see README): NVML is initialised once and re-initialised with
capped backoff when it is missing or fails; a failed pass keeps the labels last published instead of
exiting; outputs are rewritten only when the labels change; SIGHUP reloads without removing the
feature file; a config that fails to load on SIGHUP leaves the old one running.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from gfd import signals
from gfd.backoff import Backoff
from gfd.config import CommandLine, Config, ConfigError, load_config
from gfd.config.duration import INFINITE_NS
from gfd.discovery.errors import DiscoveryError, NvmlUnavailable
from gfd.discovery.session import NodeSource
from gfd.doctor.checks import Context
from gfd.doctor.startup import check_at_start
from gfd.httpserver import AddressError, Health, serve
from gfd.labelling import label_node, lost_summary
from gfd.labels.compose import Labels
from gfd.labels.system import TIMESTAMP
from gfd.lifecycle import Lifecycle, Scope
from gfd.metrics import Metrics
from gfd.model import DeviceModel
from gfd.outputs import Output, OutputError
from gfd.outputs.choose import make_output, removed_on_stop

log = structlog.get_logger("gfd")

NVML_RETRY_CAP_S = 30.0
HEALTH_INTERVALS = 3
HEALTH_MIN_S = 30.0


@dataclass
class _Run:
    """What one config load owns, entered into its scope: a SIGHUP closes it and starts a new run with a
    new timestamp."""

    config: Config
    scope: Scope
    source: NodeSource
    output: Output
    started_at: int = field(default_factory=lambda: int(time.time()))


class Daemon:
    def __init__(self, cmdline: CommandLine, config: Config, metrics: Metrics | None = None) -> None:
        self.cmdline = cmdline
        self.config = config
        self.metrics = metrics or Metrics()
        self.life = Lifecycle("gpu-feature-discovery", main="labelling loop")
        self.wake = threading.Event()
        self.life.on_stop(self.wake.set)
        self.reload_requested = False
        self.resync_requested = False
        self.nvml_backoff = Backoff(initial=1.0, cap=NVML_RETRY_CAP_S)
        self.output_backoff = Backoff(initial=1.0, cap=60.0)
        self.nvml_retry_at = 0.0
        self.output_retry_at = 0.0
        self.published: Labels | None = None  # last label set written successfully
        self.last_logged: Labels = {}  # the set the last "labels published" line compared against (across reloads)
        self.nvml_ever_up = False
        self.last_success: float | None = None
        self.started = time.monotonic()
        self.health_min_s = HEALTH_MIN_S
        self.current: _Run | None = None
        self.lost = ""  # summary of the GPUs lost in the last read
        self.seen_exceptions: set[str] = set()
        self.setup_checked = False

    # -- control ----------------------------------------------------------------------------------
    def request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def stop(self) -> None:
        self.life.stop()

    @property
    def stopping(self) -> bool:
        return self.life.stopping.is_set()

    def request_resync(self) -> None:
        """What was published is gone (someone deleted the NodeFeature object): write it again now."""
        self.resync_requested = True
        self.wake.set()

    def healthy(self) -> Health:
        """Fails when no cycle has produced and published labels within a few intervals."""
        interval = self.config.sleep_interval_ns
        grace = float("inf") if interval == INFINITE_NS else max(self.health_min_s, HEALTH_INTERVALS * interval / 1e9)
        since = self.last_success if self.last_success is not None else self.started
        age = time.monotonic() - since
        if age <= grace or (interval == INFINITE_NS and self.last_success is not None):
            # A lost GPU needs a node reboot, not a restart of this pod: reported, not failed.
            return Health(True, f"ok; degraded: {self.lost}" if self.lost else "ok")
        return Health(False, f"no successful labelling cycle for {age:.0f}s")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        with self.life:
            status = self._loop(self.life)
        log.info("Exiting")
        return self.life.exit_status(status)

    def _loop(self, life: Lifecycle) -> int:
        try:
            run = self._start_run(self.config)
        except (ConfigError, OutputError) as e:
            log.error(str(e))  # a setup problem (no cluster credentials, no node name): not retried
            return 1
        try:
            if self.config.metrics_address:
                serve(life, self.config.metrics_address, self.metrics.registry, self.healthy)
        except AddressError as e:
            log.error(str(e))
            return 1
        clean = False
        try:
            while not self.stopping:
                cycle_start = time.monotonic()
                self.cycle(run)
                if run.config.oneshot:
                    break
                self._wait(cycle_start + run.config.sleep_interval_ns / 1e9)
                if self.reload_requested and not self.stopping:
                    run = self._reload(run)
            clean = True
        except _NoRun:
            return 1
        finally:
            # Labels are removed only on a deliberate, clean stop: never on a crash path.
            self._finish(self.current, remove=clean)
        return 0

    def _wait(self, deadline: float) -> None:
        """Sleep until the interval ends, a retry is due, or a signal arrives."""
        while not (self.stopping or self.reload_requested or self.resync_requested):
            wake_at = min([deadline] + [t for t in (self.nvml_retry_at, self.output_retry_at) if t])
            remaining = wake_at - time.monotonic()
            if remaining <= 0:
                return
            self.wake.wait(remaining)
            self.wake.clear()

    def _start_run(self, config: Config) -> _Run:
        """NVML's source, then the output, entered into a new scope (closed again if the output fails)."""
        scope = self.life.scope("run")
        try:
            source = scope.enter("NVML", NodeSource.for_gfd(config))
            output = make_output(config, scope, self.metrics, self.request_resync)
            scope.callback("output", output.close)
        except BaseException:
            scope.close()
            raise
        self.config = config
        run = _Run(config, scope, source, output)
        self.current = run
        self.published = None
        self.nvml_retry_at = self.output_retry_at = 0.0
        return run

    def _reload(self, run: _Run) -> _Run:
        self.reload_requested = False
        try:
            config = load_config(self.cmdline)
        except Exception as e:  # any failure to load keeps the old config: never a crash, never lost labels
            self.metrics.reload_failures.inc()
            log.error("reload failed; keeping the running config", error=str(e) if isinstance(e, ConfigError)
                      else f"{type(e).__name__}: {e}")
            return run
        # The old run lets go of NVML (and a simulation) before the new one takes it.
        run.scope.close()
        self.current = None
        try:
            new_run = self._start_run(config)
        except Exception as e:  # the daemon goes on as it was; an unforeseen failure with its traceback
            self.metrics.reload_failures.inc()
            if isinstance(e, (ConfigError, OutputError)):
                log.error("reload failed; keeping the running config", error=str(e))
            else:
                log.exception("reload failed unexpectedly; keeping the running config")
            try:
                return self._start_run(run.config)
            except (ConfigError, OutputError) as again:  # what started before cannot now (credentials gone)
                log.error("the running config cannot be started again; exiting", error=str(again))
                raise _NoRun from again
        log.info("config reloaded", config_file=config.config_file)
        return new_run

    def _finish(self, run: _Run | None, remove: bool) -> None:
        if run is None:
            return
        run.scope.close()
        if remove and removed_on_stop(run.config):
            run.output.remove()

    # -- one cycle --------------------------------------------------------------------------------
    def cycle(self, run: _Run) -> None:
        self.resync_requested = False
        start = time.perf_counter()
        try:
            labels = self._labels(run)
            ok = labels is not None and self._publish(run, labels)
        except Exception as e:  # a bug or an unforeseen fault: the loop and the published labels survive it
            ok = False
            self._unexpected(run, e)
        self.metrics.cycle_duration.observe(time.perf_counter() - start)
        self.metrics.cycles.labels(result="success" if ok else "error").inc()
        if ok:
            self.last_success = time.monotonic()
            self.metrics.last_success.set(time.time())

    def _labels(self, run: _Run) -> Labels | None:
        """This cycle's labels, or None to leave the published ones as they are."""
        self._ensure_nvml(run)
        if not run.source.ready and (run.config.fail_on_init_error or self.nvml_ever_up):
            return None  # nothing yet, or keep the last good set: never flap to a GPU-less set
        try:
            result = label_node(run.source, run.config, run.started_at)
        except DiscoveryError as e:
            self.metrics.nvml_errors.labels(call=e.call or "unknown", error=e.error or "unknown").inc()
            log.error("labelling pass failed; keeping the published labels and re-initialising NVML",
                      error=str(e))
            run.source.close_nvml()
            self.metrics.nvml_up.set(0)
            self.nvml_retry_at = time.monotonic() + self.nvml_backoff.next_delay()
            return None
        for call, error in result.failed_queries:
            self.metrics.nvml_errors.labels(call=call, error=error).inc()
        if not self.setup_checked:  # once per process, with the first node read
            self.setup_checked = True
            check_at_start(result.model, self.metrics.setup_check, context=Context(
                host_root=run.source.host_root, driver_root=run.config.container_driver_root))
        self._note_lost(result.model)
        if result.labels is None:
            log.error("labelling pass failed; keeping the published labels", error=result.problem)
        return result.labels

    def _unexpected(self, run: _Run, error: Exception) -> None:
        kind = type(error).__name__
        self.metrics.cycle_exceptions.labels(type=kind).inc()
        if kind in self.seen_exceptions:
            log.error("labelling pass failed; keeping the published labels", error=f"{kind}: {error}")
        else:  # the traceback once per kind: enough to report it, not a log flood
            self.seen_exceptions.add(kind)
            log.exception("labelling pass failed unexpectedly; keeping the published labels")
        run.source.close_nvml()  # start the next pass from a fresh NVML session
        self.nvml_retry_at = time.monotonic() + self.nvml_backoff.next_delay()

    def _note_lost(self, model: DeviceModel) -> None:
        """Lost GPUs leave the labels (they describe the GPUs that can be used); say so when that changes."""
        lost = lost_summary(model) if model.lost_gpus else ""
        if lost != self.lost:
            if lost:
                log.error("GPUs lost; labelling the remaining GPUs", lost=lost)
            else:
                log.info("no GPU is lost any more", was=self.lost)
            self.lost = lost
        self.metrics.gpus_lost.set(len(model.lost_gpus))

    def _ensure_nvml(self, run: _Run) -> None:
        if run.source.ready or time.monotonic() < self.nvml_retry_at:
            return
        try:
            run.source.open()
        except NvmlUnavailable as e:
            delay = self.nvml_backoff.next_delay()
            self.nvml_retry_at = time.monotonic() + delay
            event = log.warning if self.nvml_backoff.failures == 1 else log.debug
            event("NVML unavailable; retrying", error=run.source.init_failure(e), retry_in_s=round(delay, 1))
            self.metrics.nvml_errors.labels(call="nvmlInit", error=e.error).inc()
            return
        log.info("NVML initialised", after_failures=self.nvml_backoff.failures)
        self.nvml_backoff.reset()
        self.nvml_retry_at = 0.0
        self.nvml_ever_up = True
        self.metrics.nvml_up.set(1)

    def _publish(self, run: _Run, labels: Labels) -> bool:
        name = type(run.output).__name__
        if labels == self.published and not run.output.needs_resync():
            self.metrics.writes_skipped.inc()
            log.debug("labels unchanged; write skipped", output=name)  # debug: it happens every interval
            return True
        if time.monotonic() < self.output_retry_at:
            return False
        try:
            run.output.write(labels)  # a stop completes a write, or cancels its API request (gfd.kube)
        except OutputError as e:
            if self.stopping:
                log.info("writing labels interrupted by the stop", error=str(e))
                return False
            delay = max(self.output_backoff.next_delay(), e.retry_after or 0.0)
            self.output_retry_at = time.monotonic() + delay
            self.metrics.write_errors.labels(output=name).inc()
            log.error("writing labels failed; will retry", error=str(e), retry_in_s=round(delay, 1))
            return False
        self._log_changes(labels)
        self.published = labels
        self.output_backoff.reset()
        self.output_retry_at = 0.0
        self.metrics.writes.labels(output=name).inc()
        self.metrics.labels.set(len(labels))
        return True

    def _log_changes(self, labels: Labels) -> None:
        # Against the set last published, before a reload too: a SIGHUP that changes nothing says so.
        old, self.last_logged = self.last_logged, labels
        changed = sorted(k for k in labels.keys() | old.keys() if labels.get(k) != old.get(k))
        said: object = changed if len(changed) <= 20 else f"{len(changed)} keys"
        if changed in ([], [TIMESTAMP]):  # a new run has a new timestamp (upstream's), nothing else is news
            said = "nothing but the timestamp" if changed else "nothing"
        log.info("labels published", changed=said, count=len(labels))


class _NoRun(Exception):
    """Neither the reloaded config nor the running one could be started again."""


def run(cmdline: CommandLine, config: Config) -> int:
    daemon = Daemon(cmdline, config)
    signals.install(daemon.life, daemon.request_reload)
    return daemon.run()
