"""Keeping the garbage collector off what a server allocated while starting.

A hub or adapter node starts by importing grpc, protobuf, SQLAlchemy and its own modules,
migrating the database and loading the registry: a few hundred thousand long-lived objects.
Every full collection of the cyclic garbage collector walks all of them again, and requests
allocate enough to trigger one every second or so. `gc.freeze()` moves everything alive at
the end of start-up to a permanent generation the collector skips; what requests allocate
is still collected as usual. (CPython documents freeze() for pre-fork servers; the same
saving applies to one long-lived process. The cost: a start-up object that later becomes
cyclic garbage is never freed, which a server that keeps its start-up state does not do.)
Measured on the 2-core VM: hub CPU per lookup at concurrency 1 down from 1.69 to 1.54 ms.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object still alive from future collections."""
    gc.collect()
    gc.freeze()
