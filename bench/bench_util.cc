#include "bench/bench_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "modbus/frame.h"
#include "modbus/payload.h"

extern char** environ;

namespace devbridge::bench {

Child::Child(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) {
    std::fprintf(stderr, "cannot start %s\n", args[0]);
    std::exit(1);
  }
  posix_spawn_file_actions_destroy(&actions);
}

Child::~Child() { Stop(); }

int Child::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

ServiceEnv ServiceEnvFromEnvironment(const std::string& source_dir) {
  ServiceEnv env;
  env.mqtt_url = Env("DEVBRIDGE_TEST_MQTT_URL");
  env.pg_dsn = Env("DEVBRIDGE_TEST_PG_DSN");
  env.source_dir = source_dir;
  env.bin_dir = SelfDir() + "/..";
  env.log_dir = Env("DEVBRIDGE_TEST_DIR");
  return env;
}

std::string FreshDatabase(const ServiceEnv& env, const std::string& name) {
  pqxx::connection admin(env.pg_dsn);
  pqxx::nontransaction tx(admin);
  tx.exec0("DROP DATABASE IF EXISTS " + name);
  tx.exec0("CREATE DATABASE " + name);
  return env.pg_dsn.substr(0, env.pg_dsn.rfind('/') + 1) + name;
}

int FreePort() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

std::string HttpGet(int port, const std::string& path, int* status) {
  try {
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
    asio::write(socket, asio::buffer("GET " + path + " HTTP/1.1\r\nHost: b\r\n\r\n"));
    std::string out;
    std::error_code ec;
    asio::read(socket, asio::dynamic_buffer(out), ec);
    if (status != nullptr) *status = out.size() > 12 ? std::atoi(out.substr(9, 3).c_str()) : 0;
    const size_t body = out.find("\r\n\r\n");
    return body == std::string::npos ? "" : out.substr(body + 4);
  } catch (const std::exception&) {
    if (status != nullptr) *status = 0;
    return "";
  }
}

bool WaitHealthy(int port, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    HttpGet(port, "/healthz", &status);
    if (status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

double MetricValue(const std::string& metrics, const std::string& series) {
  const std::string key = series + " ";
  size_t at = metrics.find("\n" + key);
  if (at == std::string::npos) return -1;
  at += 1 + key.size();
  return std::atof(metrics.c_str() + at);
}

std::vector<std::pair<double, double>> HistogramBuckets(const std::string& metrics, const std::string& name) {
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
  const std::string key = name + "_bucket{le=\"";
  for (size_t at = metrics.find(key); at != std::string::npos; at = metrics.find(key, at + 1)) {
    const size_t le_at = at + key.size();
    const size_t close = metrics.find("\"}", le_at);
    if (close == std::string::npos) break;
    const std::string le = metrics.substr(le_at, close - le_at);
    buckets.emplace_back(le == "+Inf" ? 1e300 : std::atof(le.c_str()), std::atof(metrics.c_str() + close + 3));
  }
  return buckets;
}

double BucketsQuantile(const std::vector<std::pair<double, double>>& buckets, double q) {
  if (buckets.empty() || buckets.back().second <= 0) return -1;
  const double target = q * buckets.back().second;
  for (const auto& [le, count] : buckets) {
    if (count >= target) return le;
  }
  return buckets.back().first;
}

double WindowQuantile(const std::string& before, const std::string& after, const std::string& name, double q) {
  std::vector<std::pair<double, double>> window = HistogramBuckets(after, name);
  const std::vector<std::pair<double, double>> earlier = HistogramBuckets(before, name);
  for (size_t i = 0; i < window.size() && i < earlier.size(); ++i) window[i].second -= earlier[i].second;
  return BucketsQuantile(window, q);
}

double HistogramQuantile(const std::string& metrics, const std::string& name, double q) {
  return BucketsQuantile(HistogramBuckets(metrics, name), q);
}

long RssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::atof(field.c_str());
    if (i == 15) stime = std::atof(field.c_str());
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double CpuSecondsOf(const std::string& comm) {
  double total = 0;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return 0;
  while (dirent* e = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atol(e->d_name));
    if (pid <= 0) continue;
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    if (std::getline(in, name) && name == comm) total += CpuSeconds(pid);
  }
  closedir(proc);
  return total;
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t i = std::min(values.size() - 1, static_cast<size_t>(q * static_cast<double>(values.size())));
  return values[i];
}

std::string BenchFrameHex(uint32_t seq, int64_t sent_us) {
  const uint64_t t = static_cast<uint64_t>(sent_us);
  std::vector<uint16_t> regs = {static_cast<uint16_t>(seq >> 16), static_cast<uint16_t>(seq),
                                static_cast<uint16_t>(t >> 48),   static_cast<uint16_t>(t >> 32),
                                static_cast<uint16_t>(t >> 16),   static_cast<uint16_t>(t),
                                215,                              455,
                                0x4366,                           0x8000};
  return modbus::ToHex(modbus::BuildReadReply(1, modbus::kReadHoldingRegisters, regs));
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    std::fprintf(stderr, "%s is not set: run benchmarks through scripts/bench\n", name);
    std::exit(2);
  }
  return v;
}

std::string SelfDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string path(buf, n > 0 ? static_cast<size_t>(n) : 0);
  return path.substr(0, path.rfind('/'));
}

}  // namespace devbridge::bench
