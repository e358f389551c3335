#include "common/log.h"

#include "gtest/gtest.h"

namespace devbridge::common {
namespace {

TEST(LogLimiterTest, OneLinePerPeriodAndCountsWhatItLeftOut) {
  LogLimiter limiter(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t skipped = 99;
  EXPECT_TRUE(limiter.Allow(t0, &skipped));
  EXPECT_EQ(skipped, 0u);
  EXPECT_FALSE(limiter.Allow(t0 + absl::Seconds(1)));
  EXPECT_FALSE(limiter.Allow(t0 + absl::Seconds(9)));
  EXPECT_TRUE(limiter.Allow(t0 + absl::Seconds(10), &skipped));
  EXPECT_EQ(skipped, 2u);
  EXPECT_FALSE(limiter.Allow(t0 + absl::Seconds(11)));
  EXPECT_TRUE(limiter.Allow(t0 + absl::Seconds(25), &skipped));
  EXPECT_EQ(skipped, 1u);
}

}  // namespace
}  // namespace devbridge::common
