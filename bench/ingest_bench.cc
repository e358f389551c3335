// Ingest benchmarks (issue 3), against the real binaries, a real mosquitto and PostgreSQL:
//
//   throughput  simulated devices publish QoS 1 data frames; frames/s decoded and committed to
//               PostgreSQL flat out, then publish→commit latency while offered 0.7x the rate of
//               a bare Paho subscriber that only counts, measured first in the same run; with
//               the spool and without; the ratios ours/bare and spool/no spool.
//   dispatch    command round trip through gRPC Dispatch to devbridge-sim (zero reply delay):
//               p50/p99 at 200 commands/s, and the commands/s ceiling.
//   stream      events/s from the event stream to one subscriber.
//
// Run through scripts/bench, which starts the broker and the database. Prints figures only.
#include <csignal>
#include <MQTTAsync.h>
#include <sys/resource.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bench/raw_publisher.h"
#include "devbridge/v1/ingest.grpc.pb.h"
#include "modbus/frame.h"
#include "modbus/payload.h"

namespace devbridge::bench {
namespace {

using Config = ServiceEnv;

// Publishes frames over a few raw MQTT connections (bench/raw_publisher.h), so the load
// generator is cheap next to what it loads.
class Publisher {
 public:
  Publisher(const std::string& url, int connections) {
    for (int i = 0; i < connections; ++i) {
      conns_.push_back(std::make_unique<RawPublisher>(url, absl::StrCat("bench-pub-", getpid(), "-", i)));
    }
  }
  void Send(const std::string& topic, const std::string& payload) {
    conns_[next_++ % conns_.size()]->Publish(topic, payload);
  }
  void Drain() {
    for (auto& c : conns_) c->Drain();
  }

 private:
  std::vector<std::unique_ptr<RawPublisher>> conns_;
  size_t next_ = 0;
};

struct PublishRun {
  uint64_t frames = 0;
  double seconds = 0;
  int64_t first_us = 0;
};

// Publishes to P/dev-NNN/data round robin: at `rate` frames/s (0: flat out) for `seconds`.
PublishRun Publish(Publisher& pub, const std::string& prefix, int devices, double rate, double seconds,
                   uint32_t first_seq) {
  std::vector<std::string> topics;
  for (int d = 0; d < devices; ++d) topics.push_back(absl::StrCat(prefix, "/dev-", d, "/data"));
  PublishRun run;
  run.first_us = NowMicros();
  const auto start = std::chrono::steady_clock::now();
  uint32_t seq = first_seq;
  while (true) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed >= seconds) break;
    const uint64_t due = rate > 0 ? static_cast<uint64_t>(elapsed * rate) + 1 : run.frames + 100;
    while (run.frames < due) {
      pub.Send(topics[run.frames % topics.size()], BenchFrameHex(seq++, NowMicros()));
      ++run.frames;
    }
    if (rate > 0) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

// Follows the readings table, recording publish→visible latency of every row.
class CommitWatcher {
 public:
  explicit CommitWatcher(const std::string& dsn) : conn_(dsn) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~CommitWatcher() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t seen() const { return seen_.load(); }
  int64_t last_us() const { return last_us_.load(); }
  std::vector<double> TakeLatencies() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::move(latencies_ms_);
  }

