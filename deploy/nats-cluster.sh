#!/usr/bin/env bash
# Start a three-server NATS cluster on this machine from deploy/nats-cluster.conf:
# clients on 4222-4224, routes on 6222-6224, stores under ${STATE:-.moonwire/nats-cluster}.
# Ctrl-C stops them. Then run nodes against all three, e.g.
#
#   moonwire run examples/hello --node n1 --nats nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${STATE:-.moonwire/nats-cluster}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait' INT TERM EXIT
for i in 1 2 3; do
    routes=()
    for j in 1 2 3; do [ "$j" != "$i" ] && routes+=("\"nats://127.0.0.1:$((6221 + j))\""); done
    mkdir -p "$state/s$i"
    MW_NATS_NAME="s$i" MW_NATS_PORT=$((4221 + i)) MW_NATS_CLUSTER_PORT=$((6221 + i)) \
    MW_NATS_ROUTES="[$(IFS=,; echo "${routes[*]}")]" \
        nats-server -c "$here/nats-cluster.conf" -js -sd "$state/s$i" & pids+=($!)
done
wait
