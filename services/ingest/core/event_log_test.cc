#include "services/ingest/core/event_log.h"

#include "gtest/gtest.h"

namespace devbridge::ingest {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1700000000);

v1::Event Decode(const std::shared_ptr<const std::string>& bytes) {
  v1::Event e;
  EXPECT_TRUE(bytes != nullptr && e.ParseFromString(*bytes));
  return e;
}

v1::Event Online(const std::string& id) {
  v1::Event e;
  e.mutable_device_state()->set_device_id(id);
  e.mutable_device_state()->set_online(true);
  return e;
}

TEST(EventLog, StampsSequenceAndPerStreamOffsets) {
  EventLog log("ep1", 100);
  log.Append(Online("a"), {{"a", ""}, {"fleet", ""}}, t0);
  log.Append(Online("b"), {{"b", ""}, {"fleet", ""}}, t0);
  log.Append(Online("a"), {{"a", ""}, {"a", "g1"}}, t0);
  v1::Event third = Decode(log.Get(3));
  EXPECT_EQ(third.epoch(), "ep1");
  EXPECT_EQ(third.seq(), 3u);
  ASSERT_EQ(third.streams_size(), 2);
  EXPECT_EQ(third.streams(0).system_id(), "a");
  EXPECT_EQ(third.streams(0).offset(), 2u);
  EXPECT_EQ(third.streams(1).group_name(), "g1");
  EXPECT_EQ(third.streams(1).offset(), 1u);
  EXPECT_EQ(Decode(log.Get(2)).streams(1).offset(), 2u) << "fleet's second message";
  EXPECT_EQ(log.Get(4), nullptr);
  EXPECT_EQ(log.Get(0), nullptr);
}

TEST(EventLog, EvictsOldestBeyondCapacity) {
  EventLog log("ep", 3);
  for (int i = 0; i < 5; ++i) log.Append(Online("a"), {}, t0);
  EXPECT_EQ(log.oldest_seq(), 3u);
  EXPECT_EQ(log.last_seq(), 5u);
  EXPECT_EQ(log.Get(2), nullptr);
  EXPECT_EQ(Decode(log.Get(3)).seq(), 3u);
}

// The append time, for the stream's latency histogram and in the event itself (ms and µs).
TEST(EventLog, KeepsWhenEachHeldEventWasAppended) {
  EventLog log("ep", 2);
  for (int i = 0; i < 3; ++i) log.Append(Online("a"), {}, t0 + absl::Microseconds(1500 * i));
  EXPECT_EQ(log.AppendedAt(1), absl::InfinitePast()) << "evicted";
  EXPECT_EQ(log.AppendedAt(2), t0 + absl::Microseconds(1500));
  EXPECT_EQ(log.AppendedAt(3), t0 + absl::Microseconds(3000));
  EXPECT_EQ(log.AppendedAt(4), absl::InfinitePast()) << "not appended yet";
  const v1::Event third = Decode(log.Get(3));
  EXPECT_EQ(third.at_unix_us(), absl::ToUnixMicros(t0) + 3000);
  EXPECT_EQ(third.at_unix_ms(), absl::ToUnixMillis(t0) + 3);
}

TEST(EventLog, EvictsOldestBeyondItsBytes) {
  v1::Event big;
  big.mutable_push()->set_data(std::string(1000, 'x'));
  EventLog log("ep1", 100000, 10 * 1024);
  for (int i = 0; i < 100; ++i) log.Append(big, {}, t0);
  EXPECT_LE(log.bytes(), 10u * 1024);
  EXPECT_GE(log.size(), 9u);
  EXPECT_LE(log.size(), 10u);
  EXPECT_EQ(Decode(log.Get(100)).seq(), 100u) << "the newest stays";
  EventLog tiny("ep1", 100000, 10);
  tiny.Append(big, {}, t0);
  EXPECT_EQ(tiny.size(), 1u) << "one event larger than the bound is still held";
}

TEST(EventLog, IdleStreamsAreForgottenAndComeBackAboveEveryOldOffset) {
  EventLog log("ep1", 1000);
  for (int i = 0; i < 3; ++i) log.Append(Online("a"), {{"fleet", "g"}}, t0);
  log.Append(Online("a"), {{"fleet", ""}}, t0 + absl::Hours(2));
  EXPECT_EQ(log.streams(), 2u);
  log.ForgetIdleStreams(t0 + absl::Hours(2), absl::Hours(1));
  EXPECT_EQ(log.streams(), 1u) << "the group stream idled for two hours";
  const uint64_t seq = log.Append(Online("a"), {{"fleet", "g"}}, t0 + absl::Hours(3));
  const v1::Event back = Decode(log.Get(seq));
  EXPECT_EQ(back.streams(0).offset(), seq) << "above offsets 1..3 it had";
  EXPECT_GT(back.streams(0).offset(), 3u);
  log.Append(Online("a"), {{"fleet", "g"}}, t0 + absl::Hours(3));
  EXPECT_EQ(Decode(log.Get(seq + 1)).streams(0).offset(), seq + 1) << "then one by one again";
}

TEST(EventLog, ResumeWithinBufferLiveOrFromOldest) {
  EventLog log("ep", 3);
  for (int i = 0; i < 5; ++i) log.Append(Online("a"), {}, t0);
  v1::SubscribeRequest live;
  EXPECT_EQ(log.Start(live).next_seq, 6u);
  EXPECT_EQ(log.Start(live).reset, nullptr);
  v1::SubscribeRequest oldest;
  oldest.set_from_oldest(true);
  EXPECT_EQ(log.Start(oldest).next_seq, 3u);
  v1::SubscribeRequest resume;
  resume.set_resume_epoch("ep");
  resume.set_resume_after_seq(2);
  EXPECT_EQ(log.Start(resume).next_seq, 3u);
  EXPECT_EQ(log.Start(resume).reset, nullptr);
  resume.set_resume_after_seq(5);
  EXPECT_EQ(log.Start(resume).next_seq, 6u) << "caught up";
}

TEST(EventLog, ResumeFromLostEventsOrOtherEpochSaysSoPlainly) {
  EventLog log("ep", 3);
  for (int i = 0; i < 5; ++i) log.Append(Online("a"), {}, t0);
  v1::SubscribeRequest gone;
  gone.set_resume_epoch("ep");
  gone.set_resume_after_seq(1);
  ReadStart start = log.Start(gone);
  ASSERT_NE(start.reset, nullptr);
  v1::Event reset = Decode(start.reset);
  ASSERT_TRUE(reset.has_reset());
  EXPECT_EQ(reset.reset().oldest_seq(), 3u);
  EXPECT_NE(reset.reset().reason().find("no longer held"), std::string::npos);
  EXPECT_EQ(start.next_seq, 6u);

  v1::SubscribeRequest other;
  other.set_resume_epoch("old");
  other.set_resume_after_seq(4);
  v1::Event other_reset = Decode(log.Start(other).reset);
  EXPECT_EQ(other_reset.epoch(), "ep");
  EXPECT_NE(other_reset.reset().reason().find("epoch old is over"), std::string::npos);
  v1::SubscribeRequest future;
  future.set_resume_epoch("ep");
  future.set_resume_after_seq(99);
  EXPECT_NE(log.Start(future).reset, nullptr);
}

TEST(EventLog, WakesWaitersOnceOnAppend) {
  EventLog log("ep", 3);
  int woken = 0;
  log.WaitForAppend([&] { ++woken; });
  log.Append(Online("a"), {}, t0);
  log.Append(Online("a"), {}, t0);
  EXPECT_EQ(woken, 1);
}

}  // namespace
}  // namespace devbridge::ingest
