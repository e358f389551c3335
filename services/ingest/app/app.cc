#include "services/ingest/app/app.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <asio.hpp>
#include <deque>
#include <future>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/uuid.h"
#include "httpd/http_server.h"
#include "mqtt/client.h"
#include "regmap/register_map.h"
#include "services/ingest/core/event_log.h"
#include "services/ingest/core/ingest_core.h"
#include "services/ingest/rpc/ingest_service.h"
#include "services/ingest/store/store.h"

namespace devbridge::ingest {
namespace {

constexpr size_t kDrainBatch = 512;
constexpr absl::Duration kCommandTick = absl::Milliseconds(10);
constexpr absl::Duration kDrainLinger = absl::Milliseconds(1);

struct Message {
  std::string topic;
  std::string payload;
  absl::Time taken_at;
};

}  // namespace

struct App::Impl : public CoreOutputs {
  explicit Impl(IngestOptions o) : options(std::move(o)), log(common::Logger("ingest")) {}

  // CoreOutputs, called on the io thread.
  void PublishCommand(const std::string& device_id, const std::string& hex) override {
    const std::string topic = absl::StrCat(options.topic_prefix, "/", device_id, "/command");
    if (absl::Status s = mqtt->Publish(topic, hex, options.mqtt_qos); !s.ok()) {
      log->warn("[{}] command not published: {}", device_id, s.message());
    }
  }
  void Store(StoreRecord record) override {
    if (store) store->Push(std::move(record));
  }
  void Emit(v1::Event event, const std::vector<StreamRef>& streams) override {
    event_log->Append(std::move(event), streams, absl::Now());
  }

  void Post(std::function<void()> fn) { asio::post(io, std::move(fn)); }

  // Paho thread: take the message. Paho has already acknowledged it to the broker, so it
  // must be kept; past max_pending_messages we also pause intake, and the broker holds
  // what follows. Only what was already on its way arrives after that, so the overshoot is
  // small and bounded by the broker's in-flight window and socket buffers.
  void OnMessage(absl::string_view topic, absl::string_view payload) {
    bool pause = false;
    {
      common::MutexLock lock(&intake_mu);
      intake.push_back({std::string(topic), std::string(payload), absl::Now()});
      intake_depth->Set(static_cast<int64_t>(intake.size()));
      pause = intake.size() > options.max_pending_messages;
    }
    if (pause && !pause_requested.exchange(true)) {
      pushbacks->Inc();
      Post([this] { mqtt->Pause(); });
    }
    ScheduleDrain();
  }

  void ScheduleDrain() {
    if (!drain_scheduled.exchange(true)) Post([this] { Drain(false); });
  }

