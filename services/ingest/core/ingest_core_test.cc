#include "services/ingest/core/ingest_core.h"

#include "common/status.h"
#include "gtest/gtest.h"
#include "modbus/frame.h"
#include "modbus/payload.h"

namespace devbridge::ingest {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1700000000);

constexpr char kMap[] = R"({
  "profiles": {
    "meter": {"unit": 1, "registers": [
      {"address": 0, "name": "temperature", "type": "int16", "scale": 0.1, "unit": "°C"},
      {"address": 1, "name": "humidity", "type": "uint16", "scale": 0.1, "unit": "%RH"}]},
    "pump": {"unit": 7, "registers": [{"address": 100, "name": "rpm", "type": "uint16"}]}
  },
  "devices": {"*": "meter", "pump-*": "pump"}
})";

std::string ReplyHex(const std::vector<uint16_t>& registers, uint8_t unit = 1) {
  return modbus::ToHex(modbus::BuildReadReply(unit, modbus::kReadHoldingRegisters, registers));
}

class FakeOutputs : public CoreOutputs {
 public:
  void PublishCommand(const std::string& device_id, const std::string& hex, bool /*poll*/) override {
    published.emplace_back(device_id, hex);
  }
  void Store(StoreRecord record) override { stored.push_back(std::move(record)); }
  void Emit(v1::Event event, const std::vector<StreamRef>& streams) override {
    events.push_back(std::move(event));
    event_streams.push_back(streams);
  }

  template <typename T>
  std::vector<T> StoredOf() const {
    std::vector<T> out;
    for (const auto& r : stored) {
      if (auto* p = std::get_if<T>(&r)) out.push_back(*p);
    }
    return out;
  }

  std::vector<std::pair<std::string, std::string>> published;
  std::vector<StoreRecord> stored;
  std::vector<v1::Event> events;
  std::vector<std::vector<StreamRef>> event_streams;
};

class IngestCoreTest : public ::testing::Test {
 protected:
  IngestCoreTest() {
    auto map = regmap::RegisterMap::Parse(kMap, "test");
    EXPECT_TRUE(map.ok()) << map.status();
    CoreOptions options;
    options.command_queue_depth = 2;
    core_ = std::make_unique<IngestCore>(
        options, std::make_shared<regmap::RegisterMap>(*std::move(map)), &out_, &metrics_);
  }

  // Submits and returns a pointer that receives the result when it comes.
  std::shared_ptr<std::optional<v1::CommandResult>> Submit(v1::Command cmd, absl::Time now = t0) {
    auto result = std::make_shared<std::optional<v1::CommandResult>>();
    core_->Submit(std::move(cmd), now, [result](const v1::CommandResult& r) { *result = r; });
    return result;
  }

  static v1::Command Read(const std::string& device, uint32_t address, uint32_t count) {
    v1::Command c;
    c.set_device_id(device);
    c.set_function(3);
    c.set_address(address);
    c.set_count(count);
    c.set_request_id("r1");
    return c;
  }

  static std::string Reply(const std::vector<uint16_t>& registers, uint8_t unit = 1) {
    return modbus::ToHex(modbus::BuildReadReply(unit, modbus::kReadHoldingRegisters, registers));
  }

  common::MetricsRegistry metrics_;
  FakeOutputs out_;
  std::unique_ptr<IngestCore> core_;
};

TEST_F(IngestCoreTest, HeartbeatBringsDeviceOnlineOnceWithMeta) {
  core_->OnMessage("devices/sim-1/heartbeat", R"({"fw":"2.1","rssi":-60})", t0);
  core_->OnMessage("devices/sim-1/heartbeat", "ping", t0 + absl::Seconds(1));
  ASSERT_EQ(out_.events.size(), 1u);
  EXPECT_TRUE(out_.events[0].device_state().online());
  EXPECT_EQ(out_.events[0].device_state().device_id(), "sim-1");
  ASSERT_EQ(out_.event_streams[0].size(), 2u);
  EXPECT_EQ(out_.event_streams[0][0].system_id, "sim-1");
  EXPECT_EQ(out_.event_streams[0][1].system_id, "fleet");
  auto rows = out_.StoredOf<DeviceRecord>();
  ASSERT_FALSE(rows.empty());
  EXPECT_TRUE(rows[0].online);
  bool meta_stored = false;
  for (const auto& r : rows) meta_stored |= r.meta_json == std::string(R"({"fw":"2.1","rssi":-60})");
  EXPECT_TRUE(meta_stored);
  EXPECT_EQ(core_->devices().Find("sim-1")->meta_json, R"({"fw":"2.1","rssi":-60})");
}

