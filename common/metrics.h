// Prometheus metrics: counters, gauges and histograms registered once at start-up and
// updated lock-free from any thread; Render() writes the text exposition format.
#ifndef DEVBRIDGE_COMMON_METRICS_H_
#define DEVBRIDGE_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace devbridge::common {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t v) { value_.fetch_add(v, std::memory_order_relaxed); }
  int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Cumulative buckets with fixed upper bounds; Observe() is a few relaxed atomic adds.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  double Sum() const;
  // Estimated quantile q in [0, 1] by linear interpolation inside the bucket.
  double Quantile(double q) const;
  const std::vector<double>& bounds() const { return bounds_; }
  uint64_t BucketCount(size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 (the last is +Inf)
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum in millionths, for lock-free adds
};

// Bucket bounds for latencies in milliseconds, 0.1 ms to 10 s.
std::vector<double> LatencyBucketsMs();
// Bucket bounds for batch sizes, 1 to 10000.
std::vector<double> SizeBuckets();

class MetricsRegistry {
 public:
  // Each call registers one series (a name and labels asked for again give the series
  // registered first, so several objects may count into one); the returned reference lives as
  // long as the registry.
  Counter& AddCounter(const std::string& name, const std::string& help, Labels labels = {});
  Gauge& AddGauge(const std::string& name, const std::string& help, Labels labels = {});
  // A gauge read at render time; `read` must be safe to call from any thread.
  void AddGaugeFn(const std::string& name, const std::string& help, Labels labels,
                  std::function<double()> read);
  Histogram& AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> bounds, Labels labels = {});

  std::string Render() const;

 private:
  struct Series {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::function<double()> gauge_fn;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string help;
    std::string type;
    std::vector<std::unique_ptr<Series>> series;
  };
  Series& Add(const std::string& name, const std::string& help, const char* type, Labels labels);

  mutable common::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_METRICS_H_
