#include "services/ingest/core/poll_scheduler.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace devbridge::ingest {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1700000000);

regmap::PollBlock Block(uint16_t address, uint16_t count, absl::Duration every, uint8_t function = 3) {
  regmap::PollBlock b;
  b.function = function;
  b.address = address;
  b.count = count;
  b.every = every;
  return b;
}

PollScheduler::Options Opts(uint32_t failures, absl::Duration backoff_max = absl::Seconds(60)) {
  PollScheduler::Options o;
  o.failures = failures;
  o.backoff_max = backoff_max;
  return o;
}

std::vector<PollRequest> Due(PollScheduler& s, absl::Time now) {
  std::vector<PollRequest> out;
  s.TakeDue(now, &out);
  return out;
}

TEST(PollScheduler, MergesContiguousAndOverlappingBlocksUpTo125Registers) {
  std::vector<regmap::PollBlock> plan = {Block(10, 5, absl::Seconds(1)),  Block(0, 10, absl::Seconds(1)),
                                         Block(12, 8, absl::Seconds(1)),  Block(21, 4, absl::Seconds(1)),
                                         Block(0, 2, absl::Seconds(1), 4), Block(100, 100, absl::Seconds(1))};
  auto reads = PollScheduler::Merge(plan, 0x3F);
  ASSERT_EQ(reads.size(), 4u);
  EXPECT_EQ(reads[0].function, 3);
  EXPECT_EQ(reads[0].address, 0);
  EXPECT_EQ(reads[0].count, 20) << "0..9, 10..14 (contiguous) and 12..19 (overlapping) in one read";
  EXPECT_EQ(reads[0].blocks, 0b111u);
  EXPECT_EQ(reads[1].address, 21) << "a gap of one register starts a new read";
  EXPECT_EQ(reads[2].address, 100) << "0..24 and 100..199 would be 200 registers";
  EXPECT_EQ(reads[3].function, 4) << "another function is another read";
  // Only the blocks asked for.
  auto one = PollScheduler::Merge(plan, 0b10);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].count, 10);
  // Merging stops at 125.
  auto capped = PollScheduler::Merge({Block(0, 100, absl::Seconds(1)), Block(100, 26, absl::Seconds(1))}, 0b11);
  EXPECT_EQ(capped.size(), 2u);
  auto exact = PollScheduler::Merge({Block(0, 100, absl::Seconds(1)), Block(100, 25, absl::Seconds(1))}, 0b11);
  ASSERT_EQ(exact.size(), 1u);
  EXPECT_EQ(exact[0].count, 125);
}

TEST(PollScheduler, PollsOnThePlanSpreadOverTheInterval) {
  PollScheduler s({});
  const int kDevices = 1000;
  for (int i = 0; i < kDevices; ++i) s.Start(absl::StrCat("d-", i), 1, {Block(0, 12, absl::Seconds(5))}, t0);
  std::map<std::string, std::vector<absl::Time>> seen;
  std::vector<int> per_second(5, 0);
  for (absl::Time now = t0; now <= t0 + absl::Seconds(10); now += absl::Milliseconds(10)) {
    for (PollRequest& r : Due(s, now)) {
      EXPECT_LE(r.due, now);
      EXPECT_GT(r.due, now - absl::Milliseconds(10));
      if (now < t0 + absl::Seconds(5)) ++per_second[absl::ToInt64Seconds(now - t0)];
      seen[r.device_id].push_back(r.due);
      s.Done(r, 200, now);
    }
  }
  ASSERT_EQ(seen.size(), static_cast<size_t>(kDevices));
  for (const auto& [id, times] : seen) {
    ASSERT_EQ(times.size(), 2u) << id;
    EXPECT_EQ(times[1] - times[0], absl::Seconds(5)) << id;
  }
  // 1,000 devices at 5 s: about 200 start in each second, not all at once.
  for (int n : per_second) {
    EXPECT_GT(n, 120);
    EXPECT_LT(n, 280);
  }
}