TEST_F(IngestCoreTest, SilenceTakesDeviceOfflineUnlessLivenessPaused) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  core_->Tick(t0 + absl::Seconds(91), /*sweep_liveness=*/false);
  EXPECT_TRUE(core_->devices().IsOnline("d"));
  core_->Tick(t0 + absl::Seconds(91));
  EXPECT_FALSE(core_->devices().IsOnline("d"));
  ASSERT_EQ(out_.events.size(), 2u);
  EXPECT_FALSE(out_.events[1].device_state().online());
  EXPECT_FALSE(out_.StoredOf<DeviceRecord>().back().online);
}

TEST_F(IngestCoreTest, ReadCommandRoundTripDecodesValues) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  auto result = Submit(Read("d", 0, 2));
  ASSERT_EQ(out_.published.size(), 1u);
  EXPECT_EQ(out_.published[0].first, "d");
  EXPECT_EQ(out_.published[0].second, "010300000002C40B");
  EXPECT_FALSE(result->has_value());
  core_->OnMessage("devices/d/data", Reply({235, 455}), t0 + absl::Milliseconds(20));
  ASSERT_TRUE(result->has_value());
  const v1::CommandResult& r = **result;
  EXPECT_EQ(r.code(), 200);
  EXPECT_EQ(r.request_id(), "r1");
  EXPECT_TRUE(r.solicited());
  EXPECT_EQ(r.latency_ms(), 20);
  ASSERT_EQ(r.values_size(), 2);
  EXPECT_EQ(r.values(0).name(), "temperature");
  EXPECT_EQ(r.values(0).json_value(), "23.5");
  EXPECT_EQ(r.values(1).unit(), "%RH");
  auto readings = out_.StoredOf<ReadingRecord>();
  ASSERT_EQ(readings.size(), 1u);
  EXPECT_EQ(readings[0].command_id, r.command_id());
  EXPECT_EQ(readings[0].address, 0);
  EXPECT_EQ(readings[0].values_json,
            R"({"temperature":{"value":23.5,"unit":"°C","raw":[235]},"humidity":{"value":45.5,"unit":"%RH","raw":[455]}})");
  auto commands = out_.StoredOf<CommandRecord>();
  ASSERT_EQ(commands.size(), 3u);
  EXPECT_EQ(commands[0].status, "queued");
  EXPECT_EQ(commands[1].status, "sent");
  EXPECT_EQ(commands[2].status, "succeeded");
  EXPECT_EQ(commands[2].code, 200);
  EXPECT_EQ(out_.events.back().data().command_id(), r.command_id());
}

TEST_F(IngestCoreTest, UnitDefaultsToTheProfile) {
  core_->OnMessage("devices/pump-1/heartbeat", "{}", t0);
  auto result = Submit(Read("pump-1", 100, 1));
  EXPECT_EQ(out_.published[0].second.substr(0, 2), "07");
  core_->OnMessage("devices/pump-1/data", Reply({1450}, 7), t0);
  EXPECT_EQ((*result)->values(0).json_value(), "1450");
}

TEST_F(IngestCoreTest, WriteCommandSucceedsOnEcho) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  v1::Command w;
  w.set_device_id("d");
  w.set_function(6);
  w.set_address(1);
  w.add_values(3);
  auto result = Submit(w);
  EXPECT_EQ(out_.published[0].second, "010600010003980B");
  core_->OnMessage("devices/d/data", "01 06 00 01 00 03 98 0B", t0);
  EXPECT_EQ((*result)->code(), 200);
  EXPECT_EQ((*result)->values_size(), 0);
}

