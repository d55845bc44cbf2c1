"""The cyclic garbage collector, told what a process built at startup.

Every full collection walks every object the collector tracks. A process actor
starts with about 60,000 of them (modules, classes, functions: measured after
the server's imports), and a full collection of those alone holds the loop
about 20 ms, in the middle of whatever it was doing: on a persister, the acks
and deliveries of every message then in flight. None of them will ever be
garbage, so once a process is up they are moved where the collector never
looks (``gc.freeze``). docs/performance.md has the measurements.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what startup left behind, then exempt everything alive from collection.

    Call once, when the process has finished starting. Returns how many objects
    the collector now leaves alone.
    """
    # Collect first: a cycle that is garbage now would otherwise be kept for ever.
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
