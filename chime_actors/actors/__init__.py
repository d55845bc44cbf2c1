"""Process actors: Thespian actors, each its own OS process.

``Supervisor`` (root) creates and restarts ``GatewayActor`` x N, the
``PersisterActor`` pool and the ``ApiActor``. See docs/architecture.md.
"""