TEST_F(IngestCoreTest, FailureCodes) {
  // 2004: unknown, then offline.
  EXPECT_EQ((*Submit(Read("ghost", 0, 1)))->code(), 2004);
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  // 400: bad arguments.
  EXPECT_EQ((*Submit(Read("d", 0, 0)))->code(), 400);
  EXPECT_EQ((*Submit(Read("bad id", 0, 1)))->code(), 400);
  v1::Command long_timeout = Read("d", 0, 1);
  long_timeout.set_timeout_ms(60001);
  EXPECT_EQ((*Submit(long_timeout))->code(), 400);
  // 2001: CRC error in the reply.
  auto crc = Submit(Read("d", 0, 2));
  core_->OnMessage("devices/d/data", "01 03 04 00 0A 00 64 DB DB", t0);
  EXPECT_EQ((*crc)->code(), 2001);
  EXPECT_NE((*crc)->msg().find("CRC mismatch"), std::string::npos);
  // 2006: exception reply.
  auto exc = Submit(Read("d", 50, 1));
  core_->OnMessage("devices/d/data", "01 83 02 C0 F1", t0);
  EXPECT_EQ((*exc)->code(), 2006);
  EXPECT_EQ((*exc)->exception_code(), 2u);
  EXPECT_EQ((*exc)->exception_name(), "illegal data address");
  // 2005: registers read but none mapped.
  auto unmapped = Submit(Read("d", 50, 1));
  core_->OnMessage("devices/d/data", Reply({1}), t0);
  EXPECT_EQ((*unmapped)->code(), 2005);
  // 2002: no reply.
  auto timeout = Submit(Read("d", 0, 1), t0);
  core_->Tick(t0 + absl::Seconds(5));
  EXPECT_EQ((*timeout)->code(), 2002);
  EXPECT_EQ(out_.StoredOf<CommandRecord>().back().status, "timeout");
  // 2003: queue full (depth 2: one in flight, two waiting, the fourth is refused).
  auto a = Submit(Read("d", 0, 1));
  auto b = Submit(Read("d", 0, 1));
  auto c = Submit(Read("d", 0, 1));
  auto d = Submit(Read("d", 0, 1));
  EXPECT_FALSE(a->has_value());
  EXPECT_FALSE(c->has_value());
  EXPECT_EQ((*d)->code(), 2003);
}

TEST_F(IngestCoreTest, QueuedCommandsRunInOrderOneAtATime) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  auto first = Submit(Read("d", 0, 1));
  auto second = Submit(Read("d", 1, 1));
  ASSERT_EQ(out_.published.size(), 1u) << "the second waits for the first";
  core_->OnMessage("devices/d/data", Reply({100}), t0);
  EXPECT_EQ((*first)->values(0).name(), "temperature");
  ASSERT_EQ(out_.published.size(), 2u);
  EXPECT_EQ(out_.published[1].second.substr(0, 8), "01030001");
  core_->OnMessage("devices/d/data", Reply({200}), t0);
  EXPECT_EQ((*second)->values(0).name(), "humidity");
}

TEST_F(IngestCoreTest, TimeoutStartsTheNextCommand) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  v1::Command quick = Read("d", 0, 1);
  quick.set_timeout_ms(100);
  auto first = Submit(quick);
  auto second = Submit(Read("d", 1, 1));
  core_->Tick(t0 + absl::Milliseconds(100));
  EXPECT_EQ((*first)->code(), 2002);
  EXPECT_EQ(out_.published.size(), 2u);
  EXPECT_FALSE(second->has_value());
}

TEST_F(IngestCoreTest, OfflineFailsQueuedCommands) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  v1::Command slow = Read("d", 0, 1);
  slow.set_timeout_ms(60000);
  auto pending = Submit(slow, t0 + absl::Seconds(50));
  core_->Tick(t0 + absl::Seconds(91));
  EXPECT_EQ((*pending)->code(), 2004);
}

