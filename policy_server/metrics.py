"""Prometheus metrics of one server: requests, errors, per-stage latency histograms.

Each server owns its registry (not prometheus_client's global one), so several apps can live in
one process (tests) without clashing names.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds; dense below 10 ms, where the serving overhead lives.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
STAGES = ("decode", "queue", "model", "encode")
TRANSPORTS = ("http", "websocket", "openvla", "openpi")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lapa_server_requests", "Inference requests received", ["transport"], registry=r)
        self.errors = Counter("lapa_server_errors", "Requests answered with an error", ["transport", "status"],
                              registry=r)
        self.stage_seconds = Histogram("lapa_server_stage_seconds",
                                       "Time per request stage: decode (bytes to observation), queue (waiting "
                                       "for the model), model, encode (reply to bytes)", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("lapa_server_request_seconds", "Server time per answered request",
                                         ["transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("lapa_server_model_calls", "Policy inferences run for requests", registry=r)
        self.replayed = Counter("lapa_server_replayed", "Retried requests answered from the request-id cache",
                                registry=r)
        self.connections = Gauge("lapa_server_websocket_connections", "Open WebSocket connections", ["transport"],
                                 registry=r)
        self.auth_failures = Counter("lapa_server_auth_failures", "Requests refused for a missing or wrong API key",
                                     registry=r)
        self.ready = Gauge("lapa_server_ready", "1 once the model is loaded and warmed up", registry=r)
        # Bound children (a `labels()` lookup costs microseconds on every request), which also
        # makes each series show from the first scrape, at zero.
        self._stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        self._requests = {t: self.requests.labels(t) for t in TRANSPORTS}
        self._request_seconds = {t: self.request_seconds.labels(t) for t in TRANSPORTS}

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def count_request(self, transport: str) -> None:
        self._requests[transport].inc()

    def observe_request(self, transport: str, seconds: float) -> None:
        self._request_seconds[transport].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
