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
  const std::string data = EncodeIntake({"devices/m/data", payload, at, IntakeSource("ab12"), 77});
  IntakeMessage got;
  ASSERT_TRUE(DecodeIntake(data, &got));
  EXPECT_EQ(got.topic, "devices/m/data");
  EXPECT_EQ(got.payload, payload);
  EXPECT_EQ(got.taken_at, at);
  EXPECT_EQ(got.source, IntakeSource("ab12"));
  EXPECT_NE(got.source, IntakeSource("ab13"));
  EXPECT_EQ(got.seq, 77u);
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

TEST(IntakeWindow, DropsACopyWithinTheWindowOnly) {
  IntakeWindow window(3);
  EXPECT_TRUE(window.Offer(1, 10));
  EXPECT_TRUE(window.Offer(2, 10));  // another replica's position 10
  EXPECT_FALSE(window.Offer(1, 10));
  EXPECT_TRUE(window.Offer(1, 0));   // no origin: never a copy
  EXPECT_TRUE(window.Offer(1, 0));
  EXPECT_TRUE(window.Offer(1, 11));
  EXPECT_TRUE(window.Offer(1, 12));  // (1, 10) leaves the window
  EXPECT_TRUE(window.Offer(1, 10));
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