TEST_F(IngestCoreTest, ReleasedDevicesAreDroppedSilentlyAndTheirCommandsFail) {
  core_->OnMessage("devices/moved/heartbeat", "{}", t0);
  core_->OnMessage("devices/kept/heartbeat", "{}", t0);
  auto pending = Submit(Read("moved", 0, 1));
  const size_t events = out_.events.size();
  core_->Release([](absl::string_view id) { return id == "moved"; }, t0 + absl::Seconds(1), "partition moved");
  ASSERT_TRUE(pending->has_value());
  EXPECT_EQ((*pending)->code(), 503);
  EXPECT_EQ((*pending)->msg(), "partition moved");
  EXPECT_EQ(core_->devices().Find("moved"), nullptr);
  EXPECT_NE(core_->devices().Find("kept"), nullptr);
  EXPECT_EQ(core_->devices().online_count(), 1u);
  // No device.offline for the moved one: its new owner carries on (only the command's result).
  for (size_t i = events; i < out_.events.size(); ++i) EXPECT_FALSE(out_.events[i].has_device_state()) << i;
  // Its silence is no longer ours to judge.
  core_->Tick(t0 + absl::Seconds(200));
  for (size_t i = events; i < out_.events.size(); ++i) {
    if (out_.events[i].has_device_state()) {
      EXPECT_EQ(out_.events[i].device_state().device_id(), "kept");
    }
  }
}

TEST_F(IngestCoreTest, UnsolicitedDataIsStoredAndEmitted) {
  core_->OnMessage("devices/d/data", Reply({235, 455}), t0);
  ASSERT_EQ(out_.events.size(), 2u);  // online, then data
  const v1::CommandResult& data = out_.events[1].data();
  EXPECT_FALSE(data.solicited());
  EXPECT_EQ(data.code(), 200);
  EXPECT_EQ(data.values(0).json_value(), "23.5");
  auto readings = out_.StoredOf<ReadingRecord>();
  ASSERT_EQ(readings.size(), 1u);
  EXPECT_TRUE(readings[0].command_id.empty());
}

