"""``chime bench``: the load generator.

It opens many WebSocket connections over many channels (in several load
processes, each with its own uvloop event loop), sends on a paced schedule,
and reports what the server did with it: connections held, connect rate, server
memory per connection, deliveries per second, send→deliver and send→ack latency
percentiles, errors by code, and completeness (every acked message reached every
subscriber of its channel exactly once).

Modules:

* :mod:`~chime_actors.bench.stats`: pure arithmetic (percentiles, the pacing
  schedule, completeness accounting), unit-tested without sockets;
* :mod:`~chime_actors.bench.options`: the validated options of one run and the
  messages between the parent and its load processes;
* :mod:`~chime_actors.bench.load`: one load process (connections, senders,
  receivers);
* :mod:`~chime_actors.bench.wire`: the load processes' minimal WebSocket client
  (the ``websockets`` client cost ~2.5x the CPU per received frame);
* :mod:`~chime_actors.bench.target`: the server under test (``--start`` or
  ``--url``) and its memory;
* :mod:`~chime_actors.bench.runner`: the parent that drives the phases;
* :mod:`~chime_actors.bench.report`: the table and the JSON.
"""
