#include "services/push/app/app.h"

#include <grpcpp/grpcpp.h>

#include <asio.hpp>
#include <future>
#include <thread>

#include "absl/container/node_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/metrics.h"
#include "services/push/core/push_node.h"
#include "services/push/http/http_api.h"
#include "services/push/rpc/push_service.h"
#include "services/push/upstream/bus_link.h"
#include "services/push/upstream/ingest_link.h"
#include "services/push/ws/ws_server.h"

namespace devbridge::push {

struct App::Impl : public Transport, public WsHandler {
  explicit Impl(PushOptions o) : options(std::move(o)), log(common::Logger("push")) {}

  void Post(std::function<void()> fn) { asio::post(io, std::move(fn)); }

  // Transport
  size_t Send(ConnId conn, const std::shared_ptr<const std::string>& frame) override { return ws->Send(conn, frame); }
  void Close(ConnId conn, int code, const std::string& reason) override { ws->Close(conn, code, reason); }

  // WsHandler
  std::optional<std::pair<int, std::string>> OnHandshake(uint64_t conn, absl::string_view query,
                                                         absl::string_view origin) override {
    auto result = node->Validate(query, origin, absl::Now());
    if (auto* refusal = std::get_if<Refusal>(&result)) {
      log->debug("handshake refused ({}): {}", refusal->status, refusal->message);
      return std::make_pair(refusal->status, refusal->message);
    }
    pending[conn] = std::get<ConnectRequest>(std::move(result));
    return std::nullopt;
  }
  void OnOpen(uint64_t conn) override {
    auto it = pending.find(conn);
    if (it == pending.end()) return;
    ConnectRequest req = std::move(it->second);
    pending.erase(it);
    node->OnOpen(conn, std::move(req), absl::Now());
  }
  void OnMessage(uint64_t conn, absl::string_view text) override { node->OnMessage(conn, text, absl::Now()); }
  void OnClose(uint64_t conn) override {
    pending.erase(conn);
    node->OnClose(conn);
  }
  void OnHttp(const httpd::Request& request, std::function<void(httpd::Response)> reply) override {
    api->Handle(request, std::move(reply));
  }

  PushOptions options;
  std::shared_ptr<spdlog::logger> log;
  common::MetricsRegistry metrics;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::unique_ptr<IngestLink> link;  // with --bus: commands and the device directory only
  std::unique_ptr<BusLink> bus;      // with --bus: events, API operations, membership
  std::unique_ptr<PushNode> node;
  std::unique_ptr<HttpApi> api;
  absl::node_hash_map<uint64_t, ConnectRequest> pending;  // handshakes accepted, not yet open
  std::unique_ptr<WsServer> ws;
  std::unique_ptr<PushService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;
  asio::steady_timer sweep_timer{io};

