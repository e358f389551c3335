// devbridge-ingest: MQTT device side → Modbus decoding → PostgreSQL and the event stream.
#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "common/flags.h"
#include "mqtt/flags.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "grpcutil/security.h"
#include "services/ingest/app/app.h"

ABSL_FLAG(std::string, mqtt_url, "tcp://127.0.0.1:1883",
          "MQTT broker URL: tcp://HOST:PORT, or ssl://HOST:PORT (mqtts://) for TLS (see mqtt_ca_file)");
ABSL_FLAG(std::string, mqtt_client_id, "", "MQTT client id (default devbridge-ingest-HOSTNAME); "
          "the broker keeps this id's session while ingest is away");
ABSL_FLAG(std::string, mqtt_username, "", "MQTT user name");
ABSL_FLAG(std::string, mqtt_password, "", "MQTT password");
ABSL_FLAG(int, mqtt_qos, 1, "QoS of the subscriptions and of command publishes (0, 1 or 2)");
ABSL_FLAG(std::string, topic_prefix, "devices", "topic prefix P of P/ID/heartbeat, P/ID/data, P/ID/command");
ABSL_FLAG(std::string, shared_group, "", "subscribe as $share/<group>/... (several ingest replicas); empty: plain");
ABSL_FLAG(std::string, pg_dsn, "postgresql://postgres@127.0.0.1:5432/devbridge",
          "PostgreSQL connection string; the database is created if missing; 'none' runs without persistence");
ABSL_FLAG(std::string, grpc_listen, "0.0.0.0:7070", "gRPC listen address (service devbridge.v1.Ingest)");
ABSL_FLAG(std::string, http_listen, "0.0.0.0:9090", "HTTP listen address for /healthz and /metrics");
ABSL_FLAG(absl::Duration, heartbeat_timeout, absl::Seconds(90), "a device is offline after this much silence");
ABSL_FLAG(absl::Duration, sweep_interval, absl::Seconds(1), "how often silent devices are swept offline");
ABSL_FLAG(std::string, register_map, "config/registers.json",
          "register map file (JSON): profiles, device globs and polling plans; SIGHUP reloads it");
ABSL_FLAG(int, poll_failures, 3, "polls in a row without a good reply after which a device is unresponsive");
ABSL_FLAG(int, poll_qos, 0,
          "QoS of poll requests (0, 1 or 2); 0: the broker keeps none for a disconnected DTU to answer late, "
          "and a lost one is a missed poll, retried at the next slot");
ABSL_FLAG(absl::Duration, poll_backoff_max, absl::Seconds(60),
          "an unresponsive device is probed at twice its shortest interval, doubling up to this");
ABSL_FLAG(absl::Duration, command_timeout, absl::Seconds(5), "default command timeout (timeoutMs overrides, up to 60s)");
ABSL_FLAG(int, command_queue_depth, 16, "commands that may wait per device behind the one in flight");
ABSL_FLAG(std::string, fleet_system, "fleet", "system that receives every device's events");
ABSL_FLAG(int, replay_buffer, 100000, "events kept for push replicas to resume from");
ABSL_FLAG(int, replay_buffer_mb, 256, "MiB the replay buffer may hold; the oldest events go first past it");
ABSL_FLAG(absl::Duration, forget_after, absl::Hours(24),
          "a device offline (or a push stream unused) this long is dropped from memory; its rows stay");
ABSL_FLAG(int, max_http_connections, 1024, "open HTTP connections past which a new one gets 503");
ABSL_FLAG(std::string, internal_token, "",
          "token every gRPC call must carry (authorization: Bearer ...), health checks excepted; empty: none");
ABSL_FLAG(std::string, grpc_tls_cert, "", "PEM certificate the gRPC server presents (with grpc_tls_key): TLS");
ABSL_FLAG(std::string, grpc_tls_key, "", "PEM private key of grpc_tls_cert");
ABSL_FLAG(std::string, grpc_tls_ca, "", "PEM CA that must have signed the client's certificate: mutual TLS");
ABSL_FLAG(int, max_pending_messages, 100000, "MQTT messages taken but not yet processed before intake pauses");
ABSL_FLAG(int, db_queue_mb, 64, "MiB of records waiting for PostgreSQL before intake pauses");
ABSL_FLAG(std::string, spool_dir, "devbridge-spool",
          "folder of the disk spool every MQTT message is written to before it is processed, so a crash loses "
          "nothing the broker handed over; on persistent storage; 'none' turns it off");
