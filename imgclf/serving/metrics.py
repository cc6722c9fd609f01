"""Prometheus metrics of the service, created through `bentoml.metrics` so they appear on the
service's own `/metrics` next to BentoML's request metrics (`bentoml_service_request_*`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Any  # Counter{endpoint, status}
    latency: Any  # Histogram{endpoint}
    predictions: Any  # Counter{label, model_version}
    confidence: Any  # Histogram{label}
    batch_size: Any  # Histogram: images per forward pass
    model_version: Any  # Gauge: the served registry version (0 = none/unnumbered)
    log_dropped: Any  # Counter: prediction-log rows lost


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
            documentation="Confidence of each prediction: max(p, 1 - p)",
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
    )
