"""Prometheus metrics of the selector (DESIGN.md section 5), on a dedicated registry.

Transport-level metrics (`pcm_select_requests_total`, `pcm_select_latency_seconds`) are
observed by the gRPC interceptor and the HTTP middleware; run-level ones by this class acting as
the application layer's `ServiceObserver`; `pcm_store_errors_total` by the store's `on_error`.

Semantics:
- `pcm_select_requests_total{transport,status}`: transport `grpc`|`http`; status the gRPC code
  name of the outcome on both transports: OK, INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED,
  UNAVAILABLE, INTERNAL (HTTP statuses map 200->OK, 422/400/413->INVALID_ARGUMENT,
  404->NOT_FOUND, 401->UNAUTHENTICATED, 503->UNAVAILABLE, else INTERNAL).
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
- `pcm_skipped_trajectories_total{run}`: trajectories of all-equal-outcome GRPO groups.
- `pcm_outcome_reports_total{run,status}`: accepted | replayed (same request_id again) |
  rejected (invalid report or unknown run; run="unknown" unless this process has seen the run).
- `pcm_success_rate{run,trainer}` and `pcm_trainer_stage_seconds{run,trainer,stage}`: from each
  accepted outcome report (stage rollout|select|backward from its timings). At most
  `max_trainers_per_run` trainer label values per run; later trainers count as "other".
- `pcm_store_errors_total{op}`: store operations that failed (op: the PhaseStore method).
- `pcm_run_config_info{run,mode,score,weighting}`: 1 for the configuration the run's last
  committed selection used (which phase score and loss weighting it runs); one series per run.

Deleting a run removes every series labelled with it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from selector_service.models import OutcomeReport
from selector_service.service import SelectEvent

TRANSPORTS = ("grpc", "http")
SELECT_STATUSES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "UNAVAILABLE",
                   "INTERNAL")
REPORT_STATUSES = ("accepted", "replayed", "rejected")
STAGES = ("rollout", "select", "backward")
# The PhaseStore methods: the `op` values stores report through on_error (pre-set to 0).
STORE_OPS = ("ping", "put_config", "get_config", "delete_run", "load", "get_request",
             "commit_select", "record_report", "history")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)
OTHER_TRAINER = "other"
UNKNOWN_RUN = "unknown"


def status_of_http(code: int) -> str:
    """The gRPC-style status name used as `status` label for an HTTP status code."""
    if 200 <= code < 300:
        return "OK"
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
            413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
            503: "UNAVAILABLE"}.get(code, "INTERNAL")


class Metrics:
    """All selector metrics; implements `ServiceObserver`. Thread-safe."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None,
                 max_trainers_per_run: int = 64) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_trainers_per_run = max_trainers_per_run
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
            ["run", "task", "phase"], registry=r)
        self.phase_score = Gauge(
            "pcm_phase_score", "Online phase score s_tp (EMA of the run's score: learning "
            "signal or success-failure action variance).",
            ["run", "task", "phase"], registry=r)
        self.run_config = Gauge(
            "pcm_run_config_info", "1 for the mode, phase score and weighting of the run's last "
            "selection.", ["run", "mode", "score", "weighting"], registry=r)
        self.selection_rate = Gauge(
            "pcm_selection_rate", "kept_chunks / total_chunks of the run's last selection.",
            ["run"], registry=r)
        self.skipped_trajectories = Counter(
            "pcm_skipped_trajectories_total",
            "Trajectories skipped as uninformative (GRPO group with all-equal outcomes).",
            ["run"], registry=r)
        self.outcome_reports = Counter(
            "pcm_outcome_reports_total", "Outcome reports: accepted, replayed or rejected.",
            ["run", "status"], registry=r)
        self.success_rate = Gauge(
            "pcm_success_rate", "Success rate of the trainer's last accepted outcome report.",
            ["run", "trainer"], registry=r)
        self.trainer_stage = Histogram(
            "pcm_trainer_stage_seconds", "Trainer step time per stage, from outcome reports.",
            ["run", "trainer", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.store_errors = Counter(
            "pcm_store_errors_total", "Failed phase-state store operations.", ["op"], registry=r)

        self._lock = threading.Lock()
        # run -> [(metric, label values)] of every series labelled with the run
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = {}
        self._trainers: dict[str, set[str]] = {}
        self._run_config: dict[str, tuple[str, str, str]] = {}
        for transport in TRANSPORTS:
            self.select_latency.labels(transport)
            self.select_requests.labels(transport, "OK")
        for op in STORE_OPS:
            self.store_errors.labels(op)

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- transports ---------------------------------------------------------------------------

    def observe_select(self, transport: str, status: str, seconds: float) -> None:
        self.select_requests.labels(transport, status).inc()
        self.select_latency.labels(transport).observe(seconds)

    def on_store_error(self, op: str) -> None:
        """`on_error` callback of the stores."""
        self.store_errors.labels(op).inc()

    def on_report_rejected(self, run_id: str) -> None:
        with self._lock:
            run = run_id if run_id in self._series else UNKNOWN_RUN
            self._child(run, self.outcome_reports, run, "rejected").inc()

    # -- ServiceObserver ----------------------------------------------------------------------

    def on_select(self, event: SelectEvent) -> None:
        run = event.run_id
        with self._lock:
            self._touch(run)
            for (task, phase), (total, kept) in event.chunks.items():
                p = str(phase)
                self._child(run, self.chunks, run, task, p, "true").inc(kept)
                self._child(run, self.chunks, run, task, p, "false").inc(total - kept)
            for task, probs in event.keep_probs.items():
                for phase, value in enumerate(probs):
                    self._child(run, self.keep_probability, run, task, str(phase)).set(value)
            for task, scores in event.scores.items():
                for phase, score in enumerate(scores):
                    if score is not None:
                        self._child(run, self.phase_score, run, task, str(phase)).set(score)
            if event.total_chunks:
                self._child(run, self.selection_rate, run).set(
                    event.kept_chunks / event.total_chunks)
            self._child(run, self.skipped_trajectories, run).inc(event.skipped_trajectories)
            config = (event.mode, event.score, event.weighting)
            previous = self._run_config.get(run)
            if previous != config:
                if previous is not None:
                    with contextlib.suppress(KeyError):
                        self.run_config.remove(run, *previous)
                    self._series[run].discard((self.run_config, (run, *previous)))
                self._run_config[run] = config
                self._child(run, self.run_config, run, *config).set(1)

    def on_report(self, run_id: str, report: OutcomeReport, accepted: bool) -> None:
        run = run_id
        with self._lock:
            self._touch(run)
            status = "accepted" if accepted else "replayed"
            self._child(run, self.outcome_reports, run, status).inc()
            if not accepted:
                return
            trainer = self._trainer_label(run, report.trainer_id)
            self._child(run, self.success_rate, run, trainer).set(report.success_rate)
            timings = report.timings
            for stage, seconds in zip(STAGES, (timings.rollout_s, timings.select_s,
                                              timings.backward_s), strict=True):
                self._child(run, self.trainer_stage, run, trainer, stage).observe(seconds)

    def on_run_deleted(self, run_id: str) -> None:
        with self._lock:
            for metric, labels in self._series.pop(run_id, set()):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
            self._trainers.pop(run_id, None)
            self._run_config.pop(run_id, None)

    # -- helpers (call with the lock held) ----------------------------------------------------

    def _touch(self, run: str) -> None:
        if run not in self._series:
            self._series[run] = set()
            for status in REPORT_STATUSES:  # zero-initialised, so increase() sees the first
                self._child(run, self.outcome_reports, run, status)

    def _child(self, run: str, metric: Any, *labels: str) -> Any:
        self._series.setdefault(run, set()).add((metric, labels))
        return metric.labels(*labels)

    def _trainer_label(self, run: str, trainer: str) -> str:
        known = self._trainers.setdefault(run, set())
        if trainer in known:
            return trainer
        if len(known) < self.max_trainers_per_run:
            known.add(trainer)
            return trainer
        return OTHER_TRAINER

