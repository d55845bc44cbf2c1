"""The actor runtime: infrastructure every process shares, and no core.

The loop bridge (Thespian thread to asyncio loop), lanes (the data plane
between processes), the ``LoopActor`` shell, the control-plane records
(``messages``), the metrics reporter, the sealed admin transport and the
lifeline. Nothing here imports a core package (gateway, persister, api, bus,
presence, handlers) or the process actors (``chime_actors.actors``):
tests/unit/test_layering.py checks. See docs/architecture.md, "Layering".
"""
