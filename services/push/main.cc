// devbridge-push: WebSocket sessions, groups and systems for web pages; the Push API.
#include <unistd.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/shutdown.h"
#include "grpcutil/security.h"
#include "httpd/http_server.h"
#include "services/push/app/app.h"

ABSL_FLAG(std::string, ingest_addr, "127.0.0.1:7070",
          "ingest's gRPC address (event stream, commands); several ingest replicas (ingest --partitions) as a "
          "list of HOST:PORT (names or addresses) separated by commas: calls stay on one while it answers and go to "
          "the next when it does not");
ABSL_FLAG(std::string, bus, "",
          "NATS servers with JetStream, nats://HOST:PORT[,...] (the same as ingest's --bus): events come from "
          "the bus and API operations go to it, so this replica does not depend on one ingest; ingest_addr "
          "then serves commands and the device list only (multi-machine mode, see docs/scaling.md); empty: no bus");
ABSL_FLAG(absl::Duration, node_timeout, absl::Seconds(15),
          "with --bus: a replica not heard from for this long is gone and its clients are forgotten (each says it "
          "is alive every third of it)");
ABSL_FLAG(std::string, listen, "0.0.0.0:8080", "HTTP and WebSocket (GET /ws) listen address");
ABSL_FLAG(std::string, grpc_listen, "0.0.0.0:7071", "gRPC listen address (service devbridge.v1.Push)");
ABSL_FLAG(std::string, node_id, "", "this replica's name in the cluster (default HOSTNAME:PORT)");
ABSL_FLAG(std::string, auth_secret, "", "HS256 secret for client and API tokens; empty: no auth (warned at start)");
ABSL_FLAG(std::string, web_root, "", "directory of the dashboard's files, served at /");
ABSL_FLAG(std::string, fleet_system, "fleet", "system that may command every device and gets every device event");
ABSL_FLAG(std::string, allowed_origins, "", "comma-separated Origin values allowed to open /ws; empty: any");
ABSL_FLAG(int, max_message_bytes, 65536, "largest client frame; larger closes the connection (1009)");
ABSL_FLAG(int, send_queue_bytes, 1048576, "unsent bytes a client may have before it is closed (4008)");
ABSL_FLAG(absl::Duration, ping_interval, absl::Seconds(25), "how often clients are pinged");
ABSL_FLAG(absl::Duration, pong_timeout, absl::Seconds(10), "a client that does not answer a ping in time is closed");
ABSL_FLAG(absl::Duration, flush_interval, absl::ZeroDuration(),
          "least time between two rounds of socket writes; frames queued meanwhile share one write per client "
          "(fewer system calls under a heavy fan-out, at most this much added latency). 0: a round starts at once "
          "unless the previous one ended less than its own length ago (then it waits for that, at most 25ms)");
ABSL_FLAG(int, history_size, 1000, "messages kept per system and per group for recover");
ABSL_FLAG(absl::Duration, history_ttl, absl::Minutes(5), "how long messages are kept for recover");
ABSL_FLAG(int, max_groups_per_client, 128, "groups one client may be in; a join or bind past it gets 429");
ABSL_FLAG(int, max_http_connections, 1024,
          "connections that are not WebSocket sessions (plain HTTP, handshakes) past which a request gets 503");
ABSL_FLAG(std::string, internal_token, "",
          "token every gRPC call to this replica must carry (authorization: Bearer ...), health checks excepted; "
          "also sent to ingest; empty: none");
ABSL_FLAG(std::string, grpc_tls_cert, "", "PEM certificate: this replica's gRPC server runs TLS, and presents it to "
          "ingest when ingest asks for a client certificate");
ABSL_FLAG(std::string, grpc_tls_key, "", "PEM private key of grpc_tls_cert");
ABSL_FLAG(std::string, grpc_tls_ca, "", "PEM CA: ingest's certificate must be signed by it (the channel runs TLS), "
          "and so must gRPC clients' of this replica (mutual TLS)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off");

