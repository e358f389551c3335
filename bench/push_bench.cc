// Push fan-out benchmark (issue 4): ~100-byte messages to 1,000 WebSocket clients held by
// separate client processes; deliveries/s and send→receive latency. In the same run a
// Node.js `ws` broadcast server (bench/peer) does the same work, and the ratio is printed.
//
//   push_bench fanout [clients=1000] [rate=300 msg/s] [seconds=10]
//   push_bench clients PORT PATH N OUT_FILE     (a client process; used by fanout)
//
// Run through scripts/bench, which starts the broker and the database.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <iterator>
#include <sstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <asio.hpp>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/viewers.h"

namespace devbridge::bench {
namespace {

// ---- client process: N connections, records the latency of every message ----
int64_t SentOfBenchMessage(const std::string& p) {
  const size_t at = p.find("\"t\":");
  if (at == std::string::npos) return -1;  // e.g. push's "connected" frame
  return std::strtoll(p.c_str() + at + 4, nullptr, 10);
}

int Clients(int port, const std::string& path, int n, const std::string& out_file, const std::string& source_ip) {
  std::vector<std::string> urls;
  for (int i = 0; i < n; ++i) urls.push_back(absl::StrCat("ws://127.0.0.1:", port, path, i));
  return RunWsViewers(urls, source_ip, SentOfBenchMessage, out_file);
}

struct Result {
  uint64_t deliveries = 0;
  double seconds = 0;
  double p50 = 0, p99 = 0;
  int sent = 0;
};

// Starts `procs` client processes holding `clients` connections to port/path, sends `rate`
// messages/s for `seconds` with `send`, and collects what the clients received.
Result Run(const std::string& self, const std::string& dir, int port, const std::string& path, int clients, int procs,
           double rate, double seconds, const std::function<void(const std::string&)>& send) {
  std::vector<FILE*> pipes;
  std::vector<std::string> outs;
  const int per = clients / procs;
  for (int p = 0; p < procs; ++p) {
    outs.push_back(absl::StrCat(dir, "/lat-", port, "-", p, ".bin"));
    const std::string cmd =
        absl::StrCat("exec ", self, " clients ", port, " '", path, p, "-' ", per, " ", outs.back());
    pipes.push_back(popen(cmd.c_str(), "r"));
  }
  for (FILE* f : pipes) {
    char line[64] = {0};
    if (fgets(line, sizeof line, f) == nullptr) std::fprintf(stderr, "a client process failed\n");
  }
  const std::string pad(40, 'x');
  // Open loop: a pool of senders keeps the offered rate even when one send is slow.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> queue;
  bool done = false;
  std::vector<std::thread> senders;
  for (int t = 0; t < 16; ++t) {
    senders.emplace_back([&] {
      for (;;) {
        std::string msg;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return done || !queue.empty(); });
          if (queue.empty()) return;
          msg = std::move(queue.front());
          queue.pop_front();
        }
        send(msg);
      }
    });
  }
  const int64_t start_us = NowMicros();
  const auto t0 = std::chrono::steady_clock::now();
  Result r;
  for (int i = 0;; ++i) {
    const auto due = t0 + std::chrono::microseconds(static_cast<int64_t>(1e6 * i / rate));
    if (std::chrono::duration<double>(due - t0).count() >= seconds) break;
    std::this_thread::sleep_until(due);
    {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(absl::StrCat("{\"t\":", NowMicros(), ",\"i\":", i, ",\"pad\":\"", pad, "\"}"));
    }
    cv.notify_one();
    ++r.sent;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  for (auto& t : senders) t.join();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // let the last ones arrive
  // Stop the client processes (SIGTERM) and read what they recorded.
  std::system(absl::StrCat("pkill -TERM -f '", self, " clients ", port, " '").c_str());
  for (FILE* f : pipes) pclose(f);
  std::vector<double> all;
  int64_t last_us = start_us;
  for (const auto& out : outs) {
    std::ifstream in(out, std::ios::binary);
    int64_t first = 0, last = 0;
    in.read(reinterpret_cast<char*>(&first), sizeof first);
    in.read(reinterpret_cast<char*>(&last), sizeof last);
    last_us = std::max(last_us, last);
    float v;
    while (in.read(reinterpret_cast<char*>(&v), sizeof v)) all.push_back(v);
  }
  r.deliveries = all.size();
  r.seconds = static_cast<double>(last_us - start_us) / 1e6;  // first send to last delivery
  r.p50 = Percentile(all, 0.5);
  r.p99 = Percentile(all, 0.99);
  return r;
}

