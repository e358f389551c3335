// Polling plans (CONTRACT §10.4) against a real mosquitto and PostgreSQL, with simulated
// slave devices that answer requests only, as meters behind a transparent DTU do.
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/component/ingest_fixture.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

// A meter whose registers 0..11 are read in two blocks of 6, which merge into one read of 12.
constexpr char kPollMap[] = R"({
  "profiles": {
    "meter": {
      "unit": 1,
      "registers": [
        {"address": 0, "name": "temperature", "type": "int16", "scale": 0.1, "unit": "°C"},
        {"address": 1, "name": "humidity", "type": "uint16", "scale": 0.1, "unit": "%RH"},
        {"address": 2, "name": "energy", "type": "uint32", "scale": 0.01, "unit": "kWh"},
        {"address": 4, "name": "voltage", "type": "float32", "unit": "V"},
        {"address": 6, "name": "current", "type": "float32", "unit": "A"},
        {"address": 8, "name": "power", "type": "int32", "unit": "W"},
        {"address": 10, "name": "alarm", "type": "bool", "bit": 0},
        {"address": 11, "name": "setpoint", "type": "int16", "scale": 0.1, "unit": "°C"}
      ],
      "poll": [{"address": 0, "count": 6, "every": "EVERY"}, {"address": 6, "count": 6, "every": "EVERY"}]
    }
  },
  "devices": {"*": "meter"}
})";

std::string PollMap(const std::string& every) { return absl::StrReplaceAll(kPollMap, {{"EVERY", every}}); }

std::shared_ptr<const regmap::RegisterMap> ParseMap(const std::string& json) {
  auto map = regmap::RegisterMap::Parse(json, "poll-map.json");
  EXPECT_TRUE(map.ok()) << map.status();
  return std::make_shared<const regmap::RegisterMap>(*std::move(map));
}

bool IsPoll(const v1::Event& e, const std::string& device) {
  return e.has_data() && e.data().poll() && e.data().device_id() == device;
}

bool IsState(const v1::Event& e, const std::string& id, bool online) {
  return e.has_device_state() && e.device_state().device_id() == id && e.device_state().online() == online;
}

bool IsResponsive(const v1::Event& e, const std::string& device, bool responsive) {
  return e.has_responsive() && e.responsive().device_id() == device && e.responsive().responsive() == responsive;
}

class PollingTest : public IngestFixture {
 protected:
  void UseMap(const std::string& json) { map_ = ParseMap(json); }

  size_t CountEvents(const EventCollector& events, const std::function<bool(const v1::Event&)>& match) {
    size_t n = 0;
    for (const v1::Event& e : events.Events()) n += match(e);
    return n;
  }

  std::unique_ptr<sim::Simulator> StartSlaves(int devices, const std::function<void(sim::SimOptions&)>& adjust = nullptr) {
    return StartSim([&](sim::SimOptions& o) {
      o.devices = devices;
      o.data_interval = absl::ZeroDuration();  // slave mode: answers requests only
      if (adjust) adjust(o);
    });
  }
};

TEST_F(PollingTest, SlavesArePolledOnTheirPlanInOneMergedReadAndStoredWithoutCommands) {
  UseMap(PollMap("300ms"));
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSlaves(3);
  for (int i = 0; i < 3; ++i) {
    const std::string id = sim->DeviceId(i);
    ASSERT_TRUE(WaitFor([&] { return CountEvents(events, [&](const v1::Event& e) { return IsPoll(e, id); }) >= 3; }))
        << id << " was not polled";
  }
  const v1::Event poll = events.WaitFor([&](const v1::Event& e) { return IsPoll(e, sim->DeviceId(0)); });
  const v1::CommandResult& r = poll.data();
  EXPECT_EQ(r.code(), 200) << r.msg();
  EXPECT_TRUE(r.solicited());
  EXPECT_TRUE(r.command_id().empty());
  EXPECT_EQ(r.address(), 0u);
  EXPECT_EQ(r.count(), 12u) << "the two blocks of 6 are read in one request";
  EXPECT_EQ(r.values_size(), 8);
  EXPECT_EQ(poll.streams(0).system_id(), sim->DeviceId(0));
  EXPECT_TRUE(WaitFor([&] {
    return Count("SELECT count(*) FROM readings WHERE command_id IS NULL AND address = 0 AND \"values\" ? 'setpoint'") >= 9;
  }));
  EXPECT_EQ(Count("SELECT count(*) FROM commands"), 0) << "polls are not rows of commands";
  // ListDevices shows each device's plan and last poll.
  grpc::ClientContext ctx;
  v1::ListDevicesResponse list;
  ASSERT_TRUE(stub_->ListDevices(&ctx, {}, &list).ok());
  ASSERT_EQ(list.devices_size(), 3);
  const v1::DevicePolling& p = list.devices(0).polling();
  ASSERT_EQ(p.plan_size(), 2);
  EXPECT_EQ(p.plan(1).address(), 6u);
  EXPECT_EQ(p.plan(1).every_ms(), 300);
  EXPECT_GT(p.last_poll_unix_ms(), 0);
  EXPECT_EQ(p.last_code(), 200);
  EXPECT_FALSE(p.unresponsive());
  const std::string metrics = HttpGet("/metrics");
  EXPECT_GE(MetricValue(metrics, "devbridge_ingest_polls_total{outcome=\"replied\"}"), 9) << metrics;
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_polled_devices"), 3);
}