int main(int argc, char** argv) {
  using devbridge::common::FlagError;
  devbridge::common::BlockShutdownSignals();
  devbridge::common::ParseFlags(argc, argv, "devbridge-push",
                                "WebSocket sessions for web pages, groups, systems, commands and the Push API");
  if (auto s = devbridge::common::SetLogLevel(absl::GetFlag(FLAGS_log_level)); !s.ok()) FlagError("log_level", s.message());
  devbridge::push::PushOptions o;
  o.ingest_addr = absl::GetFlag(FLAGS_ingest_addr);
  devbridge::common::RequireNonEmpty("ingest_addr", o.ingest_addr);
  if (const std::string bus = absl::GetFlag(FLAGS_bus); !bus.empty()) {
    auto urls = devbridge::bus::ParseBusFlag(bus);
    if (!urls.ok()) FlagError("bus", urls.status().message());
    o.bus_urls = *urls;
  }
  o.node_timeout = absl::GetFlag(FLAGS_node_timeout);
  if (o.node_timeout < absl::Seconds(1)) FlagError("node_timeout", "must be at least 1s");
  o.listen = absl::GetFlag(FLAGS_listen);
  auto hp = devbridge::httpd::SplitHostPort(o.listen);
  if (!hp.ok()) FlagError("listen", hp.status().message());
  o.grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  if (auto g = devbridge::httpd::SplitHostPort(o.grpc_listen); !g.ok()) FlagError("grpc_listen", g.status().message());
  o.node_id = absl::GetFlag(FLAGS_node_id);
  if (o.node_id.empty()) {
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    o.node_id = absl::StrCat(host, ":", hp->second);
  }
  o.auth_secret = absl::GetFlag(FLAGS_auth_secret);
  o.web_root = absl::GetFlag(FLAGS_web_root);
  if (!o.web_root.empty() && access(o.web_root.c_str(), R_OK | X_OK) != 0) FlagError("web_root", "not a readable directory");
  o.fleet_system = absl::GetFlag(FLAGS_fleet_system);
  devbridge::common::RequireNonEmpty("fleet_system", o.fleet_system);
  for (absl::string_view origin : absl::StrSplit(absl::GetFlag(FLAGS_allowed_origins), ',', absl::SkipEmpty())) {
    o.allowed_origins.emplace_back(origin);
  }
  const int max_message = absl::GetFlag(FLAGS_max_message_bytes);
  devbridge::common::RequireInRange("max_message_bytes", max_message, 64, 64 << 20);
  o.max_message_bytes = static_cast<size_t>(max_message);
  const int send_queue = absl::GetFlag(FLAGS_send_queue_bytes);
  devbridge::common::RequireInRange("send_queue_bytes", send_queue, 1024, 1 << 30);
  o.send_queue_bytes = static_cast<size_t>(send_queue);
  o.ping_interval = absl::GetFlag(FLAGS_ping_interval);
  devbridge::common::RequirePositive("ping_interval", o.ping_interval);
  o.pong_timeout = absl::GetFlag(FLAGS_pong_timeout);
  devbridge::common::RequirePositive("pong_timeout", o.pong_timeout);
  o.flush_interval = absl::GetFlag(FLAGS_flush_interval);
  if (o.flush_interval > absl::Seconds(1)) devbridge::common::FlagError("flush_interval", "must be at most 1s");
  const int history = absl::GetFlag(FLAGS_history_size);
  devbridge::common::RequireInRange("history_size", history, 0, 10000000);
  o.history_size = static_cast<size_t>(history);
  o.history_ttl = absl::GetFlag(FLAGS_history_ttl);
  devbridge::common::RequirePositive("history_ttl", o.history_ttl);
  const int max_groups = absl::GetFlag(FLAGS_max_groups_per_client);
  devbridge::common::RequireInRange("max_groups_per_client", max_groups, 1, 1000000);
  o.max_groups_per_client = static_cast<size_t>(max_groups);
  const int http_connections = absl::GetFlag(FLAGS_max_http_connections);
  devbridge::common::RequireInRange("max_http_connections", http_connections, 1, 1000000);
  o.max_http_connections = static_cast<size_t>(http_connections);
  o.security.internal_token = absl::GetFlag(FLAGS_internal_token);
  o.security.tls_cert = absl::GetFlag(FLAGS_grpc_tls_cert);
  o.security.tls_key = absl::GetFlag(FLAGS_grpc_tls_key);
  o.security.tls_ca = absl::GetFlag(FLAGS_grpc_tls_ca);
  devbridge::common::RequireOk(devbridge::grpcutil::Validate(o.security, /*server=*/false));

  auto app = devbridge::push::App::Create(o);
  if (!app.ok()) {
    devbridge::common::Logger("push")->error("cannot start: {}", app.status().message());
    return 1;
  }
  const int sig = devbridge::common::WaitForShutdown();
  devbridge::common::Logger("push")->info("signal {}: shutting down", sig);
  (*app)->Shutdown();
  return 0;
}