// ingest (no database: these benchmarks are about push) and one push replica, as binaries.
struct Devbridge {
  std::unique_ptr<Child> ingest;
  std::unique_ptr<Child> push;
  int push_port = 0;

  void Stop() {
    push->Stop();
    ingest->Stop();
  }
};

std::unique_ptr<Devbridge> StartDevbridge(const std::string& name, const std::string& push_host) {
  const std::string bin = SelfDir() + "/..";
  const std::string dir = Env("DEVBRIDGE_TEST_DIR");
  const int ingest_grpc = FreePort(), ingest_http = FreePort(), push_grpc = FreePort();
  auto d = std::make_unique<Devbridge>();
  d->push_port = FreePort();
  d->ingest = std::make_unique<Child>(
      std::vector<std::string>{bin + "/services/ingest/devbridge-ingest", "--mqtt_url=" + Env("DEVBRIDGE_TEST_MQTT_URL"),
                               "--pg_dsn=none", absl::StrCat("--grpc_listen=127.0.0.1:", ingest_grpc),
                               absl::StrCat("--http_listen=127.0.0.1:", ingest_http), "--mqtt_client_id=bench-" + name,
                               std::string("--register_map=") + DEVBRIDGE_SOURCE_DIR + "/config/registers.json",
                               "--log_level=warn"},
      dir + "/" + name + "-ingest.log");
  d->push = std::make_unique<Child>(
      std::vector<std::string>{bin + "/services/push/devbridge-push", absl::StrCat("--ingest_addr=127.0.0.1:", ingest_grpc),
                               absl::StrCat("--listen=", push_host, ":", d->push_port),
                               absl::StrCat("--grpc_listen=127.0.0.1:", push_grpc), "--log_level=warn"},
      dir + "/" + name + "-push.log");
  if (!WaitHealthy(d->push_port, 30)) {
    std::fprintf(stderr, "push did not become healthy; see %s/%s-push.log\n", dir.c_str(), name.c_str());
    return nullptr;
  }
  return d;
}

