"""Prometheus metrics of the service, created through `bentoml.metrics` so they appear on the
service's own `/metrics` next to BentoML's request metrics (`bentoml_service_request_*`).

A `label` label only ever holds a served model's class names, so its cardinality is bounded by
the classes of the models served (per-class metrics: predictions, confidence, feedback, recall).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# K classes: confidence is at least 1/K (0.5 for two), so the low buckets fill only past two
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Any  # Counter{endpoint, status}
    overloaded: Any  # Counter{endpoint}: refused with 503 `overloaded` (serve.max_in_flight)
    latency: Any  # Histogram{endpoint}
    predictions: Any  # Counter{label, model_version}
    confidence: Any  # Histogram{label}
    batch_size: Any  # Histogram: images per forward pass
    model_version: Any  # Gauge: the served registry version (0 = none, -1 = unregistered)
    log_dropped: Any  # Counter: prediction-log rows lost
    feedback: Any  # Counter{correct, label}: ground-truth labels received, by true class
    live_accuracy: Any  # Gauge: share correct of the served version's last N labelled answers
    live_accuracy_samples: Any  # Gauge: N actually in that window
    live_recall: Any  # Gauge{label}: per true class of the served model, share found in that window
    champion_test_accuracy: Any  # Gauge: the served version's registered test accuracy
    process_cpu: Any  # Counter: CPU seconds of this worker process
    process_memory: Any  # Gauge: resident memory of the worker processes


@functools.cache
def service_metrics() -> ServiceMetrics:
    import bentoml

    m = bentoml.metrics
    return ServiceMetrics(
        requests=m.Counter(
            name="imgclf_requests_total",
            documentation="Classification requests by endpoint and HTTP status",
            labelnames=["endpoint", "status"],
        ),
        overloaded=m.Counter(
            name="imgclf_overloaded_total",
            documentation="Requests refused (503 overloaded, with Retry-After) because the "
            "worker already had serve.max_in_flight requests in flight",
            labelnames=["endpoint"],
        ),
        latency=m.Histogram(
            name="imgclf_request_latency_seconds",
            documentation="Classification request latency (read body to response)",
            labelnames=["endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        predictions=m.Counter(
            name="imgclf_predictions_total",
            documentation="Predicted class counts",
            labelnames=["label", "model_version"],
        ),
        confidence=m.Histogram(
            name="imgclf_prediction_confidence",
            documentation="Confidence of each prediction: the probability of the predicted class",
            labelnames=["label"],
            buckets=CONFIDENCE_BUCKETS,
        ),
        batch_size=m.Histogram(
            name="imgclf_inference_batch_size",
            documentation="Images per forward pass (adaptive batching)",
            buckets=BATCH_BUCKETS,
        ),
        model_version=m.Gauge(
            name="imgclf_model_version",
            documentation="Registry version of the served model",
            multiprocess_mode="livemax",
        ),
        log_dropped=m.Counter(
            name="imgclf_prediction_log_dropped_total",
            documentation="Prediction-log rows dropped (queue full or database error)",
        ),
        feedback=m.Counter(
            name="imgclf_feedback_total",
            documentation="Ground-truth labels received, by whether the prediction was right "
            "and by true class",
            labelnames=["correct", "label"],
        ),
        # mostrecent: every worker computes these from the shared log; the latest write wins.
        live_accuracy=m.Gauge(
            name="imgclf_live_accuracy",
            documentation="Share correct of the served version's last N labelled predictions",
            multiprocess_mode="livemostrecent",
        ),
        live_accuracy_samples=m.Gauge(
            name="imgclf_live_accuracy_samples",
            documentation="Labelled predictions behind imgclf_live_accuracy (at most N)",
            multiprocess_mode="livemostrecent",
        ),
        live_recall=m.Gauge(
            name="imgclf_live_recall",
            documentation="Per true class of the served model: share predicted as that class "
            "among the labelled predictions behind imgclf_live_accuracy (NaN: none labelled)",
            labelnames=["label"],
            multiprocess_mode="livemostrecent",
        ),
        champion_test_accuracy=m.Gauge(
            name="imgclf_champion_test_accuracy",
            documentation="Test accuracy registered with the served model version",
            multiprocess_mode="livemostrecent",
        ),
        process_cpu=m.Counter(
            name="imgclf_process_cpu_seconds",
            documentation="CPU seconds (user + system) used by the service's worker processes",
        ),
        process_memory=m.Gauge(
            name="imgclf_process_resident_memory_bytes",
            documentation="Resident memory of the service's worker processes",
            multiprocess_mode="livesum",
        ),
    )


class Periodic:
    """Calls `task` every `interval` seconds on a daemon thread (first call at once); an error
    is logged and the next tick tries again: metrics must never take the service down."""

    def __init__(self, task: Callable[[], None], interval: float, name: str) -> None:
        self.task = task
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.task()
            except Exception:
                logger.exception("%s failed", self._thread.name)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class ProcessSampler:
    """This worker's CPU seconds and resident memory, for `Periodic` to sample.

    BentoML's multiprocess /metrics has no process collector (prometheus_client's reads only
    the scraping process), so each worker samples itself with psutil.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        import psutil

        self.metrics = metrics
        self.process = psutil.Process()
        self._cpu_seen = 0.0

    def sample(self) -> None:
        times = self.process.cpu_times()
        cpu = times.user + times.system
        self.metrics.process_cpu.inc(max(cpu - self._cpu_seen, 0.0))
        self._cpu_seen = cpu
        self.metrics.process_memory.set(self.process.memory_info().rss)
