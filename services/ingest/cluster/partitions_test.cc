#include "services/ingest/cluster/partitions.h"

#include "services/ingest/cluster/device_directory.h"

#include <gtest/gtest.h>

#include <set>

namespace devbridge::ingest::cluster {
namespace {

TEST(PartitionOf, IsStableInRangeAndSpreadsDevices) {
  EXPECT_EQ(PartitionOf("meter-1", 16), PartitionOf("meter-1", 16));
  std::vector<int> counts(16);
  for (int i = 0; i < 1600; ++i) {
    const int p = PartitionOf("dev-" + std::to_string(i), 16);
    ASSERT_GE(p, 0);
    ASSERT_LT(p, 16);
    ++counts[p];
  }
  for (int c : counts) EXPECT_GT(c, 50) << "a partition got few devices: the hash does not spread";
}

TEST(PartitionOf, TopicUsesTheDeviceId) {
  EXPECT_EQ(PartitionOfTopic("devices/meter-1/data", 8), PartitionOf("meter-1", 8));
  EXPECT_EQ(PartitionOfTopic("devices/meter-1/heartbeat", 8), PartitionOf("meter-1", 8));
  EXPECT_EQ(PartitionOfTopic("devices", 8), -1);
  EXPECT_EQ(PartitionOfTopic("devices/meter-1", 8), -1);
  EXPECT_EQ(PartitionOfTopic("devices//data", 8), -1);
  EXPECT_EQ(PartitionOfTopic("site/3/devices/meter-1/data", 8), PartitionOf("meter-1", 8));
  EXPECT_EQ(PartitionOfTopic("/data", 8), -1);
}

TEST(NodeLease, KeepsOnlyCharactersAKeyMayHold) {
  EXPECT_EQ(NodeLease("ingest-1/ab.c d"), "node-ingest-1_ab_c_d");
}

TEST(Intake, RoundTripsTopicPayloadTimeAndOrigin) {
  const absl::Time at = absl::FromUnixMicros(1764000000123456);
  const std::string payload("\x01\x03\x00\xff", 4);
  const std::string data =
      EncodeIntake({"devices/m/data", payload, at, IntakeSource("ab12"), 77, IntakeSource("ingest-2"), 65535, true});
  IntakeMessage got;
  ASSERT_TRUE(DecodeIntake(data, &got));
  EXPECT_EQ(got.topic, "devices/m/data");
  EXPECT_EQ(got.payload, payload);
  EXPECT_EQ(got.taken_at, at);
  EXPECT_EQ(got.source, IntakeSource("ab12"));
  EXPECT_NE(got.source, IntakeSource("ab13"));
  EXPECT_EQ(got.seq, 77u);
  EXPECT_EQ(got.session, IntakeSource("ingest-2"));
  EXPECT_EQ(got.packet_id, 65535);
  EXPECT_TRUE(got.dup);
}

TEST(Intake, RefusesDataShorterThanItsLengths) {
  const std::string data = EncodeIntake({"devices/m/data", "x", absl::UnixEpoch(), 1, 2});
  IntakeMessage got;
  for (size_t n = 0; n < data.size() - 1; ++n) {
    EXPECT_FALSE(DecodeIntake(absl::string_view(data).substr(0, n), &got)) << n;
  }
  EXPECT_TRUE(DecodeIntake(absl::string_view(data).substr(0, data.size() - 1), &got));
  EXPECT_EQ(got.payload, "");
}

IntakeMessage Origin(uint64_t source, uint64_t seq) {
  IntakeMessage m;
  m.topic = "devices/m/data";
  m.source = source;
  m.seq = seq;
  return m;
}

IntakeMessage Delivered(uint64_t source, uint64_t seq, uint16_t packet_id, bool dup, absl::string_view payload,
                        uint64_t session = 7) {
  IntakeMessage m = Origin(source, seq);
  m.payload = payload;
  m.session = session;
  m.packet_id = packet_id;
  m.dup = dup;
  return m;
}

TEST(IntakeWindow, DropsACopyWithinTheWindowOnly) {
  IntakeWindow window(3);
  EXPECT_TRUE(window.Offer(Origin(1, 10)));
  EXPECT_TRUE(window.Offer(Origin(2, 10)));  // another replica's position 10
  EXPECT_FALSE(window.Offer(Origin(1, 10)));
  EXPECT_TRUE(window.Offer(Origin(1, 0)));   // no origin: never a copy
  EXPECT_TRUE(window.Offer(Origin(1, 0)));
  EXPECT_TRUE(window.Offer(Origin(1, 11)));
  EXPECT_TRUE(window.Offer(Origin(1, 12)));  // (1, 10) leaves the window
  EXPECT_TRUE(window.Offer(Origin(1, 10)));
}

TEST(IntakeWindow, DropsABrokerRedeliveryTakenByAnotherReplicaInEitherOrder) {
  IntakeWindow window;
  // Replica 1 took packet 5; the broker resent it, DUP, to replica 2, which adopted the session.
  EXPECT_TRUE(window.Offer(Delivered(1, 100, 5, false, "a")));
  EXPECT_FALSE(window.Offer(Delivered(2, 40, 5, true, "a")));
  // The other order: replica 2's DUP copy first, replica 1's original when it comes back.
  EXPECT_TRUE(window.Offer(Delivered(2, 41, 6, true, "b")));
  EXPECT_FALSE(window.Offer(Delivered(1, 101, 6, false, "b")));
  // Then packet id 6 is free again: a new message with the same payload is taken.
  EXPECT_TRUE(window.Offer(Delivered(1, 102, 6, false, "b")));
}

TEST(IntakeWindow, KeepsEqualPayloadsThatAreNotRedeliveries) {
  IntakeWindow window;
  EXPECT_TRUE(window.Offer(Delivered(1, 1, 9, false, "same")));
  EXPECT_TRUE(window.Offer(Delivered(1, 2, 9, false, "same"))) << "packet id reused: a new message";
  EXPECT_TRUE(window.Offer(Delivered(1, 3, 10, true, "other"))) << "DUP, but nothing seen under its packet id";
  EXPECT_TRUE(window.Offer(Delivered(1, 4, 9, true, "changed"))) << "DUP of another message";
  EXPECT_TRUE(window.Offer(Delivered(1, 5, 9, true, "same", /*session=*/8))) << "another session's packet 9";
  EXPECT_TRUE(window.Offer(Delivered(1, 6, 0, true, "same"))) << "QoS 0";
}

TEST(IntakeWindow, ForgetsTheOldestPacketsPastItsCapacity) {
  IntakeWindow window(100, /*packets=*/2);
  EXPECT_TRUE(window.Offer(Delivered(1, 1, 1, false, "a")));
  EXPECT_TRUE(window.Offer(Delivered(1, 2, 2, false, "a")));
  EXPECT_TRUE(window.Offer(Delivered(1, 3, 3, false, "a")));  // packet 1 leaves
  EXPECT_TRUE(window.Offer(Delivered(2, 1, 1, true, "a")));
  EXPECT_FALSE(window.Offer(Delivered(2, 2, 3, true, "a")));
}

TEST(PlanLeases, ALoneReplicaTakesEverythingFree) {
  const LeasePlan plan = PlanLeases({"", "", "b", ""}, "a", 1);
  EXPECT_EQ(plan.take, (std::vector<int>{0, 1, 3}));
  EXPECT_TRUE(plan.release.empty());
}

TEST(PlanLeases, TakesOnlyItsShare) {
  const LeasePlan plan = PlanLeases({"", "", "", "", "", ""}, "a", 2);
  EXPECT_EQ(plan.take, (std::vector<int>{0, 1, 2}));
}

TEST(PlanLeases, GivesBackTheHighestBeyondItsShareWhenAReplicaJoins) {
  const LeasePlan plan = PlanLeases({"a", "a", "a", "a", "a"}, "a", 2);
  EXPECT_EQ(plan.release, (std::vector<int>{4, 3}));
  EXPECT_TRUE(plan.take.empty());
}

TEST(PlanLeases, LeavesPartitionsOfUnknownHolderAlone) {
  const LeasePlan plan = PlanLeases({"?", "b", ""}, "a", 1);
  EXPECT_EQ(plan.take, (std::vector<int>{2}));
}

TEST(PlanLeases, SharesAddUpToEveryPartition) {
  // Two replicas taking in turns from a free table end with every partition held once.
  std::vector<std::string> holders(16);
  for (int round = 0; round < 3; ++round) {
    for (const std::string self : {"a", "b"}) {
      const LeasePlan plan = PlanLeases(holders, self, 2);
      for (int p : plan.release) holders[p] = "";
      for (int p : plan.take) holders[p] = self;
    }
  }
  int a = 0, b = 0;
  for (const std::string& h : holders) (h == "a" ? a : b) += 1;
  EXPECT_EQ(a, 8);
  EXPECT_EQ(b, 8);
}

v1::ListDevicesResponse Page(std::vector<std::pair<std::string, int64_t>> devices) {
  v1::ListDevicesResponse page;
  for (const auto& [id, seen] : devices) {
    v1::Device* d = page.add_devices();
    d->set_device_id(id);
    d->set_last_seen_unix_ms(seen);
  }
  return page;
}

TEST(MergeDevicePages, OrdersByIdAndSaysWhereToGoOn) {
  const v1::ListDevicesResponse merged = MergeDevicePages({Page({{"a", 1}, {"d", 1}, {"e", 1}}), Page({{"b", 1}, {"c", 1}})}, 3);
  ASSERT_EQ(merged.devices_size(), 3);
  EXPECT_EQ(merged.devices(0).device_id(), "a");
  EXPECT_EQ(merged.devices(1).device_id(), "b");
  EXPECT_EQ(merged.devices(2).device_id(), "c");
  EXPECT_EQ(merged.next(), "c");
}

TEST(MergeDevicePages, ALastPageHasNoNextAndADeviceListedTwiceIsTheNewest) {
  const v1::ListDevicesResponse merged = MergeDevicePages({Page({{"a", 5}}), Page({{"a", 9}, {"b", 1}})}, 3);
  ASSERT_EQ(merged.devices_size(), 2);
  EXPECT_EQ(merged.devices(0).last_seen_unix_ms(), 9);
  EXPECT_EQ(merged.next(), "");
}

}  // namespace
}  // namespace devbridge::ingest::cluster