TEST_F(PollingTest, AUsersCommandGoesAheadOfPollsWaitingForTheDevice) {
  // Two blocks far apart (two reads), due every 100 ms, on a device that takes 150 ms to
  // answer: the device always has a poll in flight and one waiting.
  UseMap(R"({"profiles": {"meter": {"registers": [{"address": 0, "name": "a", "type": "uint16"},
                                                  {"address": 11, "name": "b", "type": "uint16"}],
             "poll": [{"address": 0, "count": 1, "every": "100ms"}, {"address": 11, "count": 1, "every": "100ms"}]}},
             "devices": {"*": "meter"}})");
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSlaves(1, [](sim::SimOptions& o) { o.reply_delay = absl::Milliseconds(150); });
  const std::string id = sim->DeviceId(0);
  ASSERT_TRUE(WaitFor([&] { return CountEvents(events, [&](const v1::Event& e) { return IsPoll(e, id); }) >= 4; }));
  for (int round = 0; round < 3; ++round) {
    const size_t before = events.Events().size();
    v1::CommandResult r = Dispatch(Read(id, 0, 1));
    ASSERT_EQ(r.code(), 200) << r.msg();
    // In the stream, from the dispatch to the command's result: at most the poll that was
    // already in flight; the one waiting went after the user's command.
    ASSERT_TRUE(events.WaitFor([&](const v1::Event& e) {
      return e.has_data() && e.data().command_id() == r.command_id();
    }).has_data());
    const std::vector<v1::Event> all = events.Events();
    size_t polls_between = 0;
    for (size_t i = before; i < all.size(); ++i) {
      if (all[i].has_data() && all[i].data().command_id() == r.command_id()) break;
      polls_between += IsPoll(all[i], id);
    }
    EXPECT_LE(polls_between, 1u) << "round " << round;
  }
}

TEST_F(PollingTest, APollWhosePreviousRunStillWaitsIsSkippedAndCounted) {
  UseMap(PollMap("100ms"));
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSlaves(1, [](sim::SimOptions& o) { o.reply_delay = absl::Milliseconds(450); });
  const std::string id = sim->DeviceId(0);
  ASSERT_TRUE(WaitFor([&] { return CountEvents(events, [&](const v1::Event& e) { return IsPoll(e, id); }) >= 3; }));
  const std::string metrics = HttpGet("/metrics");
  EXPECT_GE(MetricValue(metrics, "devbridge_ingest_polls_total{outcome=\"skipped\"}"), 6) << metrics;
  // Never two reads of the same block at once: the device saw one request per reply.
  EXPECT_LE(sim->stats().commands.load(), sim->stats().replies.load() + 1);
}