  // Io thread: feed taken messages to the core, unless the store is full (then the store's
  // on_space schedules us again). `all` ignores the store bound (shutdown).
  void Drain(bool all) {
    drain_scheduled = false;
    if (!all && store && store->Full()) {
      drain_blocked = true;
      return;
    }
    drain_blocked = false;
    std::vector<Message> batch;
    size_t left = 0;
    {
      common::MutexLock lock(&intake_mu);
      const size_t n = all ? intake.size() : std::min(intake.size(), kDrainBatch);
      batch.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(intake.front()));
        intake.pop_front();
      }
      left = intake.size();
      intake_depth->Set(static_cast<int64_t>(left));
    }
    for (const Message& m : batch) core->OnMessage(m.topic, m.payload, m.taken_at);
    if (left > 0) {
      ScheduleDrain();
    } else if (!batch.empty() && !all && !drain_scheduled.exchange(true)) {
      // Under load, drain again shortly on a timer instead of being woken per message:
      // one wake-up per millisecond instead of one per message. Idle, the first message
      // wakes us at once.
      drain_timer.expires_after(absl::ToChronoMicroseconds(kDrainLinger));
      drain_timer.async_wait([this](std::error_code ec) {
        if (!ec) Drain(false);
      });
    }
    if (mqtt && mqtt->paused() && !stopping && left <= options.max_pending_messages / 2 &&
        !(store && store->Full())) {
      pause_requested = false;
      mqtt->Resume();
    }
  }

  void ArmCommandTimer() {
    command_timer.expires_after(absl::ToChronoMilliseconds(kCommandTick));
    command_timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      core->ExpireCommands(absl::Now());
      commands_queued->Set(static_cast<int64_t>(core->commands().total()));
      ArmCommandTimer();
    });
  }

  // A whole pass over the streams: once a minute is often enough for a bound in hours.
  void ForgetIdleStreams(absl::Time now) {
    if (now - last_stream_sweep < absl::Minutes(1)) return;
    event_log->ForgetIdleStreams(now, options.forget_after);
    last_stream_sweep = now;
  }
  absl::Time last_stream_sweep = absl::Now();

  void ArmSweepTimer() {
    sweep_timer.expires_after(absl::ToChronoMilliseconds(options.sweep_interval));
    sweep_timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      // While intake is paused or blocked, silence says nothing about the devices.
      const bool liveness = !(mqtt->paused() || drain_blocked);
      const absl::Time now = absl::Now();
      core->Tick(now, liveness);
      ForgetIdleStreams(now);
      devices_online->Set(static_cast<int64_t>(core->devices().online_count()));
      devices_known->Set(static_cast<int64_t>(core->devices().size()));
      ArmSweepTimer();
    });
  }

  httpd::Response Http(const httpd::Request& request) {
    if (request.path == "/metrics") {
      return {200, "text/plain; version=0.0.4; charset=utf-8", metrics.Render()};
    }
    if (request.path == "/healthz") {
      const bool mqtt_up = mqtt->connected();
      // CONTRACT §10.3: records waiting with none committed for 10 s is a failure too, even
      // while the database answers.
      const bool failing = store != nullptr && store->writes_failing(absl::Now());
      const bool db_up = store == nullptr || (store->healthy() && !failing);
      std::string body = absl::StrCat(mqtt_up && db_up ? "ok" : "unavailable", "\nmqtt: ",
                                      mqtt_up ? "up" : (mqtt->paused() ? "paused" : "down"), "\npostgresql: ",
                                      store == nullptr ? "disabled"
                                      : failing        ? "writes failing"
                                      : db_up          ? "up"
                                                       : "down",
                                      "\n");
      return {mqtt_up && db_up ? 200 : 503, "text/plain; charset=utf-8", body};
    }
    return {404, "text/plain; charset=utf-8", "not found: try /healthz or /metrics\n"};
  }

  IngestOptions options;
  std::shared_ptr<spdlog::logger> log;
  common::MetricsRegistry metrics;
  std::shared_ptr<const regmap::RegisterMap> map;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  asio::steady_timer command_timer{io};
  asio::steady_timer sweep_timer{io};
  asio::steady_timer drain_timer{io};
  std::unique_ptr<EventLog> event_log;
  std::unique_ptr<ingest::Store> store;
  std::unique_ptr<IngestCore> core;

  common::Mutex intake_mu;
  std::deque<Message> intake ABSL_GUARDED_BY(intake_mu);  // taken on Paho's thread, drained on the io thread
  std::atomic<bool> drain_scheduled{false};
  std::atomic<bool> pause_requested{false};
  bool drain_blocked = false;
  bool stopping = false;
  std::unique_ptr<mqtt::Client> mqtt;

  std::unique_ptr<IngestService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;
  std::unique_ptr<httpd::HttpServer> http;
  std::thread io_thread;
  bool shut_down = false;

  common::Counter* pushbacks = nullptr;
  common::Gauge* intake_depth = nullptr;
  common::Gauge* commands_queued = nullptr;
  common::Gauge* devices_online = nullptr;
  common::Gauge* devices_known = nullptr;
};

