// The push application: owns and wires the io thread, the PushNode, the WebSocket/HTTP
// server, the gRPC Push service and the link to ingest. Members are declared in dependency
// order; Shutdown() stops them in reverse.
#ifndef DEVBRIDGE_SERVICES_PUSH_APP_APP_H_
#define DEVBRIDGE_SERVICES_PUSH_APP_APP_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcutil/security.h"

namespace devbridge::push {

struct PushOptions {
  std::string ingest_addr = "127.0.0.1:7070";
  // --bus: NATS servers (bus::ParseBusFlag). Events come from the bus and this replica's API
  // operations go to it; ingest_addr then carries commands and the device directory only.
  std::vector<std::string> bus_urls;
  // With the bus: a replica not heard from for this long is gone (its clients are forgotten);
  // each says it is alive every third of it.
  absl::Duration node_timeout = absl::Seconds(15);
  std::string listen = "0.0.0.0:8080";
  std::string grpc_listen = "0.0.0.0:7071";
  std::string node_id;  // required
  std::string auth_secret;
  std::string web_root;
  std::string fleet_system = "fleet";
  std::vector<std::string> allowed_origins;
  size_t max_message_bytes = 65536;
  size_t send_queue_bytes = 1 << 20;
  absl::Duration ping_interval = absl::Seconds(25);
  absl::Duration pong_timeout = absl::Seconds(10);
  absl::Duration flush_interval = absl::ZeroDuration();
  size_t history_size = 1000;
  absl::Duration history_ttl = absl::Minutes(5);
  size_t max_groups_per_client = 128;
  size_t max_http_connections = 1024;
  // internal_token (required of gRPC callers here, sent to ingest) and grpc_tls_* (this
  // server's TLS, and the channel to ingest) (CONTRACT §10.2).
  grpcutil::Security security;
};

class App {
 public:
  static absl::StatusOr<std::unique_ptr<App>> Create(PushOptions options);
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  int port() const;
  int grpc_port() const;
  void Shutdown();

 private:
  struct Impl;
  explicit App(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_APP_APP_H_
