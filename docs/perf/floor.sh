#!/usr/bin/env bash
# docs/perf/floor.sh MODE: floor_server.py in MODE (full, nosync, nostore, single) under the
# load generator of ../shared/peers, chatty by default (or the loadgen.js options in $LOAD).
set -u
CHIME=$(cd "$(dirname "$0")/../.." && pwd)
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/chime-peers}   # ../shared/peers/side-by-side.sh installs loadgen.js there
LOAD=${LOAD:---conns 2000 --channels 200 --senders 200 --msgs 20 --interval 1000}
T=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$CHIME/.venv/bin/python" "$CHIME/docs/perf/floor_server.py" $PORT $1 $T > $T/log 2>&1 & SP=$!
for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done; sleep 1
node "$PEERS_HOME/loadgen.js" --target chime --url ws://127.0.0.1:$PORT/ --server-pid $SP $LOAD | sed "s/\"target\":\"chime\"/\"target\":\"floor-$1\"/"
kill -TERM $SP; wait $SP; tail -5 $T/log; rm -rf $T