ABSL_FLAG(int, spool_max_mb, 1024, "MiB the spool may hold (a PostgreSQL outage fills it); past it intake pauses");
ABSL_FLAG(absl::Duration, spool_sync, absl::Milliseconds(2),
          "at most this long between fsyncs of the spool (what a power cut can lose); 0 fsyncs every message");
ABSL_FLAG(std::string, bus, "",
          "NATS servers with JetStream, nats://HOST:PORT[,...]: events are also appended to the bus "
          "(multi-machine mode, in progress; see docs/scaling.md); empty: no bus");
ABSL_FLAG(int, bus_replicas, 3, "copies of the bus's event stream when ingest creates it (1 for a single server)");
ABSL_FLAG(absl::Duration, bus_max_age, absl::Hours(24), "how long the bus keeps events (how far back clients recover)");
ABSL_FLAG(int, partitions, 0,
          "share the fleet with other ingest replicas (needs --bus, PostgreSQL and the spool): devices are "
          "hashed to this many partitions, each owned by one live replica through a lease on the bus; every "
          "replica forwards what the broker hands it to the owner. Every replica must use the same number. "
          "0: this ingest owns every device");
ABSL_FLAG(absl::Duration, lease_ttl, absl::Seconds(6),
          "with --partitions: a dead replica's partitions are taken over this long after its last renewal "
          "(renewed every third of it)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off");

