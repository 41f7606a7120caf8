"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can run several).

With several worker processes (``--workers N``) each process counts for itself; ``polymodal serve`` then sets
``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics``, whichever worker answers, reports the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a millisecond (a cached tiny head) to a minute (a deadline-long wait).
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request count by route and status; queue, inference and end-to-end time; batch size; queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("polymodal_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency_seconds = Histogram("polymodal_request_latency_seconds", "end-to-end request time",
                                         ["route"], buckets=_TIME_BUCKETS, registry=r)
        self.queue_seconds = Histogram("polymodal_queue_seconds", "time from queued to batched", ["route"],
                                       buckets=_TIME_BUCKETS, registry=r)
        self.inference_seconds = Histogram("polymodal_inference_seconds", "model time per batch", ["route"],
                                           buckets=_TIME_BUCKETS, registry=r)
        self.batch_size = Histogram("polymodal_batch_size", "requests per batch", ["route"], buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("polymodal_queue_depth", "requests admitted and waiting for a batch",
                                 multiprocess_mode="livesum", registry=r)
        self.in_flight = Gauge("polymodal_requests_in_flight", "requests admitted and not yet answered",
                               multiprocess_mode="livesum", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
