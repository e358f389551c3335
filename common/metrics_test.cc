#include "common/metrics.h"

#include "gtest/gtest.h"

namespace devbridge::common {
namespace {

TEST(Metrics, RendersCountersGaugesAndHistogramsInPrometheusFormat) {
  MetricsRegistry registry;
  Counter& crc = registry.AddCounter("frames_bad_total", "Bad frames.", {{"kind", "crc"}});
  Counter& hex = registry.AddCounter("frames_bad_total", "Bad frames.", {{"kind", "hex"}});
  Gauge& depth = registry.AddGauge("queue_depth", "Queued messages.");
  registry.AddGaugeFn("up", "Always one.", {}, [] { return 1.0; });
  Histogram& h = registry.AddHistogram("latency_ms", "Latency.", {1, 10});
  crc.Inc();
  crc.Inc(2);
  hex.Inc();
  depth.Set(7);
  h.Observe(0.5);
  h.Observe(5);
  h.Observe(50);
  const std::string text = registry.Render();
  EXPECT_NE(text.find("# TYPE frames_bad_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("frames_bad_total{kind=\"crc\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("frames_bad_total{kind=\"hex\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("queue_depth 7\n"), std::string::npos) << text;
  EXPECT_NE(text.find("up 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_ms_bucket{le=\"1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_ms_bucket{le=\"10\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_ms_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_ms_count 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_ms_sum 55.5\n"), std::string::npos) << text;
}

TEST(Metrics, TheSameSeriesAskedForAgainIsTheSameObject) {
  MetricsRegistry r;
  Counter& a = r.AddCounter("writes_total", "Writes.");
  Counter& b = r.AddCounter("writes_total", "Writes.");
  Counter& other = r.AddCounter("writes_total", "Writes.", {{"kind", "x"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &other);
  a.Inc(2);
  b.Inc(3);
  const std::string text = r.Render();
  EXPECT_NE(text.find("writes_total 5\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("writes_total 2\n"), std::string::npos) << "listed twice:\n" << text;
}

TEST(Histogram, QuantileInterpolatesInsideBuckets) {
  Histogram h({10, 20, 30});
  for (int i = 0; i < 100; ++i) h.Observe(i < 50 ? 5 : 15);
  EXPECT_LE(h.Quantile(0.5), 10);
  EXPECT_GT(h.Quantile(0.99), 10);
  EXPECT_LE(h.Quantile(0.99), 20);
  EXPECT_EQ(Histogram({1}).Quantile(0.5), 0);
}

}  // namespace
}  // namespace devbridge::common