TEST(PollScheduler, BlocksWhoseIntervalsDivideEachOtherShareReads) {
  PollScheduler s({});
  s.Start("d", 7, {Block(0, 4, absl::Seconds(1)), Block(4, 4, absl::Seconds(5))}, t0);
  int merged = 0, single = 0;
  for (absl::Time now = t0; now <= t0 + absl::Seconds(10); now += absl::Milliseconds(10)) {
    for (PollRequest& r : Due(s, now)) {
      EXPECT_EQ(r.unit, 7);
      if (r.blocks == 0b11) {
        ++merged;
        EXPECT_EQ(r.count, 8);
      } else {
        ++single;
        EXPECT_EQ(r.blocks, 0b01u);
      }
      s.Done(r, 200, now);
    }
  }
  EXPECT_EQ(merged, 2);
  EXPECT_EQ(single, 8);
}

TEST(PollScheduler, SkipsABlockWhosePreviousReadStillWaits) {
  PollScheduler s({});
  s.Start("d", 1, {Block(0, 1, absl::Seconds(1))}, t0);
  std::vector<PollRequest> pending;
  for (absl::Time now = t0; now <= t0 + absl::Seconds(3); now += absl::Milliseconds(10)) {
    for (PollRequest& r : Due(s, now)) pending.push_back(r);
  }
  EXPECT_EQ(pending.size(), 1u) << "the first read never ended: the next ones are skipped";
  EXPECT_GE(s.skipped(), 2u);
  s.Done(pending[0], 200, t0 + absl::Seconds(3));
  std::vector<PollRequest> after;
  for (absl::Time now = t0 + absl::Seconds(3); now <= t0 + absl::Seconds(4) + absl::Milliseconds(10);
       now += absl::Milliseconds(10)) {
    for (PollRequest& r : Due(s, now)) after.push_back(r);
  }
  EXPECT_EQ(after.size(), 1u);
}

TEST(PollScheduler, UnresponsiveAfterFailuresThenBacksOffThenRecovers) {
  PollScheduler s(Opts(3, absl::Seconds(8)));
  s.Start("d", 1, {Block(0, 1, absl::Seconds(1)), Block(50, 1, absl::Seconds(1))}, t0);
  std::vector<absl::Time> starts;
  std::vector<PollTransition> transitions;
  bool answer = false;
  for (absl::Time now = t0; now <= t0 + absl::Seconds(40); now += absl::Milliseconds(10)) {
    std::vector<PollRequest> due = Due(s, now);
    if (!due.empty()) starts.push_back(now);
    for (PollRequest& r : due) {
      // Each read times out at once; from 30 s on the device answers.
      if (now >= t0 + absl::Seconds(30)) answer = true;
      PollTransition t = s.Done(r, answer ? 200 : 2002, now);
      if (t != PollTransition::kNone) transitions.push_back(t);
    }
  }
  ASSERT_EQ(transitions.size(), 2u);
  EXPECT_EQ(transitions[0], PollTransition::kUnresponsive);
  EXPECT_EQ(transitions[1], PollTransition::kResponsive);
  EXPECT_FALSE(s.Find("d")->unresponsive);
  EXPECT_EQ(s.unresponsive(), 0u);
  // Two reads a second (the blocks are not contiguous) until the third failure, then probes
  // 2 s, 4 s, 8 s, 8 s apart, then back to the plan.
  std::vector<absl::Duration> gaps;
  for (size_t i = 1; i < starts.size(); ++i) gaps.push_back(starts[i] - starts[i - 1]);
  ASSERT_GE(gaps.size(), 6u);
  EXPECT_EQ(gaps[0], absl::Seconds(1));
  EXPECT_EQ(gaps[1], absl::Seconds(2));
  EXPECT_EQ(gaps[2], absl::Seconds(4));
  EXPECT_EQ(gaps[3], absl::Seconds(8));
  EXPECT_EQ(gaps[4], absl::Seconds(8));
  EXPECT_EQ(gaps.back(), absl::Seconds(1));
}