int main(int argc, char** argv) {
  using devbridge::common::FlagError;
  devbridge::common::BlockShutdownSignals();
  devbridge::common::BlockReloadSignal();
  devbridge::common::ParseFlags(argc, argv, "devbridge-ingest",
                                "MQTT device side, Modbus decoding, commands, PostgreSQL and the event stream");
  if (auto s = devbridge::common::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) {
    FlagError("log_level", s.message());
  }
  devbridge::ingest::IngestOptions o;
  o.mqtt_url = absl::GetFlag(FLAGS_mqtt_url);
  o.mqtt_client_id = absl::GetFlag(FLAGS_mqtt_client_id);
  if (o.mqtt_client_id.empty()) {
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    o.mqtt_client_id = absl::StrCat("devbridge-ingest-", host);
  }
  o.mqtt_username = absl::GetFlag(FLAGS_mqtt_username);
  o.mqtt_password = absl::GetFlag(FLAGS_mqtt_password);
  o.mqtt_qos = absl::GetFlag(FLAGS_mqtt_qos);
  o.mqtt_transport = devbridge::mqtt::TransportFromFlags(o.mqtt_url);
  devbridge::common::RequireInRange("mqtt_qos", o.mqtt_qos, 0, 2);
  o.topic_prefix = absl::GetFlag(FLAGS_topic_prefix);
  devbridge::common::RequireNonEmpty("topic_prefix", o.topic_prefix);
  o.shared_group = absl::GetFlag(FLAGS_shared_group);
  o.pg_dsn = absl::GetFlag(FLAGS_pg_dsn);
  devbridge::common::RequireNonEmpty("pg_dsn", o.pg_dsn);
  o.grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  o.heartbeat_timeout = absl::GetFlag(FLAGS_heartbeat_timeout);
  devbridge::common::RequirePositive("heartbeat_timeout", o.heartbeat_timeout);
  o.sweep_interval = absl::GetFlag(FLAGS_sweep_interval);
  devbridge::common::RequirePositive("sweep_interval", o.sweep_interval);
  const int poll_failures = absl::GetFlag(FLAGS_poll_failures);
  devbridge::common::RequireInRange("poll_failures", poll_failures, 1, 1000000);
  o.poll_failures = static_cast<uint32_t>(poll_failures);
  o.poll_qos = absl::GetFlag(FLAGS_poll_qos);
  devbridge::common::RequireInRange("poll_qos", o.poll_qos, 0, 2);
  o.poll_backoff_max = absl::GetFlag(FLAGS_poll_backoff_max);
  devbridge::common::RequirePositive("poll_backoff_max", o.poll_backoff_max);
  const std::string map_path = absl::GetFlag(FLAGS_register_map);
  auto map = devbridge::regmap::RegisterMap::LoadFile(map_path);
  if (!map.ok()) FlagError("register_map", map.status().message());
  o.register_map = std::make_shared<const devbridge::regmap::RegisterMap>(*std::move(map));
  devbridge::common::Logger("ingest")->info("register map {}: {} profile(s)", map_path,
                                            o.register_map->profiles().size());
  o.command_timeout = absl::GetFlag(FLAGS_command_timeout);
  devbridge::common::RequirePositive("command_timeout", o.command_timeout);
  if (o.command_timeout > absl::Seconds(60)) FlagError("command_timeout", "must be at most 60s");
  const int depth = absl::GetFlag(FLAGS_command_queue_depth);
  devbridge::common::RequireInRange("command_queue_depth", depth, 1, 100000);
  o.command_queue_depth = static_cast<size_t>(depth);
  o.fleet_system = absl::GetFlag(FLAGS_fleet_system);
  devbridge::common::RequireNonEmpty("fleet_system", o.fleet_system);
  const int replay = absl::GetFlag(FLAGS_replay_buffer);
  devbridge::common::RequireInRange("replay_buffer", replay, 1, 100000000);
  o.replay_buffer = static_cast<size_t>(replay);
  const int replay_mb = absl::GetFlag(FLAGS_replay_buffer_mb);
  devbridge::common::RequireInRange("replay_buffer_mb", replay_mb, 1, 1 << 20);
  o.replay_buffer_bytes = static_cast<size_t>(replay_mb) << 20;
  o.forget_after = absl::GetFlag(FLAGS_forget_after);
  devbridge::common::RequirePositive("forget_after", o.forget_after);
  const int http_connections = absl::GetFlag(FLAGS_max_http_connections);
  devbridge::common::RequireInRange("max_http_connections", http_connections, 1, 1000000);
  o.max_http_connections = static_cast<size_t>(http_connections);
  o.security.internal_token = absl::GetFlag(FLAGS_internal_token);
  o.security.tls_cert = absl::GetFlag(FLAGS_grpc_tls_cert);
  o.security.tls_key = absl::GetFlag(FLAGS_grpc_tls_key);
  o.security.tls_ca = absl::GetFlag(FLAGS_grpc_tls_ca);
  devbridge::common::RequireOk(devbridge::grpcutil::Validate(o.security, /*server=*/true));
  const int pending = absl::GetFlag(FLAGS_max_pending_messages);
  devbridge::common::RequireInRange("max_pending_messages", pending, 16, 100000000);
  o.max_pending_messages = static_cast<size_t>(pending);
  const int db_mb = absl::GetFlag(FLAGS_db_queue_mb);
  devbridge::common::RequireInRange("db_queue_mb", db_mb, 1, 65536);
  o.db_queue_bytes = static_cast<size_t>(db_mb) << 20;
  o.spool_dir = absl::GetFlag(FLAGS_spool_dir);
  devbridge::common::RequireNonEmpty("spool_dir", o.spool_dir);
  const int spool_mb = absl::GetFlag(FLAGS_spool_max_mb);
  devbridge::common::RequireInRange("spool_max_mb", spool_mb, 1, 1 << 24);
  o.spool_max_bytes = static_cast<size_t>(spool_mb) << 20;
  o.spool_sync = absl::GetFlag(FLAGS_spool_sync);
  if (o.spool_sync > absl::Seconds(10)) devbridge::common::FlagError("spool_sync", "must be at most 10s");

  if (const std::string bus = absl::GetFlag(FLAGS_bus); !bus.empty()) {
    auto urls = devbridge::bus::ParseBusFlag(bus);
    if (!urls.ok()) FlagError("bus", urls.status().message());
    o.bus.urls = *urls;
  }
  o.bus.replicas = absl::GetFlag(FLAGS_bus_replicas);
  devbridge::common::RequireInRange("bus_replicas", o.bus.replicas, 1, 5);
  o.bus.max_age = absl::GetFlag(FLAGS_bus_max_age);
  if (o.bus.max_age < absl::Minutes(1)) devbridge::common::FlagError("bus_max_age", "must be at least 1m");

  o.partitions = absl::GetFlag(FLAGS_partitions);
  devbridge::common::RequireInRange("partitions", o.partitions, 0, 4096);
  o.lease_ttl = absl::GetFlag(FLAGS_lease_ttl);
  if (o.lease_ttl < absl::Seconds(1)) devbridge::common::FlagError("lease_ttl", "must be at least 1s");

  auto app = devbridge::ingest::App::Create(o);
  if (!app.ok()) {
    devbridge::common::Logger("ingest")->error("cannot start: {}", app.status().message());
    return 1;
  }
  int sig;
  while ((sig = devbridge::common::WaitForShutdownOrReload()) == SIGHUP) {
    // A map that does not load leaves the one in force; the app logs and counts either way.
    (void)(*app)->ReloadRegisterMap(map_path);
  }
  devbridge::common::Logger("ingest")->info("signal {}: shutting down", sig);
  (*app)->Shutdown();
  return 0;
}
