#include "common/metrics.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace devbridge::common {
namespace {

std::string FormatLabels(const Labels& labels, const std::string& extra = "") {
  if (labels.empty() && extra.empty()) return "";
  std::string out = "{";
  for (const auto& [k, v] : labels) {
    if (out.size() > 1) out += ",";
    absl::StrAppend(&out, k, "=\"",
                    absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}}), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.size() > 1 ? "," : "", extra);
  return out + "}";
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return absl::StrFormat("%.17g", v);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  if (value > 0) {
    sum_micros_.fetch_add(static_cast<uint64_t>(value * 1e6), std::memory_order_relaxed);
  }
}

double Histogram::Sum() const {
  return static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6;
}

double Histogram::Quantile(double q) const {
  const uint64_t total = Count();
  if (total == 0) return 0;
  const double rank = q * static_cast<double>(total);
  uint64_t seen = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    const uint64_t in_bucket = BucketCount(i);
    if (in_bucket > 0 && static_cast<double>(seen + in_bucket) >= rank) {
      const double lo = i == 0 ? 0 : bounds_[i - 1];
      const double hi = i < bounds_.size() ? bounds_[i] : lo;
      const double frac = (rank - static_cast<double>(seen)) / static_cast<double>(in_bucket);
      return lo + (hi - lo) * std::clamp(frac, 0.0, 1.0);
    }
    seen += in_bucket;
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

std::vector<double> LatencyBucketsMs() {
  return {0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
}

std::vector<double> SizeBuckets() { return {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000}; }

MetricsRegistry::Series& MetricsRegistry::Add(const std::string& name, const std::string& help,
                                              const char* type, Labels labels) {
  common::MutexLock lock(&mu_);
  Family& family = families_[name];
  family.help = help;
  family.type = type;
  // Asked again for the same series (several writers counting into one family): the same one.
  for (const std::unique_ptr<Series>& series : family.series) {
    if (series->labels == labels) return *series;
  }
  family.series.push_back(std::make_unique<Series>());
  family.series.back()->labels = std::move(labels);
  return *family.series.back();
}

Counter& MetricsRegistry::AddCounter(const std::string& name, const std::string& help,
                                     Labels labels) {
  Series& s = Add(name, help, "counter", std::move(labels));
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& MetricsRegistry::AddGauge(const std::string& name, const std::string& help, Labels labels) {
  Series& s = Add(name, help, "gauge", std::move(labels));
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

void MetricsRegistry::AddGaugeFn(const std::string& name, const std::string& help, Labels labels,
                                 std::function<double()> read) {
  Series& s = Add(name, help, "gauge", std::move(labels));
  s.gauge_fn = std::move(read);
}

Histogram& MetricsRegistry::AddHistogram(const std::string& name, const std::string& help,
                                         std::vector<double> bounds, Labels labels) {
  Series& s = Add(name, help, "histogram", std::move(labels));
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(std::move(bounds));
  return *s.histogram;
}

std::string MetricsRegistry::Render() const {
  common::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    absl::StrAppend(&out, "# HELP ", name, " ", family.help, "\n# TYPE ", name, " ", family.type,
                    "\n");
    for (const auto& s : family.series) {
      if (s->counter) {
        absl::StrAppend(&out, name, FormatLabels(s->labels), " ", s->counter->Value(), "\n");
      } else if (s->gauge) {
        absl::StrAppend(&out, name, FormatLabels(s->labels), " ", s->gauge->Value(), "\n");
      } else if (s->gauge_fn) {
        absl::StrAppend(&out, name, FormatLabels(s->labels), " ", Number(s->gauge_fn()), "\n");
      } else if (s->histogram) {
        const Histogram& h = *s->histogram;
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= h.bounds().size(); ++i) {
          cumulative += h.BucketCount(i);
          const std::string le =
              i < h.bounds().size() ? Number(h.bounds()[i]) : std::string("+Inf");
          absl::StrAppend(&out, name, "_bucket", FormatLabels(s->labels, "le=\"" + le + "\""), " ",
                          cumulative, "\n");
        }
        absl::StrAppend(&out, name, "_sum", FormatLabels(s->labels), " ", Number(h.Sum()), "\n");
        absl::StrAppend(&out, name, "_count", FormatLabels(s->labels), " ", h.Count(), "\n");
      }
    }
  }
  return out;
}

}  // namespace devbridge::common
