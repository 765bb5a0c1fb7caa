"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """bertnpu_requests_total{endpoint,status}, bertnpu_encoder_batches_total (calls of the encoder
    backend), bertnpu_sentences_total, bertnpu_tokens_total, bertnpu_queue_requests and
    bertnpu_request_seconds{endpoint}."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bertnpu_requests", "HTTP requests answered", ("endpoint", "status"), registry=self.registry
        )
        self.encoder_batches = Counter(
            "bertnpu_encoder_batches", "Batches the encoder backend ran (NPU or ONNX calls)", registry=self.registry
        )
        self.sentences = Counter("bertnpu_sentences", "Texts embedded", registry=self.registry)
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
