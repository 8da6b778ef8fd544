"""The server's Prometheus metrics, in a registry of its own (one per server instance).

`GET /metrics` renders them in the Prometheus text format through
`prometheus_client`: requests by route and outcome; prompt and
completion tokens; the queue length and busy decode slots; time to first
token and inter-token latency histograms.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """Counters, gauges and latency histograms of one server (`render`: the text format)."""

    def __init__(self, slots: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ram_requests", "Requests by route and outcome.", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("ram_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.completion_tokens = Counter(
            "ram_completion_tokens", "Tokens generated and returned.", registry=r
        )
        self.queue_length = Gauge("ram_queue_length", "Requests waiting for a slot.", registry=r)
        self.slots_busy = Gauge("ram_slots_busy", "Decode slots holding a request.", registry=r)
        self.slots_total = Gauge("ram_slots_total", "Decode slots on the device.", registry=r)
        self.slots_total.set(slots)
        self.compilations = Counter(
            "ram_xla_compilations",
            "XLA compilations in this process (warm-up included).",
            registry=r,
        )
        self.ttft = Histogram(
            "ram_time_to_first_token_seconds",
            "From request arrival to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "ram_inter_token_latency_seconds",
            "Between consecutive tokens of one request (a chunk's tokens share its gap).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
