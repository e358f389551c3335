#include "services/push/core/history.h"

#include "gtest/gtest.h"

namespace devbridge::push {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1800000000);

std::shared_ptr<const std::string> F(int i) { return std::make_shared<const std::string>(std::to_string(i)); }

std::vector<std::string> Texts(const std::vector<std::shared_ptr<const std::string>>& v) {
  std::vector<std::string> out;
  out.reserve(v.size());
  for (const auto& p : v) out.push_back(*p);
  return out;
}

TEST(History, ReplaysEverythingAfterTheOffsetInOrder) {
  History h(10, absl::Minutes(5));
  h.Reset("ep");
  for (int i = 1; i <= 5; ++i) h.Add("fleet", i, F(i), t0);
  std::vector<std::shared_ptr<const std::string>> out;
  ASSERT_TRUE(h.Since("fleet", "ep", 2, t0, &out));
  EXPECT_EQ(Texts(out), (std::vector<std::string>{"3", "4", "5"}));
  ASSERT_TRUE(h.Since("fleet", "ep", 5, t0, &out));
  EXPECT_TRUE(out.empty());
  ASSERT_TRUE(h.Since("fleet", "ep", 0, t0, &out));
  EXPECT_EQ(out.size(), 5u);
}

TEST(History, ExpireDropsStreamsWhoseMessagesAreAllOld) {
  History h(10, absl::Minutes(5));
  h.Reset("ep");
  h.Add("old", 1, F(1), t0);
  h.Add("new", 1, F(1), t0 + absl::Minutes(4));
  h.Expire(t0 + absl::Minutes(6));
  EXPECT_EQ(h.streams(), 1u) << "without another message on it, the old stream goes";
  std::vector<std::shared_ptr<const std::string>> out;
  EXPECT_FALSE(h.Since("old", "ep", 1, t0 + absl::Minutes(6), &out)) << "its position is gone: 410";
  EXPECT_TRUE(h.Since("new", "ep", 0, t0 + absl::Minutes(6), &out));
  h.Expire(t0 + absl::Minutes(10));
  EXPECT_EQ(h.streams(), 0u);
}

TEST(History, GoneWhenEvictedExpiredOtherEpochOrUnknown) {
  History h(3, absl::Minutes(5));
  h.Reset("ep");
  for (int i = 1; i <= 5; ++i) h.Add("s", i, F(i), t0);
  std::vector<std::shared_ptr<const std::string>> out;
  EXPECT_FALSE(h.Since("s", "ep", 1, t0, &out)) << "2 was evicted";
  EXPECT_TRUE(h.Since("s", "ep", 2, t0, &out));
  EXPECT_FALSE(h.Since("s", "old", 4, t0, &out));
  EXPECT_FALSE(h.Since("s", "ep", 9, t0, &out)) << "never issued";
  EXPECT_FALSE(h.Since("s", "ep", 4, t0 + absl::Minutes(6), &out)) << "expired";
  EXPECT_TRUE(h.Since("s", "ep", 5, t0 + absl::Minutes(6), &out)) << "nothing missed";
  EXPECT_TRUE(h.Since("never", "ep", 0, t0, &out));
  EXPECT_FALSE(h.Since("never", "ep", 3, t0, &out));
}

TEST(History, AGapMakesEarlierOffsetsUnrecoverable) {
  History h(10, absl::Minutes(5));
  h.Reset("ep");
  h.Add("s", 1, F(1), t0);
  h.Add("s", 2, F(2), t0);
  h.Add("s", 5, F(5), t0);  // 3 and 4 never reached this replica
  std::vector<std::shared_ptr<const std::string>> out;
  EXPECT_FALSE(h.Since("s", "ep", 2, t0, &out));
  EXPECT_TRUE(h.Since("s", "ep", 4, t0, &out));
  EXPECT_EQ(Texts(out), std::vector<std::string>{"5"});
}

TEST(History, JoinedLateHoldsOnlyWhatItSaw) {
  History h(10, absl::Minutes(5));
  h.Reset("ep");
  h.Add("s", 7, F(7), t0);
  std::vector<std::shared_ptr<const std::string>> out;
  EXPECT_FALSE(h.Since("s", "ep", 5, t0, &out));
  EXPECT_TRUE(h.Since("s", "ep", 6, t0, &out));
  h.Reset("ep2");
  EXPECT_FALSE(h.Since("s", "ep", 6, t0, &out));
  EXPECT_EQ(h.streams(), 0u);
}

TEST(History, AMessageSeenAgainIsIgnoredAndKeepsWhatIsHeld) {
  History h(10, absl::Minutes(5));
  h.Reset("e");
  const absl::Time now = absl::FromUnixSeconds(1000);
  for (uint64_t o = 1; o <= 4; ++o) h.Add("s", o, std::make_shared<const std::string>(std::to_string(o)), now);
  // A stream read back again (interest routing) starts with messages held already.
  for (uint64_t o = 2; o <= 5; ++o) h.Add("s", o, std::make_shared<const std::string>(std::to_string(o)), now);
  std::vector<std::shared_ptr<const std::string>> out;
  ASSERT_TRUE(h.Since("s", "e", 1, now, &out));
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(*out[0], "2");
  EXPECT_EQ(*out[3], "5");
}

}  // namespace
}  // namespace devbridge::push
