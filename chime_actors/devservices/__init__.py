"""Start and stop the real local services Chime's integration tests need.

    bin/services up     [--dir DIR] [--redis-password PW] [--only redis|cassandra]
                        [--cassandra auto|5.0|2.1]
    bin/services down   [--dir DIR] [--purge]
    bin/services status [--dir DIR]

DIR defaults to .services/ in the repo root.  Downloads are cached under
~/.cache/chime (or $CHIME_CACHE_DIR).  Environment: CHIME_CASSANDRA_VERSION
(default 5.0.9), CHIME_CASSANDRA (default auto), CHIME_CASSANDRA_START_TIMEOUT
(seconds, default 240), CHIME_JAVA (a Java 17 binary).

`up` starts Debian's redis-server and a single-node Apache Cassandra on free
loopback ports, waits until both answer, and writes DIR/services.json.
`down` stops exactly the processes `up` started (by their pidfiles, checked
against /proc/PID/cmdline), SIGTERM first, SIGKILL after a timeout.

``bin/services`` runs this package with the project's virtual environment
(creating it first through ``bin/chime`` when it does not exist yet), because
the readiness probes use redis-py and cassandra-driver. See docs/services.md
for how it works, the Cassandra it runs and measured times.
"""