 private:
  void Loop() {
    int64_t last_id = 0;
    while (!stop_) {
      pqxx::read_transaction tx(conn_);
      pqxx::result rows = tx.exec_params(
          "SELECT id, (\"values\"->'sent_us'->>'value')::bigint FROM readings WHERE id > $1 ORDER BY id",
          last_id);
      const int64_t now = NowMicros();
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& row : rows) {
        last_id = row[0].as<int64_t>();
        latencies_ms_.push_back(static_cast<double>(now - row[1].as<int64_t>()) / 1000.0);
      }
      if (!rows.empty()) last_us_ = now;
      seen_ += rows.size();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  pqxx::connection conn_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> seen_{0};
  std::atomic<int64_t> last_us_{0};
  std::mutex mu_;
  std::vector<double> latencies_ms_;
  std::thread thread_;
};

struct Ingest {
  int grpc_port = FreePort();
  int http_port = FreePort();
  std::unique_ptr<Child> child;
};

// `label` names its MQTT session and log: two runs on one prefix must not share a session,
// or the second is handed what the broker still held for the first.
Ingest StartIngest(const Config& c, const std::string& dsn, const std::string& prefix, const std::string& map,
                   const std::vector<std::string>& extra = {}, const std::string& label = "") {
  const std::string name = label.empty() ? prefix : label;
  Ingest in;
  std::vector<std::string> argv = {c.bin_dir + "/services/ingest/devbridge-ingest",
                                   "--mqtt_url=" + c.mqtt_url,
                                   absl::StrCat("--mqtt_client_id=bench-ingest-", getpid(), "-", name),
                                   "--topic_prefix=" + prefix,
                                   "--pg_dsn=" + dsn,
                                   absl::StrCat("--grpc_listen=127.0.0.1:", in.grpc_port),
                                   absl::StrCat("--http_listen=127.0.0.1:", in.http_port),
                                   "--register_map=" + map,
                                   "--heartbeat_timeout=120s",
                                   "--log_level=warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  // More flags for every ingest this bench starts, e.g. INGEST_BENCH_FLAGS=--bus=nats://… to
  // measure what the bus costs.
  if (const char* more = std::getenv("INGEST_BENCH_FLAGS"); more != nullptr) {
    for (absl::string_view flag : absl::StrSplit(more, ' ', absl::SkipEmpty())) argv.emplace_back(flag);
  }
  in.child = std::make_unique<Child>(argv, c.log_dir + "/ingest-" + name + ".log");
  if (!WaitHealthy(in.http_port, 30)) {
    std::fprintf(stderr, "ingest did not become healthy; see %s/ingest-%s.log\n", c.log_dir.c_str(), name.c_str());
    std::exit(1);
  }
  return in;
}

// Waits until `watcher` has seen `expected` rows (or `timeout_s`); returns whether it did.
bool WaitCommitted(CommitWatcher& watcher, uint64_t expected, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (watcher.seen() < expected && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return watcher.seen() >= expected;
}

// ---- bare Paho subscriber (runs as its own process) ----

int BareSubscriber(const std::string& url, const std::string& filter, uint64_t expect) {
  struct State {
    std::atomic<uint64_t> count{0};
    std::atomic<int64_t> first_us{0}, last_us{0};
    std::atomic<int> subscribed{0};
  } st;
  MQTTAsync c;
  MQTTAsync_create(&c, url.c_str(), absl::StrCat("bench-bare-", getpid()).c_str(), MQTTCLIENT_PERSISTENCE_NONE, nullptr);
  MQTTAsync_setCallbacks(
      c, &st, nullptr,
      [](void* ctx, char* topic, int, MQTTAsync_message* m) -> int {
        auto* s = static_cast<State*>(ctx);
        const int64_t now = NowMicros();
        if (s->count.fetch_add(1) == 0) s->first_us = now;
        s->last_us = now;
        MQTTAsync_freeMessage(&m);
        MQTTAsync_free(topic);
        return 1;
      },
      nullptr);
  MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer;
  opts.cleansession = 1;
  opts.context = c;
  static std::string sub_filter;
  sub_filter = filter;
  static State* state = &st;
  opts.onSuccess = [](void* ctx, MQTTAsync_successData*) {
    MQTTAsync_responseOptions r = MQTTAsync_responseOptions_initializer;
    r.onSuccess = [](void*, MQTTAsync_successData*) { state->subscribed = 1; };
    MQTTAsync_subscribe(static_cast<MQTTAsync>(ctx), sub_filter.c_str(), 1, &r);
  };
  MQTTAsync_connect(c, &opts);
  while (st.subscribed == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::printf("ready\n");
  std::fflush(stdout);
  int idle = 0;
  uint64_t last = 0;
  while (st.count < expect && idle < 100) {  // 10 s without progress ends it
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    idle = st.count == last ? idle + 1 : 0;
    last = st.count;
  }
  const double secs = static_cast<double>(st.last_us - st.first_us) / 1e6;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                     static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  std::printf("received %llu in %.3f s, cpu %.3f s\n", static_cast<unsigned long long>(st.count.load()), secs, cpu);
  std::fflush(stdout);
  return 0;
}

// ---- scenarios ----

struct IngestFigures {
  double flat_rate = 0;       // committed frames/s flat out
  double sustained_rate = 0;  // committed frames/s while offered a fixed rate
  double p50 = 0, p99 = 0;    // publish->commit at that rate, ms
};

// The peer: a bare Paho subscriber in its own process that only counts, fed `n` frames by the
// same publisher flat out. Returns its msg/s.
double BarePaho(const Config& c, Publisher& pub, int devices, uint64_t n) {
  FILE* bare = popen(absl::StrCat(c.bin_dir, "/bench/ingest_bench bare-subscriber ", c.mqtt_url, " 'peer/+/data' ", n)
                         .c_str(),
                     "r");
  char line[256] = {0};
  if (fgets(line, sizeof line, bare) == nullptr || std::strncmp(line, "ready", 5) != 0) {
    std::fprintf(stderr, "bare subscriber did not start\n");
    std::exit(1);
  }
  std::vector<std::string> topics;
  for (int d = 0; d < devices; ++d) topics.push_back(absl::StrCat("peer/dev-", d, "/data"));
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t sent = 0; sent < n; ++sent) {
    pub.Send(topics[sent % topics.size()], BenchFrameHex(static_cast<uint32_t>(sent), NowMicros()));
  }
  pub.Drain();
  const double pub_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  unsigned long long got = 0;
  double secs = 0, cpu = 0;
  if (fgets(line, sizeof line, bare) != nullptr) std::sscanf(line, "received %llu in %lf s, cpu %lf s", &got, &secs, &cpu);
  pclose(bare);
  const double rate = secs > 0 ? static_cast<double>(got) / std::max(secs, pub_secs) : 0;
  std::printf("bare Paho subscriber (counts only, QoS 1): %llu of %llu at %.0f msg/s, CPU %.0f us per message\n", got,
              static_cast<unsigned long long>(n), rate, got > 0 ? cpu / static_cast<double>(got) * 1e6 : 0);
  return rate;
}

// One ingest with `extra` flags: flat out, then a fixed offered `rate`.
IngestFigures RunIngest(const Config& c, Publisher& pub, const std::string& label, double rate, double seconds,
                        int devices, const std::vector<std::string>& extra) {
  const std::string map = c.source_dir + "/bench/registers_bench.json";
  const std::string dsn = FreshDatabase(c, absl::StrCat("bench_ingest_", getpid(), "_", label));
  Ingest ingest = StartIngest(c, dsn, "bench", map, extra, label);
  CommitWatcher watcher(dsn);
  IngestFigures f;

  // 1. Flat out: as fast as the publisher can go; time until everything is committed.
  PublishRun flat = Publish(pub, "bench", devices, 0, seconds, 1u << 30);
  const bool all_flat = WaitCommitted(watcher, flat.frames, 120);
  watcher.TakeLatencies();
  f.flat_rate = static_cast<double>(watcher.seen()) / (static_cast<double>(watcher.last_us() - flat.first_us) / 1e6);
  const std::string metrics = HttpGet(ingest.http_port, "/metrics");
  std::printf("ingest (%s) flat out: published %llu frames at %.0f/s; committed%s at %.0f frames/s"
              " (db batches: %.0f records avg",
              label.c_str(), static_cast<unsigned long long>(flat.frames),
              static_cast<double>(flat.frames) / flat.seconds, all_flat ? "" : " (NOT ALL)", f.flat_rate,
              MetricValue(metrics, "devbridge_ingest_db_batch_records_sum") /
                  std::max(1.0, MetricValue(metrics, "devbridge_ingest_db_batch_records_count")));
  const double fsyncs = MetricValue(metrics, "devbridge_ingest_spool_fsyncs_total");
  if (fsyncs > 0) {
    std::printf("; spool: %.0f fsyncs, %.1f messages per fsync, unsynced window p99 %.1f ms",
                fsyncs, MetricValue(metrics, "devbridge_ingest_spool_appended_total") / fsyncs,
                HistogramQuantile(metrics, "devbridge_ingest_spool_sync_wait_ms", 0.99));
  }
  std::printf(")\n");

  // 2. Sustained: a fixed offered rate.
  const uint64_t before = watcher.seen();
  const std::string m0 = HttpGet(ingest.http_port, "/metrics");
  const double cpu0[3] = {CpuSeconds(ingest.child->pid()), CpuSecondsOf("postgres"), CpuSecondsOf("mosquitto")};
  PublishRun sustained = Publish(pub, "bench", devices, rate, seconds, 0);
  const bool all = WaitCommitted(watcher, before + sustained.frames, 60);
  std::vector<double> lat = watcher.TakeLatencies();
  f.sustained_rate = static_cast<double>(watcher.seen() - before) /
                     (static_cast<double>(watcher.last_us() - sustained.first_us) / 1e6);
  f.p50 = Percentile(lat, 0.5);
  f.p99 = Percentile(lat, 0.99);
  std::printf("ingest (%s) offered %.0f frames/s for %.0f s (%llu frames, %d devices, QoS 1): committed%s at %.0f"
              " frames/s; publish->commit p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
              label.c_str(), rate, sustained.seconds, static_cast<unsigned long long>(sustained.frames), devices,
              all ? "" : " (NOT ALL)", f.sustained_rate, f.p50, f.p99, Percentile(lat, 1.0));
  const double frames = static_cast<double>(std::max<uint64_t>(1, sustained.frames));
  std::printf("  CPU per frame: ingest %.0f us, PostgreSQL %.0f us (its writer, and the bench's watcher), mosquitto"
              " %.0f us (in and out)\n",
              (CpuSeconds(ingest.child->pid()) - cpu0[0]) / frames * 1e6,
              (CpuSecondsOf("postgres") - cpu0[1]) / frames * 1e6, (CpuSecondsOf("mosquitto") - cpu0[2]) / frames * 1e6);
  // Where the time went, from ingest's own histograms over the same window (bucket bounds).
  const std::string m1 = HttpGet(ingest.http_port, "/metrics");
  auto window = [&](const char* name) {
    return absl::StrFormat("p50 %g, p99 %g", WindowQuantile(m0, m1, name, 0.5), WindowQuantile(m0, m1, name, 0.99));
  };
  std::printf("  inside ingest (ms): taken->committed %s; one batch written %s; spool fsync window %s\n",
              window("devbridge_ingest_db_commit_latency_ms").c_str(), window("devbridge_ingest_db_batch_ms").c_str(),
              window("devbridge_ingest_spool_sync_wait_ms").c_str());
  {
    // Every frame carries its sequence number (unique within each phase): the rows beyond the
    // distinct ones were stored twice.
    const std::string after = HttpGet(ingest.http_port, "/metrics");
    pqxx::connection conn(dsn);
    pqxx::read_transaction tx(conn);
    pqxx::row dup = tx.exec1("SELECT count(*) - count(DISTINCT (\"values\"->'seq'->>'value')) FROM readings");
    std::printf("  stored twice: %lld (broker connections %.0f, DUP-flagged arrivals %.0f, dropped as redeliveries"
                " %.0f)\n",
                dup[0].as<long long>(), MetricValue(after, "devbridge_ingest_mqtt_connects"),
                MetricValue(after, "devbridge_ingest_mqtt_dup_flagged"),
                MetricValue(after, "devbridge_ingest_mqtt_duplicates_dropped"));
    if (MetricValue(after, "devbridge_ingest_bus_appended_total") >= 0) {
      std::printf("  bus: %.0f appended, %.0f queued bytes, %.0f dropped, %.0f batch errors; one batch p50 %g ms\n",
                  MetricValue(after, "devbridge_ingest_bus_appended_total"),
                  MetricValue(after, "devbridge_ingest_bus_queue_bytes"),
                  MetricValue(after, "devbridge_ingest_bus_dropped_total"),
                  MetricValue(after, "devbridge_ingest_bus_errors_total"),
                  WindowQuantile(m0, after, "devbridge_ingest_bus_batch_ms", 0.5));
    }
  }
  watcher.Stop();
  ingest.child->Stop();
  return f;
}

// The peer first, then ingest with the spool (as shipped) and without it, each flat out and
// then offered 0.7x the peer's rate.
void Throughput(const Config& c, double seconds, int devices) {
  Publisher pub(c.mqtt_url, 2);
  const double peer = BarePaho(c, pub, devices, 150000);
  const double rate = 0.7 * peer;
  const IngestFigures spool = RunIngest(c, pub, "spool", rate, seconds, devices,
                                        {"--spool_dir=" + c.log_dir + "/bench-spool", "--spool_sync=2ms"});
  const IngestFigures none = RunIngest(c, pub, "nospool", rate, seconds, devices, {"--spool_dir=none"});
  std::printf("durable intake flat out: ours (spool on)/bare Paho = %.2f (target >= 0.8), no spool/bare = %.2f;"
              " spool/no spool = %.2f (target >= 0.90)\n",
              peer > 0 ? spool.flat_rate / peer : 0, peer > 0 ? none.flat_rate / peer : 0,
              none.flat_rate > 0 ? spool.flat_rate / none.flat_rate : 0);
  std::printf("offered 0.7x bare Paho (%.0f frames/s): spool p99 %.1f ms, no spool p99 %.1f ms (target <= 100 ms);"
              " for reference ThingsBoard reports 5000 msg/s on 2 vCPUs\n",
              rate, spool.p99, none.p99);
}

void DispatchBench(const Config& c, int devices) {
  const std::string dsn = FreshDatabase(c, absl::StrCat("bench_dispatch_", getpid()));
  Ingest ingest = StartIngest(c, dsn, "dispatch", c.source_dir + "/config/registers.json",
                              {"--spool_dir=" + c.log_dir + "/dispatch-spool"});
  Child sim({c.bin_dir + "/sim/devbridge-sim", "--mqtt_url=" + c.mqtt_url, "--topic_prefix=dispatch",
             absl::StrCat("--devices=", devices), "--heartbeat_interval=2s", "--stats_interval=0",
             "--register_map=" + c.source_dir + "/config/registers.json", "--log_level=warn"},
            c.log_dir + "/sim-dispatch.log");
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", ingest.grpc_port), grpc::InsecureChannelCredentials());
  auto stub = v1::Ingest::NewStub(channel);
  for (int i = 0; i < 300; ++i) {
    grpc::ClientContext ctx;
    v1::ListDevicesResponse list;
    stub->ListDevices(&ctx, {}, &list);
    int online = 0;
    for (const auto& d : list.devices()) online += d.online();
    if (online == devices) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto device = [](int i) {
    char id[32];
    std::snprintf(id, sizeof id, "sim-%04d", i + 1);
    return std::string(id);
  };

  // Open loop at 200 commands/s for 10 s.
  struct Call {
    grpc::ClientContext ctx;
    v1::Command req;
    v1::CommandResult resp;
    int64_t start_us = 0;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<double> lat;
  int outstanding = 0, errors = 0;
  const int total = 2000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < total; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::microseconds(5000 * i));
    auto* call = new Call;
    call->req.set_device_id(device(i % devices));
    call->req.set_address(0);
    call->req.set_count(12);
    call->start_us = NowMicros();
    {
      std::lock_guard<std::mutex> lock(mu);
      ++outstanding;
    }
    stub->async()->Dispatch(&call->ctx, &call->req, &call->resp, [&, call](grpc::Status s) {
      const double ms = static_cast<double>(NowMicros() - call->start_us) / 1000.0;
      std::lock_guard<std::mutex> lock(mu);
      if (s.ok() && call->resp.code() == 200) lat.push_back(ms); else ++errors;
      --outstanding;
      cv.notify_all();
      delete call;
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return outstanding == 0; });
  }
  const std::string m = HttpGet(ingest.http_port, "/metrics");
  std::printf("  (ingest's own publish->reply: %.2f ms avg over %.0f commands)\n",
              MetricValue(m, "devbridge_ingest_command_latency_ms_sum") /
                  std::max(1.0, MetricValue(m, "devbridge_ingest_command_latency_ms_count")),
              MetricValue(m, "devbridge_ingest_command_latency_ms_count"));
  std::printf("dispatch at 200 commands/s (%d devices, read of 12 registers, zero reply delay): p50 %.2f ms,"
              " p99 %.2f ms, errors %d (targets: p50 <= 1 ms, p99 <= 3 ms)\n",
              devices, Percentile(lat, 0.5), Percentile(lat, 0.99), errors);

  // Ceiling: every device kept busy (one command in flight each, as Modbus allows).
  std::atomic<uint64_t> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int w = 0; w < devices; ++w) {
    workers.emplace_back([&, w] {
      while (!stop) {
        grpc::ClientContext ctx;
        v1::Command req;
        req.set_device_id(device(w));
        req.set_count(12);
        v1::CommandResult resp;
        if (stub->Dispatch(&ctx, req, &resp).ok() && resp.code() == 200) done.fetch_add(1);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(5));
  stop = true;
  for (auto& t : workers) t.join();
  std::printf("dispatch ceiling: %.0f commands/s with %d devices busy\n", static_cast<double>(done.load()) / 5.0,
              devices);
  sim.Stop();
  ingest.child->Stop();
}

void StreamBench(const Config& c, int events) {
  Ingest ingest = StartIngest(c, "none", "stream", c.source_dir + "/config/registers.json",
                              {absl::StrCat("--replay_buffer=", events + 1000)});
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", ingest.grpc_port), grpc::InsecureChannelCredentials());
  auto stub = v1::Ingest::NewStub(channel);
  // Fill the replay buffer through Publish from a few threads.
  std::vector<std::thread> fillers;
  const int threads = 8;
  const auto f0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) {
    fillers.emplace_back([&, t] {
      v1::PushMessage m;
      m.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
      m.set_system_id(absl::StrCat("sys-", t));
      m.set_data(R"({"temperature":21.5,"humidity":45.1,"voltage":230.2})");
      for (int i = t; i < events; i += threads) {
        grpc::ClientContext ctx;
        v1::PublishResponse r;
        stub->Publish(&ctx, m, &r);
      }
    });
  }
  for (auto& t : fillers) t.join();
  const double fill_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_node_id("bench");
  req.set_from_oldest(true);
  const auto t0 = std::chrono::steady_clock::now();
  auto reader = stub->Subscribe(&ctx, req);
  v1::EventBatch batch;
  int got = 0;
  v1::Event e;
  while (got < events && reader->Read(&batch)) {
    for (const auto& bytes : batch.events()) {
      e.ParseFromString(bytes);
      ++got;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ctx.TryCancel();
  std::printf("event stream: %d events to one subscriber in %.2f s = %.0f events/s, parsed"
              " (target >= 100000/s); Publish filled them at %.0f/s\n",
              got, secs, got / secs, events / fill_secs);
  ingest.child->Stop();
}

}  // namespace
}  // namespace devbridge::bench

int main(int argc, char** argv) {
  using namespace devbridge::bench;
  // A write to a connection an ingest closed must fail, not kill the bench and orphan its children.
  std::signal(SIGPIPE, SIG_IGN);
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode == "bare-subscriber" && argc == 5) {
    return BareSubscriber(argv[2], argv[3], std::strtoull(argv[4], nullptr, 10));
  }
  const Config c = ServiceEnvFromEnvironment(DEVBRIDGE_SOURCE_DIR);
  if (mode == "all" || mode == "throughput") Throughput(c, argc > 2 ? std::atof(argv[2]) : 10, 100);
  if (mode == "all" || mode == "dispatch") DispatchBench(c, 50);
  if (mode == "all" || mode == "stream") StreamBench(c, 200000);
  return 0;
}
