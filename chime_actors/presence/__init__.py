"""Presence, typing and read markers (docs/protocol.md, "Presence, typing, read markers").

* ``table``: who is online where, as sets per *origin* (pure, no I/O);
* ``messages``: the records gateways, the Redis bridge and the API exchange on lanes;
* ``hub``: a gateway's side (its own connections, its replicas of the others);
* ``codec`` and ``redis_presence``: a host's side on the Redis bus (the bridge);
* ``unread``: the read marker rules shared by the gateway and the REST API.

Where each piece lives and why is in docs/architecture.md, "Presence and typing".
"""
