#include "services/ingest/core/command_tracker.h"

#include "gtest/gtest.h"

namespace devbridge::ingest {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1700000000);

PendingCommand Cmd(const std::string& device, const std::string& id, absl::Duration timeout) {
  PendingCommand c;
  c.command.set_device_id(device);
  c.command_id = id;
  c.submitted = t0;
  c.sent = absl::InfinitePast();
  c.deadline = t0 + timeout;
  return c;
}

TEST(CommandTracker, OneInFlightPerDeviceInFifoOrder) {
  CommandTracker tracker(4);
  ASSERT_TRUE(tracker.Enqueue(Cmd("d", "1", absl::Seconds(5))));
  ASSERT_TRUE(tracker.Enqueue(Cmd("d", "2", absl::Seconds(5))));
  ASSERT_TRUE(tracker.Enqueue(Cmd("e", "3", absl::Seconds(5))));
  PendingCommand* first = tracker.StartNext("d", t0);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->command_id, "1");
  EXPECT_EQ(first->sent, t0);
  EXPECT_EQ(tracker.StartNext("d", t0), nullptr) << "second must wait for the first";
  EXPECT_EQ(tracker.InFlight("d")->command_id, "1");
  EXPECT_EQ(tracker.TakeInFlight("d")->command_id, "1");
  EXPECT_EQ(tracker.StartNext("d", t0)->command_id, "2");
  EXPECT_EQ(tracker.IdleDevicesWithWork(), std::vector<std::string>{"e"});
  EXPECT_EQ(tracker.total(), 2u);
}

PendingCommand Poll(const std::string& device, absl::Duration timeout) {
  PendingCommand c = Cmd(device, "", timeout);
  c.poll = true;
  return c;
}

TEST(CommandTracker, PollsGoBehindUsersCommandsAndDoNotTakeTheirPlaces) {
  CommandTracker tracker(1);
  ASSERT_TRUE(tracker.Enqueue(Poll("d", absl::Seconds(5))));
  ASSERT_TRUE(tracker.Enqueue(Poll("d", absl::Seconds(5))));
  EXPECT_FALSE(tracker.Full("d")) << "polls do not count against command_queue_depth";
  ASSERT_TRUE(tracker.Enqueue(Cmd("d", "user", absl::Seconds(5))));
  EXPECT_TRUE(tracker.Full("d"));
  EXPECT_EQ(tracker.waiting("d"), 1u);
  EXPECT_EQ(tracker.StartNext("d", t0)->command_id, "user") << "a user's command goes before polls queued earlier";
  tracker.TakeInFlight("d");
  EXPECT_TRUE(tracker.StartNext("d", t0)->poll);
  EXPECT_EQ(tracker.total(), 2u);
  auto all = tracker.TakeAll("d");
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(tracker.total(), 0u);
  EXPECT_TRUE(tracker.Devices().empty());
}

TEST(CommandTracker, WaitingPollsExpireAndEmptyQueuesAreForgotten) {
  CommandTracker tracker(4);
  tracker.Enqueue(Poll("d", absl::Seconds(1)));
  tracker.Enqueue(Poll("d", absl::Seconds(3)));
  tracker.StartNext("d", t0);
  EXPECT_EQ(tracker.IdleDevicesWithWork().size(), 0u);
  auto expired = tracker.TakeExpired(t0 + absl::Seconds(1));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(tracker.IdleDevicesWithWork(), std::vector<std::string>{"d"}) << "the second poll is ready to go";
  EXPECT_EQ(tracker.TakeExpired(t0 + absl::Seconds(3)).size(), 1u);
  EXPECT_TRUE(tracker.Devices().empty());
}

TEST(CommandTracker, DepthBoundsWaitingCommands) {
  CommandTracker tracker(2);
  EXPECT_TRUE(tracker.Enqueue(Cmd("d", "1", absl::Seconds(5))));
  tracker.StartNext("d", t0);
  EXPECT_TRUE(tracker.Enqueue(Cmd("d", "2", absl::Seconds(5))));
  EXPECT_TRUE(tracker.Enqueue(Cmd("d", "3", absl::Seconds(5))));
  EXPECT_TRUE(tracker.Full("d"));
  EXPECT_FALSE(tracker.Enqueue(Cmd("d", "4", absl::Seconds(5))));
  EXPECT_FALSE(tracker.Full("other"));
  EXPECT_EQ(tracker.waiting("d"), 2u);
}

TEST(CommandTracker, ExpiresInFlightAndWaitingCommands) {
  CommandTracker tracker(8);
  tracker.Enqueue(Cmd("d", "1", absl::Seconds(1)));
  tracker.Enqueue(Cmd("d", "2", absl::Seconds(1)));
  tracker.Enqueue(Cmd("d", "3", absl::Seconds(10)));
  tracker.StartNext("d", t0);
  EXPECT_TRUE(tracker.TakeExpired(t0 + absl::Milliseconds(999)).empty());
  auto expired = tracker.TakeExpired(t0 + absl::Seconds(1));
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(tracker.InFlight("d"), nullptr);
  EXPECT_EQ(tracker.StartNext("d", t0)->command_id, "3");
  EXPECT_EQ(tracker.total(), 1u);
}

TEST(CommandTracker, TakeAllEmptiesADevice) {
  CommandTracker tracker(8);
  tracker.Enqueue(Cmd("d", "1", absl::Seconds(1)));
  tracker.Enqueue(Cmd("d", "2", absl::Seconds(1)));
  tracker.StartNext("d", t0);
  auto all = tracker.TakeAll("d");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].command_id, "1");
  EXPECT_EQ(all[1].command_id, "2");
  EXPECT_EQ(tracker.total(), 0u);
  EXPECT_TRUE(tracker.Devices().empty());
}

}  // namespace
}  // namespace devbridge::ingest
