"""Durable commands: stored in JetStream by ``send()``, run by a WorkerPool whenever one is up.

Request-reply needs a live responder: a batch job's ``execute()`` fails
while every worker is down. ``CommandBus.send()`` instead returns the
``command_id`` once JetStream has stored the command, and a pool started
with ``durable=True`` runs it when it can::

    command_id = CommandBus(bus).send(ChargeCard(order_id="o-1", cents=1250))

    pool = WorkerPool(bus, "billing", durable=True)     # or durable=DurableConfig(...)

    CommandBus(bus).result(command_id, wait=30)         # its result, once there is one

The pieces, each created with the settings of a :class:`DurableConfig`
(and reused when they exist with the same settings; otherwise
:class:`~natsbus.IncompatibleSettingsError` names the one that differs):

* **the commands stream** (``NATSBUS_COMMANDS``) captures
  ``durable.commands.>``: a subject space that never overlaps
  request-reply's ``commands.*`` / ``queries.*`` (natsbus refuses to start
  when any stream captures those: JetStream would acknowledge requests in
  place of their handlers). ``Nats-Msg-Id`` is the ``command_id``, so a
  repeated ``send()`` within the duplicate window is stored once.
* **one durable pull consumer per service** (named after the pool's queue
  group), with explicit acks. A pool pulls only as many commands as it
  has idle worker threads, and runs them there, never on the loop thread.
  A command is acknowledged after its reply is stored; while it runs, its
  ack timer is restarted every ``ack_wait / 3`` seconds.
* **the results bucket** (``natsbus_results``) keeps each command's
  response envelope for ``results_ttl`` seconds, for
  ``CommandBus.result()``. A command delivered again after its reply was
  stored (its worker died before the ack) is acknowledged, not run again.
* **the dead-letter stream** (``NATSBUS_DEAD_LETTERS``,
  ``durable.dead.>``). A handler failure (an error reply with a code of
  500 or more) is retried after ``backoff`` seconds; after
  ``max_deliveries`` deliveries the command goes there, with its last
  error in the ``Natsbus-Error*`` headers, and its error reply is stored
  as its result. Replies with a code below 500 (400, 404, 409: the
  handler's verdict, not a failure) are final: stored, acknowledged.
  ``natsbus durable dead`` lists dead letters; ``natsbus durable replay``
  sends one again.

natsbus counts deliveries itself rather than through the consumer's
``max_deliver`` (left unlimited), so that a worker that dies during the
last delivery cannot strand the command: a command delivered more than
``max_deliveries`` times without an answer is dead-lettered unrun.

Exactly once: see docs/exactly-once.rst. In short, JetStream and this module make
sure a command is *delivered until answered* and not run again once its
reply is stored; a worker dying between the handler's commit and that
store can still run it twice, unless the handler records the
``command_id`` in the same transaction as its effect.
"""

from .._transport.jetstream import ConsumerState
from .admin import DeadLetter, PendingCommands, StoredCommand, dead_letters, pending, replay
from .client import result, send
from .config import DurableConfig

__all__ = [
    "ConsumerState",
    "DeadLetter",
    "DurableConfig",
    "PendingCommands",
    "StoredCommand",
    "dead_letters",
    "pending",
    "replay",
    "result",
    "send",
]
