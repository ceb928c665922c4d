#!/usr/bin/env bash
# Start a local cluster of N nodes (default 3) for a project on one machine.
# The first node starts the embedded NATS (and Temporal, if the project has an
# embedded temporal.client); the others join them. Ctrl-C stops them all.
#
#   deploy/local-cluster.sh examples/hello 3
set -euo pipefail
project=${1:?usage: local-cluster.sh PROJECT [NODES]}
count=${2:-3}
state="$project/.moonwire"
pids=()

stop_all() {
    trap - INT TERM
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    wait
}
trap stop_all INT TERM

moonwire run "$project" --node n1 & pids+=($!)
# The others join the servers n1 records in the state folder once they answer.
for _ in $(seq 1 200); do
    [ -s "$state/servers.json" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "n1 exited" >&2; exit 1; }
    sleep 0.1
done
for i in $(seq 2 "$count"); do
    moonwire run "$project" --node "n$i" & pids+=($!)
done
wait
