// The ingest application: owns and wires the io thread, the core, the MQTT client, the
// spool, the store, the event log and the gRPC and HTTP servers. Members are declared in
// dependency order, so destruction runs in reverse; Shutdown() stops intake, settles
// in-flight commands, flushes the writer and stops the servers.
//
// The path of a message: the MQTT callback appends it to the spool and queues it in memory
// (or, past max_pending_messages, leaves it on disk only); the io thread feeds the core from
// memory, then from disk, in spool order; the core's records carry the spool position they
// complete, and the store moves the checkpoint in the transaction that commits them. At start
// the io thread waits for that checkpoint and replays the spool from it.
#ifndef DEVBRIDGE_SERVICES_INGEST_APP_APP_H_
#define DEVBRIDGE_SERVICES_INGEST_APP_APP_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcutil/security.h"
#include "mqtt/client.h"
#include "services/ingest/bus/event_publisher.h"
#include "regmap/register_map.h"

namespace devbridge::ingest {

struct IngestOptions {
  std::string mqtt_url = "tcp://127.0.0.1:1883";
  std::string mqtt_client_id;  // required
  std::string mqtt_username;
  std::string mqtt_password;
  mqtt::Transport mqtt_transport;  // TLS files, mqtt_insecure, mqtt_version
  int mqtt_qos = 1;
  std::string topic_prefix = "devices";
  std::string shared_group;
  std::string pg_dsn;          // "none": no persistence
  std::string grpc_listen = "0.0.0.0:7070";
  std::string http_listen = "0.0.0.0:9090";
  absl::Duration heartbeat_timeout = absl::Seconds(90);
  absl::Duration sweep_interval = absl::Seconds(1);
  std::shared_ptr<const regmap::RegisterMap> register_map;  // required
  uint32_t poll_failures = 3;                           // CONTRACT §10.4
  int poll_qos = 0;  // QoS of poll requests: a late poll is worth nothing, so none is queued for later
  absl::Duration poll_backoff_max = absl::Seconds(60);
  absl::Duration command_timeout = absl::Seconds(5);
  size_t command_queue_depth = 16;
  std::string fleet_system = "fleet";
  size_t replay_buffer = 100000;
  size_t replay_buffer_bytes = size_t{256} << 20;  // the replay buffer's bound in bytes too
  absl::Duration forget_after = absl::Hours(24);   // offline devices and idle streams
  size_t max_http_connections = 1024;
  grpcutil::Security security;  // internal_token and grpc_tls_* (CONTRACT §10.2)
  size_t max_pending_messages = 100000;     // taken from MQTT, not yet processed
  size_t db_queue_bytes = size_t{64} << 20;  // records waiting for PostgreSQL
  // The disk spool (CONTRACT §10.3); "none": off. Needs persistence (pg_dsn not "none").
  std::string spool_dir = "devbridge-spool";
  size_t spool_max_bytes = size_t{1024} << 20;
  absl::Duration spool_sync = absl::Milliseconds(2);  // 0: fsync after every message
  // The NATS JetStream bus (`--bus`; no URLs: none): events are appended to it as well.
  BusOptions bus;
  // Several replicas sharing the fleet (`--partitions`; 0: this one owns every device). Needs
  // the bus, PostgreSQL and the spool; the MQTT subscription is then shared (shared_group,
  // "devbridge-ingest" when empty). See services/ingest/cluster/.
  int partitions = 0;
  absl::Duration lease_ttl = absl::Seconds(6);  // a dead replica's partitions move after this
  // Upper bound of Shutdown(): what PostgreSQL has not taken by then stays in the spool.
  absl::Duration shutdown_timeout = absl::Seconds(15);
};

class App {
 public:
  // Starts everything; fails if a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<App>> Create(IngestOptions options);
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  int grpc_port() const;
  int http_port() const;
  // Loads the register map at `path` and puts it in force (SIGHUP): decoding and polling
  // plans change at once. A map that does not load leaves the old one in force; either way
  // it is logged (with file:line:reason) and counted in devbridge_ingest_register_map_reloads_total.
  absl::Status ReloadRegisterMap(const std::string& path);

  // Idempotent; the destructor calls it.
  void Shutdown();

 private:
  struct Impl;
  explicit App(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_APP_APP_H_