TEST(PollScheduler, StatusCountsFailuresAndGarbledRepliesAreFailures) {
  PollScheduler s(Opts(2));
  s.Start("d", 1, {Block(0, 1, absl::Seconds(1))}, t0);
  auto one = [&](int code, absl::Time now) {
    std::vector<PollRequest> due = Due(s, now);
    EXPECT_EQ(due.size(), 1u);
    return due.empty() ? PollTransition::kNone : s.Done(due[0], code, now);
  };
  EXPECT_EQ(one(2001, t0 + absl::Seconds(1)), PollTransition::kNone);
  EXPECT_EQ(s.Find("d")->failures, 1u);
  EXPECT_EQ(s.Find("d")->last_code, 2001);
  EXPECT_EQ(one(2006, t0 + absl::Seconds(2)), PollTransition::kNone) << "an exception reply is an answer";
  EXPECT_EQ(s.Find("d")->failures, 0u);
  EXPECT_EQ(one(2002, t0 + absl::Seconds(3)), PollTransition::kNone);
  EXPECT_EQ(one(2001, t0 + absl::Seconds(4)), PollTransition::kUnresponsive);
  EXPECT_EQ(s.unresponsive(), 1u);
  EXPECT_EQ(s.Find("d")->backoff, absl::Seconds(2));
  s.Stop("d");
  EXPECT_EQ(s.unresponsive(), 0u);
  EXPECT_EQ(s.Find("d"), nullptr);
}

TEST(PollScheduler, ANewPlanTakesEffectAtOnceAndOldOutcomesAreIgnored) {
  PollScheduler s({});
  s.Start("d", 1, {Block(0, 1, absl::Seconds(1))}, t0);
  std::vector<PollRequest> first;
  for (absl::Time now = t0; first.empty(); now += absl::Milliseconds(10)) first = Due(s, now);
  // The same plan again keeps the state (the read is still outstanding).
  s.Start("d", 1, {Block(0, 1, absl::Seconds(1))}, first[0].due);
  EXPECT_TRUE(Due(s, first[0].due + absl::Seconds(1)).empty()) << "still waiting: skipped";
  // A new plan starts afresh: the old read's outcome no longer counts.
  s.Start("d", 1, {Block(5, 2, absl::Milliseconds(200))}, first[0].due + absl::Seconds(1));
  EXPECT_EQ(s.Done(first[0], 2002, first[0].due + absl::Seconds(1)), PollTransition::kNone);
  EXPECT_EQ(s.Find("d")->failures, 0u);
  std::vector<PollRequest> next = Due(s, first[0].due + absl::Seconds(1) + absl::Milliseconds(200));
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].address, 5);
  // An empty plan stops polling.
  s.Start("d", 1, {}, first[0].due + absl::Seconds(2));
  EXPECT_EQ(s.size(), 0u);
  EXPECT_TRUE(Due(s, first[0].due + absl::Seconds(10)).empty());
}

TEST(PollScheduler, APlanOfSixtyFourBlocksProbesItsFirstRead) {
  std::vector<regmap::PollBlock> plan;
  for (uint16_t i = 0; i < regmap::kMaxPollBlocks; ++i) plan.push_back(Block(static_cast<uint16_t>(i * 2), 1, absl::Seconds(1)));
  PollScheduler s(Opts(1));
  s.Start("d", 1, plan, t0);
  std::vector<PollRequest> due;
  absl::Time now = t0;
  for (; due.empty(); now += absl::Milliseconds(10)) due = Due(s, now);
  ASSERT_EQ(due.size(), 64u) << "no two blocks touch: one read each";
  EXPECT_EQ(due.back().blocks, uint64_t{1} << 63);
  for (const PollRequest& r : due) s.Done(r, 2002, now);
  ASSERT_TRUE(s.Find("d")->unresponsive);
  std::vector<PollRequest> probe;
  for (; probe.empty(); now += absl::Milliseconds(10)) probe = Due(s, now);
  ASSERT_EQ(probe.size(), 1u);
  EXPECT_TRUE(probe[0].probe);
  EXPECT_EQ(probe[0].blocks, 1u);
  EXPECT_EQ(probe[0].address, 0);
}

}  // namespace
}  // namespace devbridge::ingest
