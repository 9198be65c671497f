"""Middleware around commands and queries, on both sides; logging and tracing built in.

Client middleware runs on the calling thread around
:meth:`~natsbus.CommandBus.execute` and :meth:`~natsbus.QueryBus.ask`;
handler middleware runs on the worker thread around each handler. Neither
ever runs on the Bus's loop thread::

    from natsbus.middleware import LoggingMiddleware, TraceContextMiddleware

    chain = [TraceContextMiddleware(), LoggingMiddleware()]
    commands = CommandBus(bus, middleware=chain)
    pool = WorkerPool(bus, "user-service", middleware=chain)

The built-ins work on either side; write your own by subclassing
:class:`ClientMiddleware` (hooks get a :class:`ClientCall`) or
:class:`HandlerMiddleware` (hooks get a :class:`HandlerRequest`) and
overriding any of ``before``, ``after`` and ``on_error``.

How a chain ``[a, b, c]`` runs::

    a.before -> b.before -> c.before -> the call -> c.after    -> b.after    -> a.after
                                                 or c.on_error -> b.on_error -> a.on_error

* ``after`` / ``on_error`` run in reverse order, and only for the
  middlewares whose ``before`` returned normally.
* A hook that raises is logged (logger ``natsbus.middleware``, with the
  traceback) and the call goes on as if it had not raised.
* Unless it raises :class:`StopCall` ``(error)``, which stops the call with
  ``error``: from ``before``, the call is not made (no request is sent, the
  handler does not run) and the middlewares already entered get
  ``on_error(error)``; from ``after``, the call fails with ``error`` and the
  outer middlewares get ``on_error``; from ``on_error``, ``error`` replaces
  the error being unwound. The caller gets ``error`` itself.
* In handler middleware, raising a :class:`~natsbus.ServiceError` (e.g.
  ``NotFoundError``, or a subclass with its own ``code``) stops the call
  with it too; the caller gets the error envelope with its text and code.
  A ``StopCall`` whose error is no ``ServiceError`` answers a
  :class:`~natsbus.HandlerError` (500) with the error's text.
* ``KeyboardInterrupt`` and other non-``Exception`` errors are never
  swallowed: they stop the call as well.

Not covered yet: ``submit()``, ``execute_many()`` and ``ask_many()`` run no
middleware, and a :class:`~natsbus.QueryCache` hit runs none (no request is
made).

Trace context: :class:`TraceContextMiddleware` carries a W3C ``traceparent``
(and ``tracestate``) in the NATS headers of each request; inside a handler,
:func:`current_trace` gives the caller's trace id, and calls the handler
makes continue that trace. :class:`OpenTelemetryMiddleware` (the ``otel``
extra) makes a CLIENT span per call and a SERVER span per handler run.
natsbus never imports OpenTelemetry unless that middleware is built.
"""

from .chain import (
    ClientCall,
    ClientMiddleware,
    HandlerMiddleware,
    HandlerRequest,
    Middleware,
    StopCall,
    run_client,
    run_handler,
)
from .log import LoggingMiddleware
from .otel import OpenTelemetryMiddleware
from .trace import (
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    TraceContext,
    TraceContextMiddleware,
    current_trace,
    use_trace,
)

__all__ = [
    "ClientCall",
    "ClientMiddleware",
    "HandlerMiddleware",
    "HandlerRequest",
    "LoggingMiddleware",
    "Middleware",
    "OpenTelemetryMiddleware",
    "StopCall",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TraceContext",
    "TraceContextMiddleware",
    "current_trace",
    "run_client",
    "run_handler",
    "use_trace",
]
