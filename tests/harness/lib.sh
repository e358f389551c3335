# Shared functions of the test harness: a real mosquitto and a real PostgreSQL, each on a
# free loopback port, with state under one directory ($DEVBRIDGE_TEST_DIR). Sourced by
# tests/harness/with-services, tests/harness/svc and scripts/demo; not run on its own.
# DEVBRIDGE_PG_OPTIONS replaces the test-speed PostgreSQL settings (the demo keeps fsync on);
# DEVBRIDGE_MQTT_LISTEN_ADDR the broker's listen address (127.0.0.1).

harness_log() { echo "harness: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT SECONDS: polls until something accepts on 127.0.0.1:PORT.
wait_port() {
  local port=$1 deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

pg_bin() { echo "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n1)/bin"; }

# As root: makes sure user postgres can enter /. A root folder others cannot enter (mode
# 700, as a debootstrap root made in a mktemp folder has) keeps it from everything; every
# Debian install has 755.
let_postgres_enter_root() {
  if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x /; then
    echo "harness: user postgres cannot enter / (mode $(stat -c %a /)); allowing it (chmod o+x /)" >&2
    chmod o+x /
  fi
}

# Runs a PostgreSQL tool as the owner of the cluster: postgres when we are root.
as_pg_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    let_postgres_enter_root
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

mqtt_start() {
  local dir=$DEVBRIDGE_TEST_DIR/mqtt port=$DEVBRIDGE_TEST_MQTT_PORT
  mkdir -p "$dir"
  cat >"$dir/mosquitto.conf" <<CONF
listener $port ${DEVBRIDGE_MQTT_LISTEN_ADDR:-127.0.0.1}
allow_anonymous true
persistence true
persistence_location $dir/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 1000
set_tcp_nodelay true
message_size_limit 2097152
log_dest stderr
log_type error
log_type warning
user $(id -un)
CONF
  mosquitto -c "$dir/mosquitto.conf" >>"$dir/mosquitto.log" 2>&1 &
  echo $! >"$dir/pid"
  if ! wait_port "$port" 10; then
    harness_log "mosquitto did not accept on port $port within 10s:"
    cat "$dir/mosquitto.log" >&2
    return 1
  fi
}

mqtt_stop() {
  local pidfile=$DEVBRIDGE_TEST_DIR/mqtt/pid
  [[ -f $pidfile ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

pg_start() {
  local dir=$DEVBRIDGE_TEST_DIR/pg bin
  bin=$(pg_bin)
  if [[ ! -d $dir/data ]]; then
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    as_pg_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; return 1; }
  fi
  if ! as_pg_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-p $DEVBRIDGE_TEST_PG_PORT -k $dir -c listen_addresses=127.0.0.1 ${DEVBRIDGE_PG_OPTIONS:--c fsync=off -c synchronous_commit=off -c full_page_writes=off} -c max_connections=200" \
    start >/dev/null; then
    harness_log "PostgreSQL did not start:"
    cat "$dir/postgres.log" >&2
    return 1
  fi
  wait_port "$DEVBRIDGE_TEST_PG_PORT" 10
}

pg_stop() {
  local dir=$DEVBRIDGE_TEST_DIR/pg
  [[ -f $dir/data/postmaster.pid ]] || return 0
  as_pg_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
    as_pg_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}
