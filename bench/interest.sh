#!/usr/bin/env bash
# Interest routing, measured (issue "Past one machine"): R push replicas (processes), with
# WebSocket clients of S systems (one per simulated device) spread over them, receive the
# device events for W seconds, first on ingest's gRPC stream (every replica gets every
# event) and then on the NATS bus (each replica reads the cluster subject and its clients'
# streams). Prints the events each replica received per mode, and the ratio.
# Usage: tests/harness/with-services bench/interest.sh [BUILD_DIR] [REPLICAS] [SYSTEMS] [SECONDS]
#        (scripts/bench interest)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-release}
replicas=${2:-8} systems=${3:-1000} seconds=${4:-30}
source "$root/tests/harness/lib.sh"
work=$(mktemp -d)
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
wait_healthy() {
  local deadline=$((SECONDS + 60))
  until curl -fs "$1" >/dev/null; do
    ((SECONDS < deadline)) || { echo "interest: $1 never became healthy" >&2; tail -n 5 "$work"/*.log >&2; exit 1; }
    sleep 0.2
  done
}
metric() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

# One JetStream server (the events kept once): what a replica receives does not depend on
# how many copies the bus keeps.
nats_port=$(free_port) nats_http=$(free_port)
mkdir -p "$work/nats"
printf 'listen: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\njetstream { store_dir: "%s/nats" }\n' "$nats_port" "$nats_http" "$work" \
  >"$work/nats.conf"

run() {  # run MODE: starts everything, measures, stops everything
  local mode=$1 bus=() i
  if [[ $mode == bus ]]; then
    rm -rf "$work/nats" && mkdir -p "$work/nats"
    nats-server -c "$work/nats.conf" 2>"$work/nats.log" &
    pids+=($!)
    wait_healthy "http://127.0.0.1:$nats_http/healthz"
    bus=(--bus="nats://127.0.0.1:$nats_port")
  fi
  local grpc http
  grpc=$(free_port) http=$(free_port)
  "$build/services/ingest/devbridge-ingest" --mqtt_url="$DEVBRIDGE_TEST_MQTT_URL" --pg_dsn=none --spool_dir=none \
    --register_map="$root/config/registers.json" --grpc_listen="127.0.0.1:$grpc" --http_listen="127.0.0.1:$http" \
    --mqtt_client_id="interest-$$-$mode" --topic_prefix="interest/$$/$mode" --bus_replicas=1 "${bus[@]}" \
    2>"$work/ingest-$mode.log" &
  pids+=($!)
  wait_healthy "http://127.0.0.1:$http/healthz"
  ports=()
  for ((i = 1; i <= replicas; i++)); do
    local p g
    p=$(free_port) g=$(free_port)
    "$build/services/push/devbridge-push" --ingest_addr="127.0.0.1:$grpc" --listen="127.0.0.1:$p" \
      --grpc_listen="127.0.0.1:$g" --node_id="push-$i" "${bus[@]}" 2>"$work/push-$i-$mode.log" &
    pids+=($!)
    ports+=("$p")
  done
  for p in "${ports[@]}"; do wait_healthy "http://127.0.0.1:$p/healthz"; done
  # Clients first (their streams are wanted before the devices speak), then the devices.
  node "$root/bench/interest_clients.mjs" "$systems" "${ports[@]}" >"$work/clients-$mode.out" 2>&1 &
  local clients=$!
  pids+=($clients)
  local deadline=$((SECONDS + 120))
  until grep -q '^ready' "$work/clients-$mode.out"; do
    ((SECONDS < deadline)) || { echo "interest: clients never ready" >&2; cat "$work/clients-$mode.out" >&2; exit 1; }
    sleep 0.2
  done
  "$build/sim/devbridge-sim" --mqtt_url="$DEVBRIDGE_TEST_MQTT_URL" --devices="$systems" --topic_prefix="interest/$$/$mode" \
    --register_map="$root/config/registers.json" --data_interval=5s --heartbeat_interval=30s 2>"$work/sim-$mode.log" &
  pids+=($!)
  sleep 10  # the devices connect and come online
  local before=() after=()
  for p in "${ports[@]}"; do before+=("$(metric "$p" devbridge_push_events_total)"); done
  sleep "$seconds"
  for p in "${ports[@]}"; do after+=("$(metric "$p" devbridge_push_events_total)"); done
  local total=0 per=()
  for ((i = 0; i < replicas; i++)); do
    per+=($(( ${after[i]%.*} - ${before[i]%.*} )))
    total=$((total + per[i]))
  done
  local frames
  frames=$(grep -o 'frames [0-9]*' "$work/clients-$mode.out" | tail -1 || true)
  echo "$mode: events received per replica in ${seconds}s: ${per[*]} (mean $((total / replicas))); clients got ${frames#frames } frames in all"
  eval "mean_$mode=$((total / replicas))"
  stop_all
}

echo "== interest routing: $replicas push replicas, clients of $systems systems (one per device, spread over the replicas), a reading per device every 5 s"
run grpc
run bus
awk -v g="$mean_grpc" -v b="$mean_bus" -v r="$replicas" 'BEGIN {
  printf "events per replica: single-ingest mode %d, bus %d: %.3f of what each replica gets in the single-ingest mode (its clients hold about 1/%d of the device streams; the rest is the cluster subject)\n", g, b, (g ? b / g : 0), r }'
