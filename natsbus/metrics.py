"""Metrics: a worker pool's counters, in-process and for Prometheus.

In-process, ``pool.stats()`` returns the numbers ``$SRV.STATS`` reports
(a :class:`~natsbus.ServiceStats`: per handler, requests, errors, last
error, total and average processing time in nanoseconds).

With the ``prometheus`` extra (``pip install 'natsbus[prometheus]'``),
:class:`PrometheusCollector` exposes them to a Prometheus registry; a
daemon serves them over HTTP with prometheus-client's own server::

    from prometheus_client import CollectorRegistry, start_http_server
    from natsbus.metrics import PrometheusCollector

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(pool))
    start_http_server(9464, registry=registry)    # GET http://host:9464/metrics
    pool.run()

(``prometheus_client.REGISTRY.register(...)`` adds them to the default
registry instead, next to the process metrics.) This module imports
prometheus-client only when a collector is built, so importing natsbus
costs nothing without the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from .errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .worker import WorkerPool

__all__ = ["PrometheusCollector"]


class PrometheusCollector:
    """A Prometheus collector for one or more :class:`~natsbus.WorkerPool` objects.

    Register one collector per registry (pass every pool of the process to
    it: two collectors would export the same metric names, which a
    registry refuses). Each scrape reads the pools' counters (as
    ``pool.stats()``) and yields:

    ==============================================  =======  ============================
    ``natsbus_requests_total``                      counter  per endpoint
    ``natsbus_request_errors_total``                counter  per endpoint
    ``natsbus_request_processing_seconds_total``    counter  per endpoint, handler time
    ``natsbus_inflight_requests``                   gauge    admitted, not yet answered
    ``natsbus_busy_refusals_total``                 counter  refused because full
    ==============================================  =======  ============================

    Endpoint series carry the labels ``service``, ``endpoint`` (the
    message type name) and ``subject``; pool series carry ``service``.

    Args:
        *pools: The pools to observe (started or not).
        namespace: The metric name prefix.

    Raises:
        ConfigError: no pool given, or prometheus-client is not installed
            (install the ``prometheus`` extra).
    """

    def __init__(self, *pools: WorkerPool, namespace: str = "natsbus") -> None:
        if not pools:
            raise ConfigError("PrometheusCollector needs at least one WorkerPool")
        try:
            import prometheus_client  # noqa: F401 - only to fail early and clearly
        except ImportError as exc:
            raise ConfigError("PrometheusCollector needs prometheus-client: pip install 'natsbus[prometheus]'") from exc
        self.pools = pools
        self.namespace = namespace

    def describe(self) -> List[Metric]:
        """The metric families without samples (lets a registry refuse duplicates)."""
        return self._families(with_samples=False)

    def collect(self) -> List[Metric]:
        """The metric families with the current values (called on each scrape)."""
        return self._families(with_samples=True)

    def _families(self, with_samples: bool) -> List[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ns = self.namespace
        endpoint_labels = ["service", "endpoint", "subject"]
        requests = CounterMetricFamily(f"{ns}_requests", "Requests received per handler.", labels=endpoint_labels)
        errors = CounterMetricFamily(
            f"{ns}_request_errors",
            "Requests answered with an error (handler failures, invalid requests, busy refusals).",
            labels=endpoint_labels,
        )
        seconds = CounterMetricFamily(
            f"{ns}_request_processing_seconds",
            "Total time spent handling requests, per handler.",
            labels=endpoint_labels,
        )
        inflight = GaugeMetricFamily(
            f"{ns}_inflight_requests", "Requests admitted and not yet answered.", labels=["service"]
        )
        busy = CounterMetricFamily(
            f"{ns}_busy_refusals", "Requests refused at once because the pool was full.", labels=["service"]
        )
        for pool in self.pools if with_samples else ():
            service = pool.service_id
            for endpoint in pool.stats().endpoints:
                labels = [service, endpoint.name, endpoint.subject]
                requests.add_metric(labels, endpoint.num_requests)
                errors.add_metric(labels, endpoint.num_errors)
                seconds.add_metric(labels, endpoint.processing_time / 1e9)
            inflight.add_metric([service], pool.inflight)
            busy.add_metric([service], pool.refused_busy)
        return [requests, errors, seconds, inflight, busy]