TEST_F(PollingTest, ADeviceThatStopsAnsweringIsUnresponsiveButOnlineThenComesBack) {
  UseMap(PollMap("200ms"));
  StartIngest([](ingest::IngestOptions& o) {
    o.command_timeout = absl::Milliseconds(300);
    o.poll_failures = 3;
    o.poll_backoff_max = absl::Seconds(1);
    o.heartbeat_timeout = absl::Seconds(10);
  });
  EventCollector events(stub_.get(), {});
  auto mute = StartSlaves(1, [](sim::SimOptions& o) { o.drop_rate = 1; });
  const std::string id = mute->DeviceId(0);
  const v1::Event down = events.WaitFor([&](const v1::Event& e) { return IsResponsive(e, id, false); });
  ASSERT_TRUE(down.has_responsive()) << "no device.unresponsive";
  EXPECT_EQ(down.responsive().failures(), 3u);
  EXPECT_EQ(down.responsive().backoff_ms(), 400);
  EXPECT_EQ(down.streams_size(), 2) << "to the device's system and the fleet";
  EXPECT_EQ(CountEvents(events, [&](const v1::Event& e) { return IsResponsive(e, id, false); }), 1u) << "once";
  grpc::ClientContext ctx;
  v1::ListDevicesResponse list;
  ASSERT_TRUE(stub_->ListDevices(&ctx, {}, &list).ok());
  ASSERT_EQ(list.devices_size(), 1);
  EXPECT_TRUE(list.devices(0).online()) << "unresponsive is not offline";
  EXPECT_TRUE(list.devices(0).polling().unresponsive());
  EXPECT_GE(list.devices(0).polling().failures(), 3u);
  EXPECT_EQ(MetricValue(HttpGet("/metrics"), "devbridge_ingest_devices_unresponsive"), 1);
  // Back-off: the probes thin out (0.4 s, 0.8 s, then every 1 s) instead of every 200 ms.
  const uint64_t asked = mute->stats().commands.load();
  absl::SleepFor(absl::Seconds(2));  // a window to count requests in, not a synchronisation
  EXPECT_LE(mute->stats().commands.load() - asked, 4u);
  // The same device, answering again (heartbeats kept it online meanwhile).
  mute->Stop();
  auto back = StartSlaves(1);
  const v1::Event up = events.WaitFor([&](const v1::Event& e) { return IsResponsive(e, id, true); });
  ASSERT_TRUE(up.has_responsive()) << "no device.responsive";
  EXPECT_EQ(CountEvents(events, [&](const v1::Event& e) { return IsState(e, id, false); }), 0u) << "never offline";
  EXPECT_TRUE(WaitFor([&] { return MetricValue(HttpGet("/metrics"), "devbridge_ingest_devices_unresponsive") == 0; }));
}

TEST_F(PollingTest, ReloadingTheMapChangesPlansAtOnceAndABadMapKeepsTheOld) {
  UseMap(PollMap("200ms"));
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSlaves(1);
  const std::string id = sim->DeviceId(0);
  ASSERT_TRUE(events.WaitFor([&](const v1::Event& e) { return IsPoll(e, id); }).has_data());
  const std::string path = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR") ? std::getenv("DEVBRIDGE_TEST_DIR") : "/tmp",
                                        "/reload-", getpid(), ".json");
  // A good map: one block at address 4.
  std::ofstream(path) << absl::StrReplaceAll(PollMap("200ms"),
                                             {{R"([{"address": 0, "count": 6, "every": "200ms"}, {"address": 6, "count": 6, "every": "200ms"}])",
                                               R"([{"function": 3, "address": 4, "count": 2, "every": "200ms"}])"}});
  ASSERT_TRUE(app_->ReloadRegisterMap(path).ok());
  ASSERT_TRUE(events.WaitFor([&](const v1::Event& e) { return IsPoll(e, id) && e.data().address() == 4; }).has_data())
      << "the new plan is not in force";
  // A bad map: refused with file:line:reason, the plan in force stays.
  std::ofstream(path) << "{\n  \"profiles\": {\"meter\": {\"registers\": [],\n    \"poll\": [{\"address\": 0, \"count\": 1, \"every\": \"1ms\"}]}}\n}";
  const absl::Status bad = app_->ReloadRegisterMap(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find(absl::StrCat(path, ":3: profiles.meter.poll[0].every")), std::string::npos) << bad;
  const size_t before = events.Events().size();
  ASSERT_TRUE(WaitFor([&] {
    const auto all = events.Events();
    size_t n = 0;
    for (size_t i = before; i < all.size(); ++i) n += IsPoll(all[i], id) && all[i].data().address() == 4;
    return n >= 2;
  })) << "the old plan must stay in force";
  const std::string metrics = HttpGet("/metrics");
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_register_map_reloads_total{result=\"ok\"}"), 1) << metrics;
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_register_map_reloads_total{result=\"error\"}"), 1) << metrics;
}

}  // namespace
}  // namespace devbridge::testing
