"""Prometheus metrics of one ollamesh process, served at `http://<host>:<port>/metrics`.

Each process keeps its own registry and exposes what its actors see: a router counts
every request event of the fleet (requests and errors by code, time to first token,
duration, tokens, cache hits) and the queue depth per model; an executor reports its
host's state and in-flight requests per model; a gateway its HTTP requests per route
and status.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.actor import Actor
from schemas import QueueDepth
from schemas.internal import RequestEvent

__all__ = ["Metrics"]

log = structlog.get_logger("actors.runtime.metrics")

# Seconds: from a cache hit (well under a millisecond) to a long generation.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Loops(Collector):
    """Every actor's background loops, read at scrape time."""

    def __init__(self, actors: Callable[[], Iterable[Actor]]) -> None:
        self._actors = actors

    def collect(self) -> Iterator[Metric]:
        running: Tally[tuple[str, str]] = Tally()
        restarts: Tally[tuple[str, str]] = Tally()
        for actor in self._actors():  # several executors share a name: summed
            for name, status in actor.loops.items():
                running[actor.name, name] += status.running
                restarts[actor.name, name] += status.restarts
        up = GaugeMetricFamily(
            "ollamesh_loop_running",
            "Background loops running (below the usual count: crashed, restarting)",
            labels=["actor", "loop"],
        )
        crashed = CounterMetricFamily(
            "ollamesh_loop_restarts", "Background loops that crashed and were started again",
            labels=["actor", "loop"],
        )  # fmt: skip
        for key in sorted(set(running) | set(restarts)):
            up.add_metric(list(key), running[key])
            crashed.add_metric(list(key), restarts[key])
        yield up
        yield crashed


class Metrics:
    """The metrics of one process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ollamesh_requests", "Finished requests by outcome (ok or an error code)",
            ["model", "kind", "outcome"], registry=r,
        )  # fmt: skip
        self.cache_hits = Counter(
            "ollamesh_cache_hits", "Requests answered without a host generating", ["model"],
            registry=r,
        )  # fmt: skip
        self.output_tokens = Counter(
            "ollamesh_output_tokens", "Tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            "ollamesh_time_to_first_token_seconds", "From acceptance to the first token",
            ["model"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "ollamesh_request_duration_seconds", "From acceptance to the end", ["model"],
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "ollamesh_queue_depth", "Requests waiting", ["model", "priority"], registry=r
        )
        self.running = Gauge(
            "ollamesh_running", "Requests running on the whole fleet", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "ollamesh_host_in_flight", "Requests running on a host", ["host", "model"],
            registry=r,
        )  # fmt: skip
        self.slots = Gauge(
            "ollamesh_host_slots", "Slots a host gives a model now (0: circuit open)",
            ["host", "model"], registry=r,
        )  # fmt: skip
        self.host_up = Gauge("ollamesh_host_up", "1 if the host answers", ["host"], registry=r)
        self.host_state = Gauge(
            "ollamesh_host_state", "1 for the health monitor's state of the host (up, degraded, "
            "down)", ["host", "state"], registry=r,
        )  # fmt: skip
        self.set_aside = Counter(
            "ollamesh_events_set_aside", "Events a consumer of the event stream could not "
            "write and kept in dead_letters", ["consumer"], registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "ollamesh_http_requests", "HTTP requests the gateway answered, by route (its "
            "pattern; `unmatched` for none), method and status", ["route", "method", "status"],
            registry=r,
        )  # fmt: skip
        self.http_response_start = Histogram(
            "ollamesh_http_response_start_seconds", "From an HTTP request's arrival to its "
            "status line (a stream's first byte)", ["route"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_in_flight = Gauge(
            "ollamesh_http_in_flight", "HTTP requests being answered (open streams included)",
            ["route"], registry=r,
        )  # fmt: skip
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def finished(self, event: RequestEvent) -> None:
        """Count one request event."""
        self.requests.labels(event.model, event.kind, event.outcome).inc()
        if event.cached:
            self.cache_hits.labels(event.model).inc()
        self.output_tokens.labels(event.model).inc(event.output_tokens)
        self.duration.labels(event.model).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            self.ttft.labels(event.model).observe(event.ttft_ms / 1000)

    def http_begin(self, route: str) -> None:
        """An HTTP request on `route` arrived."""
        self.http_in_flight.labels(route).inc()

    def http_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """Its status line went out `seconds` after it arrived."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_response_start.labels(route).observe(seconds)

    def http_end(self, route: str) -> None:
        """Its answer ended (whole, or the stream closed)."""
        self.http_in_flight.labels(route).dec()

    def watch_loops(self, actors: Callable[[], Iterable[Actor]]) -> None:
        """Export the background loops of `actors()` (read at every scrape)."""
        self.registry.register(_Loops(actors))

    def queues(self, depth: QueueDepth) -> None:
        """Set one model's queue gauges."""
        self.queue_depth.labels(depth.model, "interactive").set(depth.interactive)
        self.queue_depth.labels(depth.model, "batch").set(depth.batch)
        self.running.labels(depth.model).set(depth.running)

    def serve(self, host: str, port: int) -> str | None:
        """Start the exposition endpoint (port 0: any free one); None if the port is taken."""
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            log.warning("metrics_unavailable", port=port, error=str(exc))
            return None
        self.url = f"http://{host}:{self._server.server_port}/metrics"
        log.info("metrics_serving", url=self.url)
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