void Fanout(int clients, double rate, double seconds) {
  const std::string self = SelfDir() + "/push_bench";
  const std::string dir = Env("DEVBRIDGE_TEST_DIR");
  const std::string src = DEVBRIDGE_SOURCE_DIR;
  const int procs = 4;

  std::unique_ptr<Devbridge> devbridge = StartDevbridge("fanout", "127.0.0.1");
  if (!devbridge) return;
  const int push_port = devbridge->push_port;
  auto post = [](int port, const std::string& path, const std::string& body, const std::string& extra) {
    asio::io_context io;
    asio::ip::tcp::socket s(io);
    s.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
    const std::string req = absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: b\r\nConnection: close\r\n", extra,
                                         "Content-Length: ", body.size(), "\r\n\r\n", body);
    asio::write(s, asio::buffer(req));
    std::string out;
    std::error_code ec;
    asio::read(s, asio::dynamic_buffer(out), ec);
  };
  auto send_push = [&](const std::string& data) {
    post(push_port, "/api/send_to_system", absl::StrCat("{\"data\":", data, "}"), "SystemId: fleet\r\n");
  };
  Result ours = Run(self, dir, push_port, "/ws?systemId=fleet&clientId=c", clients, procs, rate, seconds, send_push);
  Result ours_max = Run(self, dir, push_port, "/ws?systemId=fleet&clientId=c", clients, procs, rate * 5, seconds, send_push);
  // Latency where it matters: offered half of the ceiling just measured (issue "Real time":
  // p99 <= 50 ms there).
  const double half = std::max(1.0, (ours_max.deliveries / ours_max.seconds) / clients / 2);
  Result ours_half = Run(self, dir, push_port, "/ws?systemId=fleet&clientId=c", clients, procs, half, seconds, send_push);
  devbridge->Stop();
  auto print_half = [&] {
    std::printf("devbridge push at half its ceiling, %.0f msg/s x %d clients: %7.0f deliveries/s, send->receive p50 %.1f ms,"
                " p99 %.1f ms (target: p99 <= 50 ms)\n",
                half, clients, ours_half.deliveries / ours_half.seconds, ours_half.p50, ours_half.p99);
  };
  if (getenv("PUSH_BENCH_OURS_ONLY") != nullptr) {  // quick iterations on push alone
    std::printf("devbridge push %5.0f msg/s: %7.0f deliveries/s, p50 %.1f ms, p99 %.1f ms; %5.0f msg/s: %7.0f deliveries/s\n",
                rate, ours.deliveries / ours.seconds, ours.p50, ours.p99, rate * 5, ours_max.deliveries / ours_max.seconds);
    print_half();
    return;
  }

  // The peer: Node.js ws broadcasting the same payloads.
  const int peer_port = FreePort();
  Child peer({"/usr/bin/node", src + "/bench/peer/ws_broadcast.js", std::to_string(peer_port)}, dir + "/fanout-peer.log");
  if (!WaitHealthy(peer_port, 30)) {
    std::fprintf(stderr, "the Node ws peer did not start (npm install in bench/peer?)\n");
    return;
  }
  auto send_peer = [&](const std::string& data) { post(peer_port, "/send", data, ""); };
  Result theirs = Run(self, dir, peer_port, "/ws?c", clients, procs, rate, seconds, send_peer);
  Result theirs_max = Run(self, dir, peer_port, "/ws?c", clients, procs, rate * 5, seconds, send_peer);
  peer.Stop();

  auto print = [&](const char* who, double offered, const Result& r) {
    std::printf("%-20s %5.0f msg/s x %d clients: %9llu of %9llu delivered, %7.0f deliveries/s,"
                " send->receive p50 %6.1f ms, p99 %7.1f ms\n",
                who, offered, clients, static_cast<unsigned long long>(r.deliveries),
                static_cast<unsigned long long>(static_cast<uint64_t>(r.sent) * clients), r.deliveries / r.seconds,
                r.p50, r.p99);
  };
  std::printf("fan-out of ~100-byte messages (send_to_system / broadcast) to %d WebSocket clients in %d processes:\n",
              clients, procs);
  print("devbridge push", rate, ours);
  print("Node.js ws (peer)", rate, theirs);
  print("devbridge push", rate * 5, ours_max);
  print("Node.js ws (peer)", rate * 5, theirs_max);
  print_half();
  // At the lower rate the ratio is capped by what is offered; at 5x both run flat out, so that
  // one compares the two servers' ceilings.
  std::printf("ours/peer = %.2f at %.0f msg/s offered, %.2f at %.0f msg/s (flat out) (target: ours/peer >= 5)\n",
              (ours.deliveries / ours.seconds) / std::max(1.0, theirs.deliveries / theirs.seconds), rate,
              (ours_max.deliveries / ours_max.seconds) / std::max(1.0, theirs_max.deliveries / theirs_max.seconds),
              rate * 5);
}


// ---- idle connections: memory per connection and CPU at idle, ours and the Node peer ----

struct IdleResult {
  int connected = 0;
  double kib_per_conn = 0;
  double idle_cpu_percent = 0;
};

