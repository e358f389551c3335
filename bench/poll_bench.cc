// Polling benchmark (CONTRACT §10.4, issue "Polling plans"), against the real binaries, a
// real mosquitto and PostgreSQL:
//
//   DEVICES slave meters (devbridge-sim --mode=slave) polled on a plan: a 12-register block
//   every 5 s for all of them, and a 2-register block every 1 s for FAST of them. Measured
//   over a window after one full cycle: poll start delay (from a poll's slot in the plan to its
//   request going out; ingest's devbridge_ingest_poll_start_delay_ms) p50/p99, polls sent,
//   replied, skipped and unanswered, and ingest's CPU.
//
//   The same fleet pushing the same data by itself (push mode, data every 5 s and 1 s, no
//   plan) in the same run: the difference in ingest's CPU is what polling itself costs
//   (scheduling and publishing requests), since decoding, storing and emitting the replies is
//   the same work either way.
//
// Usage: poll_bench [DEVICES [FAST [SECONDS [polled|pushing|both]]]] (defaults 10000 1000 30 both).
// Prints figures only.
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"

namespace devbridge::bench {
namespace {

struct Config : ServiceEnv {
  int devices = 10000;
  int fast = 1000;
  double seconds = 30;
};

// The shipped meter profile with a plan per device group: pbs-* slow, pbf-* slow and fast.
std::string WriteMap(const Config& c, bool with_plan) {
  std::ifstream in(c.source_dir + "/config/registers.json");
  std::string shipped((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Keep "profiles" from the shipped map; replace "devices".
  const std::string profiles = shipped.substr(0, shipped.find("\"devices\""));
  const std::string slow = R"({"function": 3, "address": 0, "count": 12, "every": "5s"})";
  const std::string fast = R"({"function": 3, "address": 8, "count": 2, "every": "1s"})";
  const std::string devices =
      with_plan ? absl::StrCat(R"("devices": {"pbf-*": {"profile": "meter", "poll": [)", slow, ",", fast,
                               R"(]}, "pbs-*": {"profile": "meter", "poll": [)", slow, "]}}}")
                : R"("devices": {"*": {"profile": "meter", "poll": []}}})";
  const std::string path = absl::StrCat(c.log_dir, "/poll-bench-", with_plan ? "plan" : "none", ".json");
  std::ofstream(path) << profiles << devices;
  return path;
}

struct Figures {
  double cpu_percent = 0;        // of one core, over the window
  double polls_per_s = 0;        // requests sent
  double replies_per_s = 0;      // replies (or unsolicited frames) taken
  double skipped = 0, no_reply = 0;
  double delay_p50 = -1, delay_p99 = -1;  // ms, bucket upper bounds
  double rss_mib = 0;
};

Figures Run(const Config& c, bool polled, const std::string& label, const std::vector<std::string>& extra = {}) {
  static int runs = 0;
  const std::string prefix = absl::StrCat("pb", polled ? "p" : "d", ++runs, "-", getpid());
  const std::string dsn = FreshDatabase(c, absl::StrCat("bench_poll_", runs, "_", getpid()));
  const int http_port = FreePort();
  std::vector<std::string> argv = {c.bin_dir + "/services/ingest/devbridge-ingest", "--mqtt_url=" + c.mqtt_url,
                                   "--mqtt_client_id=" + prefix, "--topic_prefix=" + prefix, "--pg_dsn=" + dsn,
                                   absl::StrCat("--grpc_listen=127.0.0.1:", FreePort()),
                                   absl::StrCat("--http_listen=127.0.0.1:", http_port),
                                   "--register_map=" + WriteMap(c, polled), "--heartbeat_timeout=120s",
                                   "--spool_dir=" + c.log_dir + "/" + prefix + "-spool", "--log_level=warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Child ingest(argv, c.log_dir + "/ingest-" + prefix + ".log");
  if (!WaitHealthy(http_port, 30)) {
    std::fprintf(stderr, "ingest did not become healthy; see %s/ingest-%s.log\n", c.log_dir.c_str(), prefix.c_str());
    std::exit(1);
  }
  auto sim = [&](const std::string& id_prefix, int devices, const std::string& data_interval) {
    std::vector<std::string> argv = {c.bin_dir + "/sim/devbridge-sim", "--mqtt_url=" + c.mqtt_url,
                                     "--topic_prefix=" + prefix, absl::StrCat("--devices=", devices),
                                     "--id_prefix=" + id_prefix, "--heartbeat_interval=30s", "--stats_interval=0",
                                     "--register_map=" + WriteMap(c, polled), "--log_level=warn"};
    if (polled) {
      argv.push_back("--mode=slave");
    } else {
      argv.push_back("--data_interval=" + data_interval);
    }
    return std::make_unique<Child>(argv, c.log_dir + "/sim-" + prefix + "-" + id_prefix + ".log");
  };
  auto slow = sim("pbs-", c.devices - c.fast, "5s");
  auto fast = sim("pbf-", c.fast, "1s");
  // Every device online (first heartbeats), then one full 5 s cycle before measuring.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (MetricValue(HttpGet(http_port, "/metrics"), "devbridge_ingest_devices_online") < c.devices &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::seconds(7));
  const std::string m0 = HttpGet(http_port, "/metrics");
  const double cpu0 = CpuSeconds(ingest.pid());
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(c.seconds));
  const std::string m1 = HttpGet(http_port, "/metrics");
  const double cpu1 = CpuSeconds(ingest.pid());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto delta = [&](const std::string& series) { return MetricValue(m1, series) - MetricValue(m0, series); };
  Figures f;
  f.cpu_percent = 100 * (cpu1 - cpu0) / secs;
  f.polls_per_s = delta(R"(devbridge_ingest_polls_total{outcome="sent"})") / secs;
  f.replies_per_s = delta(R"(devbridge_ingest_messages_total{kind="data"})") / secs;
  f.skipped = delta(R"(devbridge_ingest_polls_total{outcome="skipped"})");
  f.no_reply = delta(R"(devbridge_ingest_polls_total{outcome="no_reply"})");
  f.delay_p50 = WindowQuantile(m0, m1, "devbridge_ingest_poll_start_delay_ms", 0.5);
  f.delay_p99 = WindowQuantile(m0, m1, "devbridge_ingest_poll_start_delay_ms", 0.99);
  f.rss_mib = RssKiB(ingest.pid()) / 1024.0;
  std::printf("  %-14s %d devices: ingest CPU %.1f%% of a core, RSS %.0f MiB; requests sent %.0f/s, data frames taken %.0f/s",
              label.c_str(), c.devices, f.cpu_percent, f.rss_mib, f.polls_per_s, f.replies_per_s);
  if (polled) {
    std::printf("; skipped %.0f, unanswered %.0f; start delay p50 <= %g ms, p99 <= %g ms", f.skipped, f.no_reply,
                f.delay_p50, f.delay_p99);
  }
  std::printf("\n");
  fast.reset();
  slow.reset();
  ingest.Stop();
  return f;
}

}  // namespace
}  // namespace devbridge::bench

int main(int argc, char** argv) {
  using namespace devbridge::bench;
  Config c;
  static_cast<ServiceEnv&>(c) = ServiceEnvFromEnvironment(DEVBRIDGE_SOURCE_DIR);
  if (argc > 1) c.devices = std::atoi(argv[1]);
  if (argc > 2) c.fast = std::atoi(argv[2]);
  if (argc > 3) c.seconds = std::atof(argv[3]);
  const std::string which = argc > 4 ? argv[4] : "both";
  std::printf("poll_bench: %d devices, a 12-register block every 5 s, %d of them also 2 registers every 1 s; "
              "%.0f s window\n", c.devices, c.fast, c.seconds);
  if (which == "polled" || which == "pushing") {
    Run(c, which == "polled", which);
    return 0;
  }
  const Figures polled = Run(c, true, "polled");
  const Figures polled_qos1 = Run(c, true, "polled, QoS 1", {"--poll_qos=1"});
  const Figures pushing = Run(c, false, "pushing");
  auto report = [&](const char* label, const Figures& f) {
    const double extra = f.cpu_percent - pushing.cpu_percent;
    std::printf("  polling itself, %s: %.1f%% of a core (target <= 10%%), %.1f us per request; start delay p99 <= %g ms "
                "(target <= 50 ms)\n",
                label, extra, f.polls_per_s > 0 ? extra * 1e4 / f.polls_per_s : 0.0, f.delay_p99);
  };
  report("poll_qos=0 (default)", polled);
  report("poll_qos=1", polled_qos1);
  return 0;
}
