// Device → viewer latency: the processes bench/e2e/e2e.mjs runs around each relay.
//
//   e2e_bench load URL DEVICES RATE SECONDS   bench frames (bench/registers_bench.json: a
//                                             sequence number and the send time) to
//                                             devices/bench-NNNN/data, round robin, RATE/s, QoS 1
//   e2e_bench view-ws OUT URL...              one WebSocket viewer per URL
//   e2e_bench view-mqtt OUT BROKER N          N MQTT subscribers (QoS 0) of devices/+/data:
//                                             viewers of the broker itself (the "mosquitto" row)
//
// A viewer takes each frame's latency from the send time in it and, on SIGTERM, writes them
// all to OUT (bench/viewers.h). The load prints one line: frames sent, seconds, its own CPU.
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/raw_publisher.h"
#include "bench/viewers.h"
#include "modbus/payload.h"

namespace devbridge::bench {
namespace {

double OwnCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int Load(const std::string& url, int devices, double rate, double seconds) {
  RawPublisher pub(url, absl::StrCat("e2e-load-", getpid()));
  std::vector<std::string> topics;
  for (int i = 1; i <= devices; ++i) topics.push_back(absl::StrCat("devices/bench-", absl::Dec(i, absl::kZeroPad4), "/data"));
  const double cpu0 = OwnCpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t sent = 0;
  // Open loop on a 1 ms tick: each tick sends what is due by then, so a slow moment is
  // caught up at once rather than lowering the offered rate.
  for (;;) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (elapsed >= seconds) break;
    const auto due = static_cast<uint64_t>(elapsed * rate);
    for (; sent < due; ++sent) {
      pub.Publish(topics[sent % topics.size()], BenchFrameHex(static_cast<uint32_t>(sent), NowMicros()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  pub.Drain();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("load: sent %llu frames in %.2f s (%.0f/s), cpu %.3f s\n", static_cast<unsigned long long>(sent), took,
              static_cast<double>(sent) / took, OwnCpuSeconds() - cpu0);
  return 0;
}

// In a relay's JSON frame: values.sent_us.value (devbridge's device.data, and the peers'
// frames, which copy its shape).
int64_t SentOfJson(const std::string& p) {
  const size_t key = p.find("\"sent_us\"");
  if (key == std::string::npos) return -1;
  const size_t value = p.find("\"value\":", key);
  if (value == std::string::npos) return -1;
  return std::strtoll(p.c_str() + value + 8, nullptr, 10);
}

// In the Modbus reply itself: registers 2..5 (bytes 7..14 after unit, function, count).
int64_t SentOfFrame(const char* payload, size_t len) {
  absl::StatusOr<modbus::FrameBytes> frame = modbus::ReadPayload(absl::string_view(payload, len));
  if (!frame.ok() || frame->size < 15) return -1;
  uint64_t t = 0;
  for (size_t i = 7; i < 15; ++i) t = (t << 8) | frame->bytes[i];
  return static_cast<int64_t>(t);
}

// Viewers of the broker itself: raw QoS 0 subscribers (bench/raw_publisher.h), each on its
// own thread; a full client library would cost more than the broker it measures.
int ViewMqtt(const std::string& out, const std::string& broker, int n) {
  std::mutex mu;
  Latencies received;
  received.ms.reserve(1 << 22);
  std::vector<std::unique_ptr<RawSubscriber>> viewers;
  for (int i = 0; i < n; ++i) {
    viewers.push_back(std::make_unique<RawSubscriber>(
        broker, absl::StrCat("e2e-view-", getpid(), "-", i), "devices/+/data", [&](const char* payload, size_t size) {
          const int64_t sent = SentOfFrame(payload, size);
          const int64_t now = NowMicros();
          if (sent < 0) return;
          std::lock_guard<std::mutex> lock(mu);
          received.Add(sent, now);
        }));
  }
  std::printf("ready %d\n", n);
  std::fflush(stdout);
  WaitForTermination();
  viewers.clear();
  WriteLatencies(received, out);
  return 0;
}

int Usage() {
  std::fprintf(stderr,
               "usage: e2e_bench load URL DEVICES RATE SECONDS\n"
               "       e2e_bench view-ws OUT URL...\n"
               "       e2e_bench view-mqtt OUT BROKER N\n");
  return 2;
}

}  // namespace
}  // namespace devbridge::bench

int main(int argc, char** argv) {
  using namespace devbridge::bench;
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  if (mode == "load" && argc == 6) return Load(argv[2], std::atoi(argv[3]), std::atof(argv[4]), std::atof(argv[5]));
  if (mode == "view-ws" && argc >= 4) {
    return RunWsViewers(std::vector<std::string>(argv + 3, argv + argc), "", SentOfJson, argv[2]);
  }
  if (mode == "view-mqtt" && argc == 5) return ViewMqtt(argv[2], argv[3], std::atoi(argv[4]));
  return Usage();
}
