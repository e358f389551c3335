// Helpers for the service benchmarks: child processes, free ports, HTTP polling, and
// percentiles. Benchmarks print figures; they never pass or fail on timings.
#ifndef DEVBRIDGE_BENCH_BENCH_UTIL_H_
#define DEVBRIDGE_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace devbridge::bench {

// A child process started with argv, stopped with SIGTERM (then SIGKILL) on destruction.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log_path);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Sends SIGTERM and waits; returns the exit status (or -1).
  int Stop();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

// Where a service benchmark finds the broker and the database (from tests/harness/with-services),
// the sources, the binaries (next to the benchmark's own) and a folder for logs.
struct ServiceEnv {
  std::string mqtt_url;
  std::string pg_dsn;
  std::string source_dir;
  std::string bin_dir;
  std::string log_dir;
};
ServiceEnv ServiceEnvFromEnvironment(const std::string& source_dir);
// Drops and creates database `name` on the server `env.pg_dsn` points at; returns its DSN.
std::string FreshDatabase(const ServiceEnv& env, const std::string& name);

int FreePort();
// GET http://127.0.0.1:port/path; returns the body ("" on error) and sets *status.
std::string HttpGet(int port, const std::string& path, int* status = nullptr);
// Polls until GET /healthz answers 200 or `seconds` pass.
bool WaitHealthy(int port, double seconds);
// Value of a Prometheus sample line "name{labels} value" in `metrics`, or -1.
double MetricValue(const std::string& metrics, const std::string& series);
// The upper bound of the bucket holding quantile q of Prometheus histogram `name` (its
// name_bucket{le="..."} lines), or -1 if it has no samples.
double HistogramQuantile(const std::string& metrics, const std::string& name, double q);
// The (le, cumulative count) buckets of histogram `name`, and quantile q of such buckets (two
// scrapes' buckets subtracted give the quantile of what happened between them).
std::vector<std::pair<double, double>> HistogramBuckets(const std::string& metrics, const std::string& name);
double BucketsQuantile(const std::vector<std::pair<double, double>>& buckets, double q);
// Quantile q of what histogram `name` recorded between two scrapes of /metrics.
double WindowQuantile(const std::string& before, const std::string& after, const std::string& name, double q);
// q in [0,1] of `values` (sorts a copy).
double Percentile(std::vector<double> values, double q);
int64_t NowMicros();

// The Modbus reply a bench device publishes (bench/registers_bench.json), as hex text:
// sequence (uint32), send time (NowMicros, uint64) and a few realistic values.
std::string BenchFrameHex(uint32_t seq, int64_t sent_us);
// A process's resident memory (KiB) and CPU time used so far (user + system, seconds).
long RssKiB(pid_t pid);
double CpuSeconds(pid_t pid);
// CPU time used so far by every live process whose name (/proc/PID/comm) is `comm`, e.g.
// "postgres" (the postmaster and each backend) or "mosquitto".
double CpuSecondsOf(const std::string& comm);
// Required environment variable, or exit with a message.
std::string Env(const char* name);
std::string SelfDir();  // directory of the running executable

}  // namespace devbridge::bench

#endif  // DEVBRIDGE_BENCH_BENCH_UTIL_H_
