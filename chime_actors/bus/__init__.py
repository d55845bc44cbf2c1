"""The bus between hosts: Redis Pub/Sub, one topic per channel (``channel:<id>``).

With ``bus.backend: local`` (one host) persisters deliver straight to the gateways
and nothing here runs. With ``bus.backend: redis`` the ``RedisBridgeActor`` is this
host's one path to the others: it publishes what this host's persisters stored and
delivers what the other hosts published to this host's gateways.
"""
