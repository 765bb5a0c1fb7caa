"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# The encoder backend's stats() (backends/base.py), as Prometheus metrics: name -> (kind, help).
BACKEND_METRICS = {
    "npu_cores_in_service": ("gauge", "NPU cores taking calls"),
    "npu_call_failures": ("counter", "NPU calls that failed on a core"),
    "npu_call_retries": ("counter", "Failed NPU calls sent again to another core"),
    "npu_timeouts": ("counter", "Waits for an NPU call that passed npu_timeout_s"),
}


class Metrics:
    """bertnpu_requests_total{endpoint,status}, bertnpu_encoder_batches_total (calls of the encoder
    backend), bertnpu_sentences_total, bertnpu_tokens_total, bertnpu_queue_requests,
    bertnpu_request_seconds{endpoint}, and the backend's own (BACKEND_METRICS) read at each scrape
    from `backend_stats`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, backend_stats: Callable[[], dict[str, float]] = dict) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_BackendCollector(backend_stats))
        self.requests = Counter(
            "bertnpu_requests", "HTTP requests answered", ("endpoint", "status"), registry=self.registry
        )
        self.encoder_batches = Counter(
            "bertnpu_encoder_batches", "Batches the encoder backend ran (NPU or ONNX calls)", registry=self.registry
        )
        self.sentences = Counter("bertnpu_sentences", "Texts embedded", registry=self.registry)
        self.cancelled_texts = Counter(
            "bertnpu_cancelled_texts",
            "Texts dropped before the encoder: their client went away",
            registry=self.registry,
        )
        self.tokens = Counter("bertnpu_tokens", "Tokens embedded, with [CLS] and [SEP]", registry=self.registry)
        self.queue_requests = Gauge(
            "bertnpu_queue_requests", "Requests waiting for the encoder", registry=self.registry
        )
        self.request_seconds = Histogram(
            "bertnpu_request_seconds",
            "Request latency",
            ("endpoint",),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BackendCollector:
    """The backend's stats at scrape time (they live in the backend, not in this registry)."""

    def __init__(self, stats: Callable[[], dict[str, float]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, value in self._stats().items():
            kind, text = BACKEND_METRICS.get(name, ("gauge", name))
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"bertnpu_{name}", text, value=value)