TEST_F(IngestCoreTest, GarbageIsCountedAndDropped) {
  core_->OnMessage("devices/d/data", "zz", t0);
  core_->OnMessage("devices/d/data", "", t0);
  core_->OnMessage("devices/d/data", "01 03 04 00 0A 00 64 DB DB", t0);
  core_->OnMessage("devices/d/data", std::string(1 << 20, 'A'), t0);
  core_->OnMessage("devices/bad id/data", "01", t0);
  core_->OnMessage("devices/" + std::string(65, 'x') + "/heartbeat", "{}", t0);
  core_->OnMessage("devices/d/heartbeat", std::string(5000, '{'), t0);
  core_->OnMessage("other/d/data", "01", t0);
  core_->OnMessage("devices/d/status", "01", t0);
  core_->OnMessage("devices/data", "01", t0);
  EXPECT_TRUE(out_.StoredOf<ReadingRecord>().empty());
  const std::string metrics = metrics_.Render();
  EXPECT_NE(metrics.find("devbridge_ingest_frames_bad_total{kind=\"hex\"} 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("devbridge_ingest_frames_bad_total{kind=\"crc\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("devbridge_ingest_messages_dropped_total{reason=\"oversize\"} 2"), std::string::npos);
  EXPECT_NE(metrics.find("devbridge_ingest_messages_dropped_total{reason=\"invalid_id\"} 2"), std::string::npos);
  EXPECT_NE(metrics.find("devbridge_ingest_messages_dropped_total{reason=\"unknown_topic\"} 3"), std::string::npos);
}

TEST_F(IngestCoreTest, HeartbeatMetaThatPostgresCannotHoldIsRefusedButCountsForLiveness) {
  core_->OnMessage("devices/d/heartbeat", R"({"fw":"\u0000"})", t0);
  // 100 levels: within the 4 KiB a heartbeat may have, past the 64 JSON may nest.
  core_->OnMessage("devices/e/heartbeat", R"({"fw":)" + std::string(100, '[') + std::string(100, ']') + "}", t0);
  core_->OnMessage("devices/f/heartbeat", "{\"fw\":\"\xff\xfe\"}", t0);  // not UTF-8: not JSON
  for (const char* id : {"d", "e", "f"}) ASSERT_NE(core_->devices().Find(id), nullptr) << id;
  EXPECT_TRUE(core_->devices().Find("d")->online);
  EXPECT_EQ(core_->devices().Find("d")->meta_json, "");
  EXPECT_EQ(core_->devices().Find("e")->meta_json, "") << "nested past 64 levels: no meta";
  EXPECT_EQ(core_->devices().Find("f")->meta_json, "");
  for (const auto& r : out_.StoredOf<DeviceRecord>()) {
    if (r.meta_json) {
      EXPECT_EQ(r.meta_json->find("\\u0000"), std::string::npos) << *r.meta_json;
    }
  }
  EXPECT_NE(metrics_.Render().find("devbridge_ingest_heartbeat_meta_refused_total 1"), std::string::npos);
}

TEST_F(IngestCoreTest, NonsenseUnsolicitedFramesAreNotStored) {
  auto frame = [](std::vector<uint8_t> bytes) {
    modbus::AppendCrc(bytes);
    return modbus::ToHex(bytes);
  };
  core_->OnMessage("devices/d/data", frame({0x01, 0x03, 0x00}), t0);  // a read reply of no registers
  core_->OnMessage("devices/d/data", frame({0x01, 0x10, 0x00, 0x00, 0xFF, 0xFF}), t0);  // wrote 65535 registers
  core_->OnMessage("devices/d/data", frame({0xFF, 0x03, 0x02, 0x00, 0x01}), t0);        // unit 255
  core_->OnMessage("devices/d/data", frame({0x07, 0x03, 0x02, 0x00, 0x01}), t0);        // unit 7: not d's meter
  core_->OnMessage("devices/pump-1/data", frame({0x07, 0x03, 0x02, 0x00, 0x01}), t0);   // unit 7: the pump's
  ASSERT_EQ(out_.StoredOf<ReadingRecord>().size(), 1u);
  EXPECT_EQ(out_.StoredOf<ReadingRecord>()[0].device_id, "pump-1");
  const std::string metrics = metrics_.Render();
  EXPECT_NE(metrics.find("devbridge_ingest_frames_bad_total{kind=\"malformed\"} 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("devbridge_ingest_frames_bad_total{kind=\"mismatch\"} 1"), std::string::npos) << metrics;
}

TEST_F(IngestCoreTest, FailAllAtShutdown) {
  core_->OnMessage("devices/d/heartbeat", "{}", t0);
  auto a = Submit(Read("d", 0, 1));
  auto b = Submit(Read("d", 0, 1));
  core_->FailAll(t0, "ingest is shutting down");
  EXPECT_EQ((*a)->code(), 503);
  EXPECT_EQ((*b)->msg(), "ingest is shutting down");
  EXPECT_EQ(core_->commands().total(), 0u);
}

TEST(ValuesJson, EscapesNames) {
  regmap::Register reg;
  reg.name = "a\"b";
  reg.unit = "\\";
  regmap::DecodedValue v;
  v.reg = &reg;
  v.value.kind = regmap::Value::kInt;
  v.value.i = -1;
  v.raw_count = 1;
  v.raw[0] = 65535;
  EXPECT_EQ(ValuesJson({v}), R"({"a\"b":{"value":-1,"unit":"\\","raw":[65535]}})");
  EXPECT_EQ(ValuesJson({}), "{}");
}

TEST(BadFrameKind, Classifies) {
  EXPECT_EQ(BadFrameKind(absl::InvalidArgumentError("CRC mismatch: x")), "crc");
  EXPECT_EQ(BadFrameKind(absl::InvalidArgumentError("bad hex text: 'z'")), "hex");
  EXPECT_EQ(BadFrameKind(absl::InvalidArgumentError("unit mismatch: x")), "mismatch");
  EXPECT_EQ(BadFrameKind(absl::InvalidArgumentError("frame too short")), "malformed");
}

// Polling plans (CONTRACT §10.4), driven by an injected clock.
class PollingTest : public ::testing::Test {
 protected:
  static constexpr char kPollMap[] = R"({
    "profiles": {
      "meter": {"unit": 1, "registers": [
        {"address": 0, "name": "temperature", "type": "int16", "scale": 0.1, "unit": "°C"},
        {"address": 1, "name": "humidity", "type": "uint16", "scale": 0.1, "unit": "%RH"}],
        "poll": [{"address": 0, "count": 1, "every": "1s"}, {"address": 1, "count": 1, "every": "1s"}]}
    },
    "devices": {"quiet": {"profile": "meter", "poll": []}, "*": "meter"}
  })";

  PollingTest() {
    CoreOptions options;
    options.command_timeout = absl::Milliseconds(300);
    options.poll_failures = 2;
    core_ = std::make_unique<IngestCore>(options, Map(kPollMap), &out_, &metrics_);
  }

  static std::shared_ptr<const regmap::RegisterMap> Map(const char* json) {
    auto map = regmap::RegisterMap::Parse(json, "test");
    EXPECT_TRUE(map.ok()) << map.status();
    return std::make_shared<regmap::RegisterMap>(*std::move(map));
  }

  // Runs the clock in 10 ms steps until something is published or `limit` passes.
  bool RunUntilPublished(absl::Time* now, absl::Duration limit = absl::Seconds(2)) {
    const size_t before = out_.published.size();
    for (const absl::Time end = *now + limit; *now < end; *now += absl::Milliseconds(10)) {
      core_->RunPolls(*now);
      core_->ExpireCommands(*now);
      if (out_.published.size() > before) return true;
    }
    return false;
  }

  std::vector<v1::Event> EventsOf(bool (v1::Event::*has)() const) const {
    std::vector<v1::Event> out;
    for (const auto& e : out_.events) {
      if ((e.*has)()) out.push_back(e);
    }
    return out;
  }

  common::MetricsRegistry metrics_;
  FakeOutputs out_;
  std::unique_ptr<IngestCore> core_;
};

