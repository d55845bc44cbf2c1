"""Process actors: Thespian actors, each its own OS process.

``Supervisor`` (root) creates and restarts ``GatewayActor`` x N, the
``PersisterActor`` pool and the ``ApiActor``. Each process actor is a
composition root: it wires the real adapters (store, bus, ids, lanes) into its
core. The shell they share lives in ``chime_actors.runtime``. See
docs/architecture.md.
"""