absl::StatusOr<std::unique_ptr<App>> App::Create(IngestOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  Impl& s = *impl;
  const IngestOptions& o = s.options;

  if (o.register_map == nullptr) return absl::InvalidArgumentError("no register map");
  s.map = o.register_map;

  s.pushbacks = &s.metrics.AddCounter("devbridge_ingest_pushbacks_total",
                                      "Times intake paused because it was full (the broker kept what followed).");
  s.intake_depth = &s.metrics.AddGauge("devbridge_ingest_intake_depth", "Messages taken but not yet processed.");
  s.commands_queued = &s.metrics.AddGauge("devbridge_ingest_commands_pending", "Commands waiting or in flight.");
  s.devices_online = &s.metrics.AddGauge("devbridge_ingest_devices_online", "Devices online.");
  s.devices_known = &s.metrics.AddGauge("devbridge_ingest_devices_known", "Devices seen since start.");
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_up", "1 while connected to the broker.", {},
                       [&s] { return s.mqtt && s.mqtt->connected() ? 1.0 : 0.0; });
  s.metrics.AddGaugeFn("devbridge_ingest_mqtt_duplicates_dropped", "QoS 1 redeliveries of messages already taken.",
                       {}, [&s] { return s.mqtt ? static_cast<double>(s.mqtt->duplicates_dropped()) : 0.0; });

  const std::string epoch = common::RandomToken(12);
  s.event_log = std::make_unique<EventLog>(epoch, o.replay_buffer, o.replay_buffer_bytes);
  s.log->info("event stream epoch {} (replay buffer {} events)", epoch, o.replay_buffer);

  if (o.pg_dsn == "none") {
    s.log->warn("pg_dsn=none: running WITHOUT persistence; nothing is written to PostgreSQL");
  } else {
    StoreOptions so;
    so.dsn = o.pg_dsn;
    so.max_queue_bytes = o.db_queue_bytes;
    s.store = Store::Start(so, &s.metrics);
    s.store->SetOnSpace([&s] { s.ScheduleDrain(); });
  }

  CoreOptions co;
  co.topic_prefix = o.topic_prefix;
  co.fleet_system = o.fleet_system;
  co.heartbeat_timeout = o.heartbeat_timeout;
  co.command_timeout = o.command_timeout;
  co.command_queue_depth = o.command_queue_depth;
  co.forget_after = o.forget_after;
  s.core = std::make_unique<IngestCore>(co, s.map, &s, &s.metrics);

  // gRPC first, so a failure to listen stops us before we take any message.
  s.service = std::make_unique<IngestService>([&s](std::function<void()> fn) { s.Post(std::move(fn)); },
                                              s.core.get(), s.event_log.get(), s.store.get(), &s.metrics,
                                              o.security.internal_token);
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, grpcutil::ServerCredentials(o.security));
  if (o.security.internal_token.empty()) {
    s.log->warn("internal_token is empty: gRPC callers are NOT authenticated (set it, and grpc_tls_*, on an "
                "untrusted network)");
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.grpc_listen, credentials, &s.grpc_port);
  builder.RegisterService(s.service.get());
  s.grpc_server = builder.BuildAndStart();
  if (!s.grpc_server || s.grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", o.grpc_listen));
  }
  httpd::ServerOptions http_options;
  http_options.max_connections = o.max_http_connections;
  auto http = httpd::HttpServer::Start(s.io, o.http_listen, [&s](const httpd::Request& r) { return s.Http(r); },
                                       http_options);
  if (!http.ok()) return http.status();
  s.http = *std::move(http);

  mqtt::Options mo;
  mo.url = o.mqtt_url;
  mo.client_id = o.mqtt_client_id;
  mo.username = o.mqtt_username;
  mo.password = o.mqtt_password;
  mo.clean_session = false;  // the broker keeps our QoS 1 messages while we are away or paused
  mo.log_name = "ingest.mqtt";
  const std::string share = o.shared_group.empty() ? "" : absl::StrCat("$share/", o.shared_group, "/");
  mo.subscriptions = {{absl::StrCat(share, o.topic_prefix, "/+/heartbeat"), o.mqtt_qos},
                      {absl::StrCat(share, o.topic_prefix, "/+/data"), o.mqtt_qos}};
  auto client = mqtt::Client::Create(
      mo, [&s](absl::string_view topic, absl::string_view payload) { s.OnMessage(topic, payload); });
  if (!client.ok()) return client.status();
  s.mqtt = *std::move(client);

  s.ArmCommandTimer();
  s.ArmSweepTimer();
  s.io_thread = std::thread([&s] { s.io.run(); });
  s.mqtt->Start();
  s.log->info("listening: gRPC {} (port {}), HTTP {} (port {}); MQTT {} as {}", o.grpc_listen, s.grpc_port,
              o.http_listen, s.http->port(), o.mqtt_url, o.mqtt_client_id);
  return std::unique_ptr<App>(new App(std::move(impl)));
}

App::App(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

App::~App() { Shutdown(); }

int App::grpc_port() const { return impl_->grpc_port; }
int App::http_port() const { return impl_->http->port(); }

void App::Shutdown() {
  Impl& s = *impl_;
  if (s.shut_down) return;
  s.shut_down = true;
  s.log->info("shutting down: stopping intake");
  s.mqtt->Stop();
  // On the io thread: process what was already taken, then settle every command.
  std::promise<void> settled;
  s.Post([&s, &settled] {
    s.stopping = true;
    s.Drain(/*all=*/true);
    s.core->FailAll(absl::Now(), "ingest is shutting down");
    settled.set_value();
  });
  settled.get_future().wait();
  if (s.store) {
    s.log->info("flushing {} record(s) to PostgreSQL", s.store->queued_records());
    s.store->Stop(absl::Seconds(10));
  }
  s.grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::promise<void> stopped;
  s.Post([&s, &stopped] {
    s.command_timer.cancel();
    s.sweep_timer.cancel();
    s.drain_timer.cancel();
    s.http->Stop();
    stopped.set_value();
  });
  stopped.get_future().wait();
  s.work.reset();
  s.io.stop();
  s.io_thread.join();
  s.log->info("stopped");
}

}  // namespace devbridge::ingest
