"""Prometheus metrics of the selector (docs/design.md, "Prometheus metrics"), on a dedicated
registry.

Transport-level metrics (`pcm_select_requests_total`, `pcm_select_latency_seconds`) are
observed by the gRPC interceptor and the HTTP middleware; run-level ones by this class acting as
the application layer's `ServiceObserver`; `pcm_store_errors_total` by the store's `on_error`.

Semantics:
- `pcm_select_requests_total{transport,status}`: transport `grpc`|`http`; status the gRPC code
  name of the outcome on both transports: OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  UNAUTHENTICATED, DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL (HTTP statuses map 200->OK,
  422/400/413->INVALID_ARGUMENT, 404->NOT_FOUND, 409->ALREADY_EXISTS, 401->UNAUTHENTICATED,
  408->DEADLINE_EXCEEDED, 503->UNAVAILABLE, else INTERNAL).
- `pcm_select_latency_seconds{transport}`: server-side time of a Select call, body receipt and
  decoding to answer encoding, whatever its status.
- `pcm_chunks_total{run,task,phase,kept}`: chunks of committed (not replayed) selections,
  kept="true"|"false"; skipped trajectories' chunks count as kept="false".
- `pcm_keep_probability{run,task,phase}` / `pcm_phase_score{run,task,phase}`: the phase keep
  weight w_tp and EMA score s_tp after the run's last committed selection touching the task
  (a score is absent until the phase was first observed).
- `pcm_selection_rate{run}`: kept_chunks / total_chunks of the run's last committed selection
  (total includes skipped trajectories' chunks; the long-run rate is the ratio of
  `pcm_chunks_total` rates).
- `pcm_keep_fraction{run}`: kept chunks / chunks of informative trajectories of the run's last
  selection that kept any: the budget it chose (the adaptive budget's moves with each batch).
- `pcm_predicted_efficiency{run}`: with budget_rule auto, the predicted share of the full
  batch's progress per step of the run's last selection.
- `pcm_predicted_rate{run}`: with budget_objective rate, once the trainer's timings give its
  step time, the predicted progress per second of the run's last selection relative to keeping
  every chunk.
- `pcm_skipped_trajectories_total{run}`: trajectories of all-equal-outcome GRPO groups.
- `pcm_outcome_reports_total{run,status}`: accepted | replayed (same request_id again) |
  rejected (invalid report, unknown run or selection, or a request_id reused for another
  report; run="unknown" unless this process has seen the run).
- `pcm_success_rate{run,trainer}` and `pcm_trainer_stage_seconds{run,trainer,stage}`: from each
  accepted outcome report (stage rollout|select|backward from its timings). At most
  `max_trainers_per_run` trainer label values per run; later trainers count as "other".
- `pcm_store_errors_total{op}`: store operations that failed (op: the PhaseStore method).
- `pcm_select_staleness`: per committed selection, the commits the state it was computed on
  lacked (the answer's `staleness`; docs/design.md, "Consistency of shared runs").
- `pcm_select_conflicts_total{reason}`: selections computed again because the store refused
  the state they were computed on: `stale` (older than PCM_MAX_STALENESS commits) or `config`
  (the run's config changed meanwhile).
- `pcm_run_config_info{run,mode,score,weighting}`: 1 for the configuration the run's last
  committed selection used (which phase score and loss weighting it runs); one series per run.

Several worker processes (`pcm-selector serve --workers N`): prometheus-client's multiprocess
mode. Each worker writes its series to mmap files in PROMETHEUS_MULTIPROC_DIR and `/metrics`, on
whichever worker answers, aggregates all of them (`multiprocess_dir`), so the exposition is the
same as one process's that handled every call:
- counters and histograms (`pcm_select_requests_total`, `pcm_select_latency_seconds`,
  `pcm_chunks_total`, `pcm_skipped_trajectories_total`, `pcm_outcome_reports_total`,
  `pcm_trainer_stage_seconds`, `pcm_store_errors_total`, `pcm_select_staleness`,
  `pcm_select_conflicts_total`) are summed over workers (a worker that exits keeps its counts
  in the sum, so nothing goes down);
- the gauges (`pcm_keep_probability`, `pcm_phase_score`, `pcm_selection_rate`,
  `pcm_keep_fraction`, `pcm_predicted_efficiency`,
  `pcm_success_rate`, `pcm_run_config_info`) are `mostrecent`: the value the last worker set,
  which is the value after the last selection or report of the run (or trainer) on any worker,
  without a pid label. `pcm_run_config_info`'s previous configuration is set to 0 rather than
  removed (another worker may still hold it at 1).
Label caps, the run TTL and series removal apply per worker, as they do per selector host: each
worker labels at most `max_runs` runs (so `/metrics` shows at most workers x `max_runs`), and a
run's series go from a worker when it deletes the run, learns it is gone or has not seen it for
`run_ttl_s` (prometheus-client cannot remove a series from its files: the removed series are
recorded per worker, `removed_PID.json`, and left out of the aggregate). A series that comes
back on the same worker (a run re-created under its old id) continues from that worker's old
value instead of restarting at 0: counters still never go down.

Label values are bounded, so no request can make the exposition grow without limit: at most
`max_runs` run values (`PCM_MAX_RUNS`) and `max_tasks_per_run` task values per run
(`PCM_MAX_TASKS_PER_RUN`); further runs and tasks are counted under `other` in the counters
(`pcm_chunks_total`, `pcm_skipped_trajectories_total`, `pcm_outcome_reports_total`,
`pcm_trainer_stage_seconds`) and have no gauge series. Deleting a run removes every series
labelled with it (and frees its slot); so does this process learning that the run is gone (a
NOT_FOUND for it, e.g. after a DELETE through another selector), and so does not seeing the run
for `run_ttl_s` (`PCM_METRICS_RUN_TTL_S`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from pcm_contract.models import OutcomeReport
from selector_service.service import SelectEvent
from selector_service.settings import Settings

TRANSPORTS = ("grpc", "http")
SELECT_STATUSES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "UNAVAILABLE",
                   "INTERNAL")
REPORT_STATUSES = ("accepted", "replayed", "rejected")
STAGES = ("rollout", "select", "backward")
# The PhaseStore methods: the `op` values stores report through on_error (pre-set to 0).
STORE_OPS = ("ping", "put_config", "get_config", "delete_run", "load", "get_request",
             "commit_select", "reconcile_select", "record_report", "history")
STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFLICT_REASONS = ("stale", "config")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)
OTHER = "other"  # the label value of runs, tasks and trainers over their caps
OTHER_TRAINER = OTHER
UNKNOWN_RUN = "unknown"
# Gauges across worker processes: the most recently set value (the state after the last event).
GAUGE_MODE: Literal["mostrecent"] = "mostrecent"
REMOVED_PREFIX = "removed_"  # removed_PID.json: the series worker PID removed

# A series: (family name as in the multiprocess files, sorted (label name, value) pairs).
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _RunSeries:
    """The series this process exports for one run label value."""

    last_seen: float
    series: set[tuple[Any, tuple[str, ...]]] = field(default_factory=set)
    trainers: set[str] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)
    config: tuple[str, str, str] | None = None
    # (metric, label values) -> its child: a select updates its series without a labels()
    # lookup each (they go with the entry when the run's series are dropped)
    children: dict[tuple[Any, tuple[str, ...]], Any] = field(default_factory=dict)


def status_of_http(code: int) -> str:
    """The gRPC-style status name used as `status` label for an HTTP status code."""
    if 200 <= code < 300:
        return "OK"
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
            408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS", 413: "INVALID_ARGUMENT",
            422: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}.get(code, "INTERNAL")


class Metrics:
    """All selector metrics; implements `ServiceObserver`. Thread-safe."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None,
                 max_trainers_per_run: int = 64, *, max_tasks_per_run: int = 32,
                 max_runs: int = 32, run_ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic,
                 multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: this process is one worker of several, whose metrics live in
        that directory (PROMETHEUS_MULTIPROC_DIR, which must have been set before
        prometheus_client was first imported); `render()` aggregates all workers'."""
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
                raise RuntimeError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set "
                                   "before prometheus_client is first imported")
            # Removal is done here (removed_PID.json); the in-process child still goes.
            warnings.filterwarnings("ignore", category=UserWarning,
                                    message="Removal of labels has not been implemented")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_trainers_per_run = max_trainers_per_run
        self.max_tasks_per_run = max_tasks_per_run
        self.max_runs = max_runs
        self.run_ttl_s = run_ttl_s
        self._clock = clock
        r = self.registry
        self.select_requests = Counter(
            "pcm_select_requests_total", "Select calls by transport and status (gRPC code name).",
            ["transport", "status"], registry=r)
        self.select_latency = Histogram(
            "pcm_select_latency_seconds", "Server-side Select latency.", ["transport"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.chunks = Counter(
            "pcm_chunks_total", "Chunks of committed selections, kept for backward or not.",
            ["run", "task", "phase", "kept"], registry=r)
        self.keep_probability = Gauge(
            "pcm_keep_probability", "Phase keep weight w_tp after the last selection.",
            ["run", "task", "phase"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.phase_score = Gauge(
            "pcm_phase_score", "Online phase score s_tp (EMA of the run's score: learning "
            "signal or success-failure action variance).",
            ["run", "task", "phase"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.run_config = Gauge(
            "pcm_run_config_info", "1 for the mode, phase score and weighting of the run's last "
            "selection.", ["run", "mode", "score", "weighting"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.selection_rate = Gauge(
            "pcm_selection_rate", "kept_chunks / total_chunks of the run's last selection.",
            ["run"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.keep_fraction = Gauge(
            "pcm_keep_fraction", "Kept chunks / chunks of informative trajectories of the run's "
            "last selection: the budget it chose.", ["run"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.predicted_efficiency = Gauge(
            "pcm_predicted_efficiency", "budget_rule auto: the predicted share of the full "
            "batch's progress per step of the run's last selection.", ["run"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.predicted_rate = Gauge(
            "pcm_predicted_rate", "budget_objective rate: the predicted progress per second of "
            "the run's last selection relative to keeping every chunk.", ["run"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.skipped_trajectories = Counter(
            "pcm_skipped_trajectories_total",
            "Trajectories skipped as uninformative (GRPO group with all-equal outcomes).",
            ["run"], registry=r)
        self.outcome_reports = Counter(
            "pcm_outcome_reports_total", "Outcome reports: accepted, replayed or rejected.",
            ["run", "status"], registry=r)
        self.success_rate = Gauge(
            "pcm_success_rate", "Success rate of the trainer's last accepted outcome report.",
            ["run", "trainer"], registry=r,
            multiprocess_mode=GAUGE_MODE)
        self.trainer_stage = Histogram(
            "pcm_trainer_stage_seconds", "Trainer step time per stage, from outcome reports.",
            ["run", "trainer", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.store_errors = Counter(
            "pcm_store_errors_total", "Failed phase-state store operations.", ["op"], registry=r)
        self.select_staleness = Histogram(
            "pcm_select_staleness", "Commits the state a committed selection was computed on "
            "lacked.", buckets=STALENESS_BUCKETS, registry=r)
        self.select_conflicts = Counter(
            "pcm_select_conflicts_total", "Selections computed again: the store refused their "
            "state (stale beyond the bound, or of another config).", ["reason"], registry=r)

        self._lock = threading.Lock()
        # (transport, status) -> the children of pcm_select_requests_total and
        # pcm_select_latency_seconds (these series are never removed)
        self._select_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        # run label value -> its series (every (metric, label values) labelled with it)
        self._runs: dict[str, _RunSeries] = {}
        # Multiprocess mode: the series this worker removed (left out of the aggregate) and the
        # registry /metrics renders, which aggregates every worker's files.
        self._removed: set[SeriesKey] = set()
        self._exposition = self.registry
        if multiprocess_dir is not None:
            self._removed_path = Path(multiprocess_dir) / f"{REMOVED_PREFIX}{os.getpid()}.json"
            self._exposition = CollectorRegistry(auto_describe=False)
            self._exposition.register(WorkersCollector(multiprocess_dir))
        for transport in TRANSPORTS:
            self.select_latency.labels(transport)
            self.select_requests.labels(transport, "OK")
        for op in STORE_OPS:
            self.store_errors.labels(op)
        for reason in CONFLICT_REASONS:
            self.select_conflicts.labels(reason)

    @classmethod
    def from_settings(cls, settings: Settings, registry: CollectorRegistry | None = None, *,
                      multiprocess_dir: str | None = None) -> Metrics:
        return cls(registry, settings.max_trainers_per_run,
                   max_tasks_per_run=settings.max_tasks_per_run, max_runs=settings.max_runs,
                   run_ttl_s=settings.metrics_run_ttl_s, multiprocess_dir=multiprocess_dir)

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition (every worker's series, aggregated, in multiprocess mode)."""
        with self._lock:
            self._expire()
        return generate_latest(self._exposition)

    def run_labels(self) -> list[str]:
        """The run label values exported now (tests, debugging)."""
        with self._lock:
            return sorted(self._runs)

    # -- transports ---------------------------------------------------------------------------

    def observe_select(self, transport: str, status: str, seconds: float) -> None:
        children = self._select_children.get((transport, status))
        if children is None:  # first call with these labels: look the children up once
            children = (self.select_requests.labels(transport, status),
                        self.select_latency.labels(transport))
            self._select_children[(transport, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def on_store_error(self, op: str) -> None:
        """`on_error` callback of the stores."""
        self.store_errors.labels(op).inc()

    def on_report_rejected(self, run_id: str) -> None:
        with self._lock:
            self._expire()
            run = run_id if run_id in self._runs else UNKNOWN_RUN
            entry = self._entry(run)
            self._child(entry, self.outcome_reports, run, "rejected").inc()

    # -- ServiceObserver ----------------------------------------------------------------------

    def on_select(self, event: SelectEvent) -> None:
        self.select_staleness.observe(event.staleness)
        with self._lock:
            self._expire()
            run = self._run_label(event.run_id)
            entry = self._entry(run)
            gauges = run != OTHER
            chunks: dict[tuple[str, int], list[int]] = {}
            for (task, phase), (total, kept) in event.chunks.items():
                counts = chunks.setdefault((self._task_label(entry, task), phase), [0, 0])
                counts[0] += total
                counts[1] += kept
            for (task, phase), (total, kept) in chunks.items():
                p = str(phase)
                self._child(entry, self.chunks, run, task, p, "true").inc(kept)
                self._child(entry, self.chunks, run, task, p, "false").inc(total - kept)
            self._child(entry, self.skipped_trajectories, run).inc(event.skipped_trajectories)
            if not gauges:
                return
            for task, probs in event.keep_probs.items():
                if self._task_label(entry, task) == OTHER:
                    continue
                for phase, value in enumerate(probs):
                    self._child(entry, self.keep_probability, run, task, str(phase)).set(value)
            for task, scores in event.scores.items():
                if self._task_label(entry, task) == OTHER:
                    continue
                for phase, score in enumerate(scores):
                    if score is not None:
                        self._child(entry, self.phase_score, run, task, str(phase)).set(score)
            if event.total_chunks:
                self._child(entry, self.selection_rate, run).set(
                    event.kept_chunks / event.total_chunks)
            if event.kept_chunks:  # a batch without an informative group chose no budget
                self._child(entry, self.keep_fraction, run).set(event.keep_fraction)
            if event.predicted_efficiency is not None:
                self._child(entry, self.predicted_efficiency, run).set(
                    event.predicted_efficiency)
            if event.predicted_rate is not None:
                self._child(entry, self.predicted_rate, run).set(event.predicted_rate)
            config = (event.mode, event.score, event.weighting)
            previous = entry.config
            if previous != config:
                if previous is not None and self.multiprocess_dir is not None:
                    # Another worker may hold the old series at 1, set earlier: this later 0
                    # is what the aggregate (mostrecent) shows.
                    self._child(entry, self.run_config, run, *previous).set(0)
                elif previous is not None:
                    with contextlib.suppress(KeyError):
                        self.run_config.remove(run, *previous)
                    entry.series.discard((self.run_config, (run, *previous)))
                    entry.children.pop((self.run_config, (run, *previous)), None)
                entry.config = config
                self._child(entry, self.run_config, run, *config).set(1)

    def on_select_conflict(self, run_id: str, reason: str) -> None:
        self.select_conflicts.labels(reason if reason in CONFLICT_REASONS else "stale").inc()

    def on_report(self, run_id: str, report: OutcomeReport, accepted: bool) -> None:
        with self._lock:
            self._expire()
            run = self._run_label(run_id)
            entry = self._entry(run)
            status = "accepted" if accepted else "replayed"
            self._child(entry, self.outcome_reports, run, status).inc()
            if not accepted:
                return
            trainer = self._trainer_label(entry, report.trainer_id)
            if run != OTHER:
                self._child(entry, self.success_rate, run, trainer).set(report.success_rate)
            timings = report.timings
            for stage, seconds in zip(STAGES, (timings.rollout_s, timings.select_s,
                                              timings.backward_s), strict=True):
                self._child(entry, self.trainer_stage, run, trainer, stage).observe(seconds)

    def on_run_deleted(self, run_id: str) -> None:
        with self._lock:
            self._drop(run_id)

    # -- helpers (call with the lock held) ----------------------------------------------------

    def _run_label(self, run_id: str) -> str:
        if run_id in (OTHER, UNKNOWN_RUN):  # reserved label values
            return OTHER
        if run_id in self._runs:
            return run_id
        labelled = sum(1 for r in self._runs if r not in (OTHER, UNKNOWN_RUN))
        return run_id if labelled < self.max_runs else OTHER

    def _entry(self, run: str) -> _RunSeries:
        entry = self._runs.get(run)
        now = self._clock()
        if entry is None:
            entry = self._runs[run] = _RunSeries(last_seen=now)
            if run != UNKNOWN_RUN:
                for status in REPORT_STATUSES:  # zero-initialised, so increase() sees the first
                    self._child(entry, self.outcome_reports, run, status)
        entry.last_seen = now
        return entry

    def _task_label(self, entry: _RunSeries, task: str) -> str:
        if task in entry.tasks:
            return task
        if len(entry.tasks) < self.max_tasks_per_run and task != OTHER:
            entry.tasks.add(task)
            return task
        return OTHER

    def _trainer_label(self, entry: _RunSeries, trainer: str) -> str:
        if trainer in entry.trainers:
            return trainer
        if len(entry.trainers) < self.max_trainers_per_run and trainer != OTHER:
            entry.trainers.add(trainer)
            return trainer
        return OTHER

    def _child(self, entry: _RunSeries, metric: Any, *labels: str) -> Any:
        """The child of `metric` for `labels`, recorded as one of the run's series (cached
        per run: after the first select of a run, a dict lookup)."""
        child = entry.children.get((metric, labels))
        if child is not None:
            return child
        entry.series.add((metric, labels))
        if self._removed:  # multiprocess mode, after a removal: the series may come back
            key = series_key(metric, labels)
            if key in self._removed:
                self._removed.discard(key)
                self._save_removed()
        child = entry.children[(metric, labels)] = metric.labels(*labels)
        return child

    def _drop(self, run: str) -> None:
        entry = self._runs.pop(run, None)
        if entry is None:
            return
        for metric, labels in entry.series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
        if self.multiprocess_dir is not None:
            self._removed.update(series_key(metric, labels) for metric, labels in entry.series)
            self._save_removed()

    def _save_removed(self) -> None:
        """Write this worker's removed series (atomically: the collector may be reading)."""
        tmp = self._removed_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted([name, list(map(list, labels))]
                                         for name, labels in self._removed)))
        os.replace(tmp, self._removed_path)

    def _expire(self) -> None:
        horizon = self._clock() - self.run_ttl_s
        for run in [r for r, e in self._runs.items() if e.last_seen < horizon]:
            self._drop(run)


# ---------------------------------------------------------------------------------------------
# Multiprocess aggregation


def series_key(metric: Any, labels: Iterable[str]) -> SeriesKey:
    """How the multiprocess files name a series: family name (a counter's without `_total`),
    sorted (label name, value) pairs."""
    return metric._name, tuple(sorted(zip(metric._labelnames, labels, strict=True)))


class WorkersCollector:
    """Every worker's series from the multiprocess directory, aggregated as prometheus-client's
    MultiProcessCollector does (counters and histograms summed, `mostrecent` gauges the latest
    value), less the series each worker removed (its `removed_PID.json`)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self.path, "*.db"))
        removed = self._removed()
        if not removed:
            return MultiProcessCollector.merge(files, accumulate=True)
        merged: dict[str, Metric] = {}
        for path in files:
            pid = Path(path).stem.rsplit("_", 1)[-1]
            try:
                metrics = MultiProcessCollector._read_metrics([path])
            except FileNotFoundError:
                continue
            gone = removed.get(pid, set())
            for name, metric in metrics.items():
                if gone:
                    metric.samples = [s for s in metric.samples if (name, tuple(
                        (k, v) for k, v in s.labels if k not in ("le", "pid"))) not in gone]
                if name in merged:
                    merged[name].samples.extend(metric.samples)
                else:
                    merged[name] = metric
        return MultiProcessCollector._accumulate_metrics(merged, True)

    def _removed(self) -> dict[str, set[SeriesKey]]:
        out: dict[str, set[SeriesKey]] = {}
        for path in glob.glob(os.path.join(self.path, f"{REMOVED_PREFIX}*.json")):
            pid = Path(path).stem[len(REMOVED_PREFIX):]
            try:
                entries = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                continue
            keys = {(name, tuple((k, v) for k, v in labels)) for name, labels in entries}
            if keys:
                out[pid] = keys
        return out