  void ArmSweepTimer() {
    sweep_timer.expires_after(std::chrono::seconds(1));
    sweep_timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      node->Sweep(absl::Now());
      ArmSweepTimer();
    });
  }
  std::thread io_thread;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<App>> App::Create(PushOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl& s = *impl;
  const PushOptions& o = s.options;
  if (o.node_id.empty()) return absl::InvalidArgumentError("node_id is empty");
  if (o.auth_secret.empty()) {
    s.log->warn("auth_secret is empty: WebSocket clients and API callers are NOT authenticated");
  }
  if (o.security.internal_token.empty()) {
    s.log->warn("internal_token is empty: gRPC callers are NOT authenticated (set it, and grpc_tls_*, on an "
                "untrusted network)");
  }
  const bool on_bus = !o.bus_urls.empty();
  auto on_state = [&s](bool up) {
    s.log->log(up ? spdlog::level::info : spdlog::level::warn, "upstream {} {}",
               s.options.bus_urls.empty() ? "ingest" : "bus", up ? "up" : "DOWN");
    s.node->OnUpstream(up);
  };
  LinkOptions lo;
  lo.ingest_addr = o.ingest_addr;
  lo.node_id = o.node_id;
  lo.security = o.security;
  lo.subscribe = !on_bus;
  auto link = IngestLink::Create(
      lo, [&s](std::function<void()> fn) { s.Post(std::move(fn)); },
      [&s](const std::vector<v1::Event>& events) {
        const absl::Time now = absl::Now();
        for (const v1::Event& e : events) s.node->OnEvent(e, now);
      },
      on_state, &s.metrics);
  if (!link.ok()) return link.status();
  s.link = *std::move(link);
  Upstream* upstream = s.link.get();
  if (on_bus) {
    BusLinkOptions bo;
    bo.urls = o.bus_urls;
    bo.node_id = o.node_id;
    bo.read_back = o.history_size;  // what a client may still recover
    s.bus = std::make_unique<BusLink>(
        bo, [&s](std::function<void()> fn) { s.Post(std::move(fn)); },
        [&s](const v1::Event& event, bool past) {
          if (past) return s.node->OnPastEvent(event);
          s.node->OnEvent(event, absl::Now());
        },
        on_state,
        [&s](const std::string& system_id, const std::string& group_name) {
          s.node->OnStreamReady(system_id, group_name);
        },
        s.link.get(), &s.metrics);
    upstream = s.bus.get();
  }
  NodeOptions no;
  no.node_id = o.node_id;
  no.fleet_system = o.fleet_system;
  no.auth_secret = o.auth_secret;
  no.allowed_origins = o.allowed_origins;
  no.history_size = o.history_size;
  no.history_ttl = o.history_ttl;
  no.send_queue_bytes = o.send_queue_bytes;
  no.max_groups_per_client = o.max_groups_per_client;
  if (on_bus) {  // ingest no longer sees the replicas: they watch each other
    no.node_timeout = o.node_timeout;
    no.alive_interval = o.node_timeout / 3;
  }
  s.node = std::make_unique<PushNode>(no, &s, upstream, &s.metrics);
  s.api = std::make_unique<HttpApi>(s.node.get(), s.link.get(), o.web_root, &s.metrics);

  WsOptions wo;
  wo.listen = o.listen;
  wo.max_message_bytes = o.max_message_bytes;
  wo.max_http_body_bytes = o.max_message_bytes;  // an API body past it gets 413 (CONTRACT §10.1)
  wo.max_http_connections = o.max_http_connections;
  wo.handler_errors = &s.metrics.AddCounter("devbridge_push_handler_errors_total",
                                            "WebSocket and HTTP handlers that failed with an exception (a bug).");
  wo.ping_interval = o.ping_interval;
  wo.pong_timeout = o.pong_timeout;
  wo.flush_interval = o.flush_interval;
  auto ws = WsServer::Start(s.io, wo, &s);
  if (!ws.ok()) return ws.status();
  s.ws = *std::move(ws);

  s.service = std::make_unique<PushService>([&s](std::function<void()> fn) { s.Post(std::move(fn)); }, s.node.get(),
                                            o.security.internal_token);
  auto credentials = grpcutil::ServerCredentials(o.security);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.grpc_listen, *credentials, &s.grpc_port);
  builder.RegisterService(s.service.get());
  s.grpc_server = builder.BuildAndStart();
  if (!s.grpc_server || s.grpc_port == 0) return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", o.grpc_listen));

  s.ArmSweepTimer();
  s.io_thread = std::thread([&s] { s.io.run(); });
  s.link->Start();
  if (s.bus) s.bus->Start();
  s.log->info("node {}: WebSocket and HTTP on {} (port {}), gRPC on {} (port {}), ingest at {}{}, web_root {}",
              o.node_id, o.listen, s.ws->port(), o.grpc_listen, s.grpc_port, o.ingest_addr,
              on_bus ? absl::StrCat(" (commands), events on the bus ", absl::StrJoin(o.bus_urls, ",")) : "",
              o.web_root.empty() ? "(none)" : o.web_root);
  return std::unique_ptr<App>(new App(std::move(impl)));
}

App::App(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

App::~App() { Shutdown(); }

int App::port() const { return impl_->ws->port(); }
int App::grpc_port() const { return impl_->grpc_port; }

void App::Shutdown() {
  Impl& s = *impl_;
  if (s.shut_down) return;
  s.shut_down = true;
  s.log->info("shutting down");
  s.grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::promise<void> closed;
  s.Post([&s, &closed] {
    s.sweep_timer.cancel();
    s.ws->Shutdown();
    closed.set_value();
  });
  closed.get_future().wait();
  if (s.bus) s.bus->Stop();
  s.link->Stop();
  // Give close frames a moment to go out, then stop the loop.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  s.work.reset();
  s.io.stop();
  s.io_thread.join();
  s.log->info("stopped");
}

}  // namespace devbridge::push