TEST_F(PollingTest, PollsAnOnlineDeviceReadingContiguousBlocksInOneRequest) {
  absl::Time now = t0;
  core_->OnHeartbeat("m-1", "{}", now);
  core_->OnHeartbeat("quiet", "{}", now);
  ASSERT_TRUE(RunUntilPublished(&now));
  ASSERT_EQ(out_.published.size(), 1u) << "one device polled; the other's plan is []";
  EXPECT_EQ(out_.published[0].first, "m-1");
  EXPECT_EQ(out_.published[0].second, "010300000002C40B") << "registers 0 and 1 in one read";
  core_->OnData("m-1", ReplyHex({235, 410}), now + absl::Milliseconds(5));
  auto data = EventsOf(&v1::Event::has_data);
  ASSERT_EQ(data.size(), 1u);
  EXPECT_TRUE(data[0].data().poll());
  EXPECT_TRUE(data[0].data().solicited());
  EXPECT_EQ(data[0].data().code(), 200);
  EXPECT_EQ(data[0].data().values_size(), 2);
  EXPECT_TRUE(data[0].data().command_id().empty());
  auto readings = out_.StoredOf<ReadingRecord>();
  ASSERT_EQ(readings.size(), 1u);
  EXPECT_TRUE(readings[0].command_id.empty()) << "stored with command_id null";
  EXPECT_TRUE(out_.StoredOf<CommandRecord>().empty()) << "polls are not rows of commands";
  // The next one a second later.
  const absl::Time first = now;
  ASSERT_TRUE(RunUntilPublished(&now));
  EXPECT_EQ(now - first, absl::Seconds(1));
}

