"""Metrics: a worker pool's counters and latency, a client's calls, in-process and for Prometheus.

In-process, ``pool.stats()`` returns the numbers ``$SRV.STATS`` reports
(a :class:`~natsbus.ServiceStats`: per handler, requests, errors, last
error, total and average processing time in nanoseconds), and
``pool.dispatcher.snapshot()`` each handler's
:class:`~natsbus.dispatch.EndpointStats` with the duration histogram and
the expired, overrun and refused counts. A :class:`ClientMetrics`
middleware counts the calls a ``CommandBus`` / ``QueryBus`` makes, by
subject and outcome (:meth:`ClientMetrics.snapshot`).

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
costs nothing without the extra. Every metric is listed in
``docs/metrics.rst``.
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple, Union

import attrs

from .dispatch import DURATION_BUCKETS
from .errors import ConfigError
from .middleware import ClientCall, ClientMiddleware

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .worker import WorkerPool

__all__ = ["ClientMetrics", "ClientSeries", "DURATION_BUCKETS", "PrometheusCollector"]

#: The outcome label of a call that succeeded (a failed one's is its error's class name).
OK = "ok"


@attrs.frozen
class ClientSeries:
    """The calls of one subject with one outcome, as :meth:`ClientMetrics.snapshot` reports them.

    Attributes:
        subject: ``commands.X`` / ``queries.Y``.
        outcome: ``"ok"``, or the class name of the error the caller got
            (``RequestTimeoutError``, ``NotFoundError``, ``NotConnectedError``, ...).
        calls: How many.
        seconds: Their total duration in seconds.
        durations: Calls per :data:`DURATION_BUCKETS` bucket (not
            cumulative; the last one is over the last bound).
    """

    subject: str
    outcome: str
    calls: int
    seconds: float
    durations: Tuple[int, ...]


class ClientMetrics(ClientMiddleware):
    """Client middleware that counts calls and their latency by subject and outcome.

    Put it first in a bus's middleware (so it times the whole call, the
    other middleware and the retries included; one ``execute()`` is one
    call) and share one instance between buses::

        metrics = ClientMetrics()
        commands = CommandBus(bus, middleware=[metrics])
        queries = QueryBus(bus, middleware=[metrics])
        registry.register(PrometheusCollector(metrics))

    It counts what client middleware sees: ``execute()`` and every
    ``ask()`` that sends a request. A query-cache hit, ``submit()``,
    ``execute_many()`` / ``ask_many()`` and ``ask_all()`` run no client
    middleware, so they are not counted. A bus without it pays nothing.
    The duration is ``ClientCall.elapsed`` (``time.perf_counter()``, taken
    when the call began); one lock, held for two increments, per call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (subject, outcome) -> [count per bucket..., total seconds]
        self._series: Dict[Tuple[str, str], List[Any]] = {}

    def after(self, call: ClientCall, result: Any) -> None:
        """Count a call that succeeded (outcome ``ok``)."""
        self._observe(call.subject, OK, call.elapsed)

    def on_error(self, call: ClientCall, error: BaseException) -> None:
        """Count a call that failed (outcome: the error's class name)."""
        self._observe(call.subject, type(error).__name__, call.elapsed)

    def _observe(self, subject: str, outcome: str, seconds: float) -> None:
        bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)
        key = (subject, outcome)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0] * (len(DURATION_BUCKETS) + 1) + [0.0]
            series[bucket] += 1
            series[-1] += seconds

    def snapshot(self) -> List[ClientSeries]:
        """Every subject and outcome seen so far, read at one moment, sorted by subject and outcome."""
        with self._lock:
            copies = [(key, list(series)) for key, series in self._series.items()]
        return [
            ClientSeries(subject, outcome, sum(series[:-1]), series[-1], tuple(series[:-1]))
            for (subject, outcome), series in sorted(copies)
        ]


