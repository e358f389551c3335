#include "services/ingest/core/device_table.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace devbridge::ingest {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1700000000);

TEST(DeviceTable, OnlineOnFirstMessageOfflineAfterSilence) {
  DeviceTable table;
  EXPECT_TRUE(table.Touch("d1", t0));
  EXPECT_FALSE(table.Touch("d1", t0 + absl::Seconds(1)));
  EXPECT_TRUE(table.IsOnline("d1"));
  EXPECT_EQ(table.online_count(), 1u);
  EXPECT_TRUE(table.Sweep(t0 + absl::Seconds(90), absl::Seconds(90)).empty());
  EXPECT_EQ(table.Sweep(t0 + absl::Seconds(92), absl::Seconds(90)), std::vector<std::string>{"d1"});
  EXPECT_FALSE(table.IsOnline("d1"));
  EXPECT_EQ(table.online_count(), 0u);
  EXPECT_TRUE(table.Sweep(t0 + absl::Seconds(200), absl::Seconds(90)).empty()) << "only once";
  EXPECT_TRUE(table.Touch("d1", t0 + absl::Seconds(300)));
  EXPECT_EQ(table.Find("d1")->first_seen, t0);
  EXPECT_EQ(table.Find("d1")->last_seen, t0 + absl::Seconds(300));
}

TEST(DeviceTable, SnapshotIsSortedAndMarkOffline) {
  DeviceTable table;
  table.Touch("b", t0);
  table.Touch("a", t0);
  table.SetMeta("a", R"({"fw":"1.2"})");
  auto snap = table.Snapshot();
  ASSERT_EQ(snap.size(), 2u);
  EXPECT_EQ(snap[0].id, "a");
  EXPECT_EQ(snap[0].meta_json, R"({"fw":"1.2"})");
  EXPECT_TRUE(table.MarkOffline("a"));
  EXPECT_FALSE(table.MarkOffline("a"));
  EXPECT_FALSE(table.MarkOffline("zz"));
  EXPECT_EQ(table.online_count(), 1u);
}

TEST(DeviceTable, OfflineDevicesAreForgottenAfterAWhileAndPagedInIdOrder) {
  DeviceTable table;
  const absl::Time t = absl::FromUnixSeconds(1700000000);
  for (const char* id : {"c", "a", "d", "b"}) table.Touch(id, t);
  table.Touch("e", t + absl::Hours(30));
  table.Sweep(t + absl::Hours(1), absl::Minutes(1));  // a..d offline, e not yet seen then
  EXPECT_TRUE(table.Forget(t + absl::Hours(10), absl::Hours(24)).empty());
  std::vector<std::string> gone = table.Forget(t + absl::Hours(25), absl::Hours(24));
  std::sort(gone.begin(), gone.end());
  EXPECT_EQ(gone, (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(table.size(), 1u) << "online devices stay";
  table.Touch("a", t + absl::Hours(31));
  table.Touch("c", t + absl::Hours(31));
  auto ids = [](const std::vector<const DeviceInfo*>& page) {
    std::vector<std::string> out;
    for (const DeviceInfo* d : page) out.push_back(d->id);
    return out;
  };
  EXPECT_EQ(ids(table.Page("", 2)), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(ids(table.Page("c", 2)), (std::vector<std::string>{"e"}));
  EXPECT_TRUE(table.Page("e", 2).empty());
}

}  // namespace
}  // namespace devbridge::ingest