IdleResult Idle(const std::string& self, const std::string& dir, pid_t server, int port, const std::string& path,
                int n, double idle_seconds, int first_ip) {
  const int procs = 4;
  const long before = RssKiB(server);
  std::vector<FILE*> pipes;
  for (int p = 0; p < procs; ++p) {
    const std::string cmd = absl::StrCat("exec ", self, " clients ", port, " '", path, p, "-' ", n / procs, " ", dir,
                                         "/idle-", port, "-", p, ".bin 127.0.0.", first_ip + p);
    pipes.push_back(popen(cmd.c_str(), "r"));
  }
  IdleResult r;
  for (FILE* f : pipes) {
    int ready = 0;
    if (std::fscanf(f, "ready %d", &ready) == 1) r.connected += ready;
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));  // settle
  const long after = RssKiB(server);
  const double cpu0 = CpuSeconds(server);
  std::this_thread::sleep_for(std::chrono::duration<double>(idle_seconds));
  const double cpu1 = CpuSeconds(server);
  r.kib_per_conn = r.connected > 0 ? static_cast<double>(after - before) / r.connected : 0;
  r.idle_cpu_percent = 100.0 * (cpu1 - cpu0) / idle_seconds;
  std::system(absl::StrCat("pkill -TERM -f '", self, " clients ", port, " '").c_str());
  for (FILE* f : pipes) pclose(f);
  return r;
}

void Connections(int n, double idle_seconds) {
  const std::string self = SelfDir() + "/push_bench";
  const std::string dir = Env("DEVBRIDGE_TEST_DIR");
  const std::string src = DEVBRIDGE_SOURCE_DIR;
  std::unique_ptr<Devbridge> devbridge = StartDevbridge("idle", "0.0.0.0");
  if (!devbridge) return;
  IdleResult ours = Idle(self, dir, devbridge->push->pid(), devbridge->push_port, "/ws?systemId=fleet&clientId=i", n,
                         idle_seconds, 2);
  devbridge->Stop();
  const int peer_port = FreePort();
  Child peer({"/usr/bin/node", src + "/bench/peer/ws_broadcast.js", std::to_string(peer_port)}, dir + "/idle-peer.log");
  if (!WaitHealthy(peer_port, 30)) return;
  IdleResult theirs = Idle(self, dir, peer.pid(), peer_port, "/ws?i", n, idle_seconds, 10);
  peer.Stop();
  std::printf("idle connections (pings every 25 s), %d asked:\n", n);
  std::printf("  devbridge push:    %d connected, %.1f KiB RSS per connection, %.2f%% CPU at idle over %.0f s\n",
              ours.connected, ours.kib_per_conn, ours.idle_cpu_percent, idle_seconds);
  std::printf("  Node.js ws (peer): %d connected, %.1f KiB RSS per connection, %.2f%% CPU at idle over %.0f s\n",
              theirs.connected, theirs.kib_per_conn, theirs.idle_cpu_percent, idle_seconds);
  std::printf("  memory per connection peer/ours = %.2f (target: ours <= 4 KiB)\n",
              ours.kib_per_conn > 0 ? theirs.kib_per_conn / ours.kib_per_conn : 0);
}

}  // namespace
}  // namespace devbridge::bench

int main(int argc, char** argv) {
  using namespace devbridge::bench;
  const std::string mode = argc > 1 ? argv[1] : "fanout";
  if (mode == "clients" && (argc == 6 || argc == 7)) {
    return Clients(std::atoi(argv[2]), argv[3], std::atoi(argv[4]), argv[5], argc == 7 ? argv[6] : "");
  }
  if (mode == "connections") {
    Connections(argc > 2 ? std::atoi(argv[2]) : 18000, argc > 3 ? std::atof(argv[3]) : 30);
    return 0;
  }
  if (mode == "fanout") {
    Fanout(argc > 2 ? std::atoi(argv[2]) : 1000, argc > 3 ? std::atof(argv[3]) : 300, argc > 4 ? std::atof(argv[4]) : 10);
    return 0;
  }
  std::fprintf(stderr, "usage: push_bench fanout [clients] [rate] [seconds] | connections [n] [idle_seconds]\n");
  return 2;
}