class PrometheusCollector:
    """A Prometheus collector for :class:`~natsbus.WorkerPool` objects and :class:`ClientMetrics`.

    Register one collector per registry (pass every pool and every
    ClientMetrics of the process to it: two collectors would export the
    same metric names, which a registry refuses). Each scrape reads each
    pool's counters at one moment and yields, per endpoint (labels
    ``service``, ``endpoint``: the message type name, ``subject``):

    ==============================================  =========  ==========================================
    ``natsbus_requests_total``                      counter    requests answered (refusals included)
    ``natsbus_request_errors_total``                counter    answered with an error
    ``natsbus_request_duration_seconds``            histogram  decode, handler and encode time
    ``natsbus_request_processing_seconds_total``    counter    the same time in all
    ``natsbus_requests_expired_total``              counter    caller gave up before the handler ran
    ``natsbus_requests_overrun_total``              counter    handler ran past its ``time_limit``
    ``natsbus_requests_refused_total``              counter    refused at once: the pool was full
    ==============================================  =========  ==========================================

    per pool (label ``service``) ``natsbus_inflight_requests`` (gauge) and
    ``natsbus_busy_refusals_total`` (the refusals of all its endpoints),
    and per :class:`ClientMetrics` subject and outcome (labels ``subject``,
    ``outcome``) ``natsbus_client_requests_total`` and
    ``natsbus_client_request_duration_seconds`` (a histogram).

    Args:
        *sources: The pools (started or not) and ClientMetrics to observe.
        namespace: The metric name prefix.

    Raises:
        ConfigError: no source given, one that is neither, or
            prometheus-client is not installed (install the ``prometheus`` extra).
    """

    def __init__(self, *sources: Union[WorkerPool, ClientMetrics], namespace: str = "natsbus") -> None:
        from .worker import WorkerPool

        if not sources:
            raise ConfigError("PrometheusCollector needs at least one WorkerPool or ClientMetrics")
        for source in sources:
            if not isinstance(source, (WorkerPool, ClientMetrics)):
                raise ConfigError(f"PrometheusCollector observes WorkerPool and ClientMetrics objects, not {source!r}")
        try:
            import prometheus_client  # noqa: F401 - only to fail early and clearly
        except ImportError as exc:
            raise ConfigError("PrometheusCollector needs prometheus-client: pip install 'natsbus[prometheus]'") from exc
        self.pools: Tuple[WorkerPool, ...] = tuple(s for s in sources if isinstance(s, WorkerPool))
        self.clients: Tuple[ClientMetrics, ...] = tuple(s for s in sources if isinstance(s, ClientMetrics))
        self.namespace = namespace

    def describe(self) -> List[Metric]:
        """The metric families without samples (lets a registry refuse duplicates)."""
        return self._families(with_samples=False)

    def collect(self) -> List[Metric]:
        """The metric families with the current values (called on each scrape)."""
        return self._families(with_samples=True)

    def _families(self, with_samples: bool) -> List[Metric]:
        families: List[Metric] = []
        if self.pools:
            families += self._pool_families(self.pools if with_samples else ())
        if self.clients:
            families += self._client_families(self.clients if with_samples else ())
        return families

    def _pool_families(self, pools: Sequence[WorkerPool]) -> List[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        ns = self.namespace
        labels = ["service", "endpoint", "subject"]
        requests = CounterMetricFamily(
            f"{ns}_requests", "Requests answered per handler (busy refusals included).", labels=labels
        )
        errors = CounterMetricFamily(
            f"{ns}_request_errors",
            "Requests answered with an error (handler failures, invalid requests, expired, overruns, busy refusals).",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            f"{ns}_request_duration_seconds",
            "Time to decode, handle and encode a request, per handler (busy refusals not included).",
            labels=labels,
        )
        seconds = CounterMetricFamily(
            f"{ns}_request_processing_seconds", "Total time spent handling requests, per handler.", labels=labels
        )
        expired = CounterMetricFamily(
            f"{ns}_requests_expired",
            "Requests not started because their caller's deadline had passed.",
            labels=labels,
        )
        overrun = CounterMetricFamily(
            f"{ns}_requests_overrun",
            "Requests whose handler ran past its time limit (the caller got a timeout error).",
            labels=labels,
        )
        refused = CounterMetricFamily(
            f"{ns}_requests_refused", "Requests refused at once because the pool was full.", labels=labels
        )
        inflight = GaugeMetricFamily(
            f"{ns}_inflight_requests", "Requests admitted and not yet answered.", labels=["service"]
        )
        busy = CounterMetricFamily(
            f"{ns}_busy_refusals", "Requests refused at once because the pool was full.", labels=["service"]
        )
        for pool in pools:
            service = pool.service_id
            for route, stats in pool.dispatcher.snapshot():
                values = [service, route.name, route.subject]
                requests.add_metric(values, stats.num_requests)
                errors.add_metric(values, stats.num_errors)
                total = stats.processing_time_ns / 1e9
                duration.add_metric(values, _cumulative(stats.durations), total)
                seconds.add_metric(values, total)
                expired.add_metric(values, stats.expired)
                overrun.add_metric(values, stats.overruns)
                refused.add_metric(values, stats.refused)
            inflight.add_metric([service], pool.inflight)
            busy.add_metric([service], pool.refused_busy)
        return [requests, errors, duration, seconds, expired, overrun, refused, inflight, busy]

    def _client_families(self, clients: Sequence[ClientMetrics]) -> List[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        ns = self.namespace
        labels = ["subject", "outcome"]
        calls = CounterMetricFamily(
            f"{ns}_client_requests",
            "Calls made by CommandBus.execute / QueryBus.ask, by outcome (ok or the error's class name).",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            f"{ns}_client_request_duration_seconds",
            "Duration of CommandBus.execute / QueryBus.ask calls (retries included), by outcome.",
            labels=labels,
        )
        merged: Dict[Tuple[str, str], Tuple[List[int], float]] = {}
        for client in clients:
            for series in client.snapshot():
                counts, total = merged.get((series.subject, series.outcome), ([0] * len(series.durations), 0.0))
                merged[series.subject, series.outcome] = (
                    [a + b for a, b in zip(counts, series.durations)],
                    total + series.seconds,
                )
        for (subject, outcome), (counts, total) in sorted(merged.items()):
            calls.add_metric([subject, outcome], sum(counts))
            duration.add_metric([subject, outcome], _cumulative(counts), total)
        return [calls, duration]


def _cumulative(counts: Sequence[int]) -> List[Tuple[str, float]]:
    """Per-bucket counts (the last one over the last bound) as Prometheus's cumulative ``le`` buckets."""
    buckets: List[Tuple[str, float]] = []
    running = 0
    for bound, count in zip((*(str(float(b)) for b in DURATION_BUCKETS), "+Inf"), counts):
        running += count
        buckets.append((bound, running))
    return buckets
