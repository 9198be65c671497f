"""``natsbus bench``: natsbus against raw nats-py on this machine (see :mod:`natsbus.bench.runner`).

Kept empty: the bench's child processes import :mod:`natsbus.bench.roles`
alone, and what this package imports would count in their memory.
"""