TEST_F(PollingTest, AUsersCommandGoesBeforeAWaitingPoll) {
  absl::Time now = t0;
  core_->OnHeartbeat("m-1", "{}", now);
  // A user's command is in flight when the poll falls due: the poll waits behind it.
  absl::Time due = now;
  ASSERT_TRUE(RunUntilPublished(&due));
  core_->OnData("m-1", ReplyHex({1, 2}), due);
  now = due + absl::Milliseconds(900);
  v1::Command c;
  c.set_device_id("m-1");
  c.set_function(3);
  c.set_address(0);
  c.set_count(1);
  core_->Submit(c, now, nullptr);
  const size_t before = out_.published.size();
  for (; now < due + absl::Milliseconds(1100); now += absl::Milliseconds(10)) core_->RunPolls(now);
  EXPECT_EQ(out_.published.size(), before) << "the poll waits while the user's command is in flight";
  core_->Submit(c, now, nullptr);  // a second user's command waits too...
  core_->OnData("m-1", ReplyHex({5}), now);
  ASSERT_EQ(out_.published.size(), before + 1);
  EXPECT_EQ(out_.published.back().second, "010300000001840A") << "...and goes before the poll queued earlier";
  core_->OnData("m-1", ReplyHex({6}), now);
  ASSERT_EQ(out_.published.size(), before + 2);
  EXPECT_EQ(out_.published.back().second, "010300000002C40B") << "then the poll";
}

TEST_F(PollingTest, UnresponsiveAfterFailuresStaysOnlineAndComesBack) {
  absl::Time now = t0;
  core_->OnHeartbeat("m-1", "{}", now);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(RunUntilPublished(&now));
    now += absl::Milliseconds(300);
    core_->ExpireCommands(now);  // no reply
  }
  auto changes = EventsOf(&v1::Event::has_responsive);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(changes[0].responsive().responsive());
  EXPECT_EQ(changes[0].responsive().failures(), 2u);
  EXPECT_EQ(changes[0].responsive().backoff_ms(), 2000);
  EXPECT_TRUE(core_->devices().IsOnline("m-1")) << "unresponsive is not offline";
  EXPECT_TRUE(core_->polls().Find("m-1")->unresponsive);
  EXPECT_TRUE(EventsOf(&v1::Event::has_data).empty()) << "silence is not shown as data";
  // The probe comes after the back-off, and a reply brings the device back.
  const absl::Time failed = now;
  ASSERT_TRUE(RunUntilPublished(&now, absl::Seconds(3)));
  EXPECT_GE(now - failed, absl::Seconds(2) - absl::Milliseconds(10));
  core_->OnData("m-1", ReplyHex({1, 2}), now);
  changes = EventsOf(&v1::Event::has_responsive);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_TRUE(changes[1].responsive().responsive());
  EXPECT_FALSE(core_->polls().Find("m-1")->unresponsive);
}

TEST_F(PollingTest, OfflineStopsPollingAndANewMapChangesPlansAtOnce) {
  absl::Time now = t0;
  core_->OnHeartbeat("m-1", "{}", now);
  ASSERT_TRUE(RunUntilPublished(&now));
  core_->OnData("m-1", ReplyHex({1, 2}), now);
  core_->SetRegisterMap(Map(R"({"profiles": {"meter": {"unit": 3, "registers": [
      {"address": 0, "name": "t", "type": "int16"}], "poll": [{"address": 0, "count": 1, "every": "200ms"}]}},
      "devices": {"*": "meter"}})"), now);
  const absl::Time reloaded = now;
  ASSERT_TRUE(RunUntilPublished(&now));
  EXPECT_LE(now - reloaded, absl::Milliseconds(200));
  EXPECT_EQ(out_.published.back().second.substr(0, 12), "030300000001") << "unit 3, one register";
  core_->SetRegisterMap(Map(R"({"profiles": {"meter": {"registers": []}}, "devices": {"*": "meter"}})"), now);
  EXPECT_EQ(core_->polls().size(), 0u);
  core_->SetRegisterMap(Map(kPollMap), now);
  EXPECT_EQ(core_->polls().size(), 1u);
  core_->Tick(now + absl::Seconds(91));  // heartbeat_timeout: offline
  EXPECT_FALSE(core_->devices().IsOnline("m-1"));
  EXPECT_EQ(core_->polls().size(), 0u);
  EXPECT_TRUE(core_->commands().Devices().empty());
}

}  // namespace
}  // namespace devbridge::ingest
