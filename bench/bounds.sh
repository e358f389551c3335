#!/usr/bin/env bash
# The memory bounds of CONTRACT §10.1, measured: starts ingest and push (from the build
# folder) against the harness's mosquitto and PostgreSQL, with history_ttl 10s,
# heartbeat_timeout 5s and forget_after 20s so that the bounds act within the run, and prints
# the RSS of both processes across rounds of each hostile scenario (bench/bounds.mjs).
# Usage: tests/harness/with-services bench/bounds.sh [BUILD_DIR]   (scripts/bench bounds)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-release}
source "$root/tests/harness/lib.sh"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

grpc=$(free_port) http=$(free_port) push=$(free_port) push_grpc=$(free_port)
"$build/services/ingest/devbridge-ingest" --mqtt_url="$DEVBRIDGE_TEST_MQTT_URL" \
  --pg_dsn="${DEVBRIDGE_TEST_PG_DSN%/*}/bounds" --register_map="$root/config/registers.json" \
  --grpc_listen="127.0.0.1:$grpc" --http_listen="127.0.0.1:$http" --forget_after=20s --heartbeat_timeout=5s \
  --mqtt_client_id="bounds-$$" 2>"$work/ingest.log" &
pids+=($!)
ingest_pid=$!
"$build/services/push/devbridge-push" --ingest_addr="127.0.0.1:$grpc" --listen="127.0.0.1:$push" \
  --grpc_listen="127.0.0.1:$push_grpc" --history_ttl=10s --max_message_bytes=1200000 2>"$work/push.log" &
pids+=($!)
push_pid=$!
for url in "http://127.0.0.1:$http/healthz" "http://127.0.0.1:$push/healthz"; do
  deadline=$((SECONDS + 60))
  until curl -fs "$url" >/dev/null; do
    ((SECONDS < deadline)) || { echo "bounds: $url never became healthy" >&2; tail "$work"/*.log >&2; exit 1; }
    sleep 0.2
  done
done
node "$root/bench/bounds.mjs" "$push" "$ingest_pid" "$push_pid" "$DEVBRIDGE_TEST_MQTT_PORT" 30
