// devbridge-ingest against a real mosquitto and PostgreSQL, with simulated devices.
#include <algorithm>
#include <climits>
#include <future>

#include "absl/strings/str_cat.h"
#include "common/uuid.h"
#include "modbus/frame.h"
#include "modbus/payload.h"
#include "tests/component/ingest_fixture.h"
#include "tests/component/tcp_proxy.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

bool IsState(const v1::Event& e, const std::string& id, bool online) {
  return e.has_device_state() && e.device_state().device_id() == id && e.device_state().online() == online;
}

class IngestTest : public IngestFixture {
 protected:
  void OutageLosesNothing(size_t spool_max_bytes, bool expect_pushback);
};

TEST_F(IngestTest, HeartbeatBringsDeviceOnlineAndSilenceTakesItOffline) {
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSim();
  const std::string id = sim->DeviceId(0);
  v1::Event online = events.WaitFor([&](const v1::Event& e) { return IsState(e, id, true); });
  ASSERT_TRUE(online.has_device_state()) << "no device.online event";
  ASSERT_EQ(online.streams_size(), 2);
  EXPECT_EQ(online.streams(0).system_id(), id);
  EXPECT_EQ(online.streams(1).system_id(), "fleet");
  EXPECT_TRUE(WaitFor([&] {
    return Count("SELECT count(*) FROM devices WHERE online AND meta->>'fw' = 'sim-1.0' AND device_id = '" + id + "'") == 1;
  })) << "devices row not online with meta";

  grpc::ClientContext ctx;
  v1::ListDevicesResponse list;
  ASSERT_TRUE(stub_->ListDevices(&ctx, {}, &list).ok());
  ASSERT_EQ(list.devices_size(), 1);
  EXPECT_TRUE(list.devices(0).online());

  sim->SetSilent(0, true);
  v1::Event offline = events.WaitFor([&](const v1::Event& e) { return IsState(e, id, false); });
  EXPECT_TRUE(offline.has_device_state()) << "no device.offline event after heartbeat_timeout";
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE NOT online") == 1; }));
}

// Devices and ingest on MQTT 3.1 and on MQTT 5 (ingest's kept session then has a session
// expiry interval, and its subscriptions are shared ones, `$share/GROUP/...`, which MQTT 5
// standardised): readings and a command round trip, as with 3.1.1. The MQTT 5 run is a new
// session: a kept session would keep the 3.1 run's plain subscriptions beside the shared
// ones, and the broker would deliver every message twice (README, shared_group).
TEST_F(IngestTest, Mqtt31And5CarryReadingsAndCommands) {
  for (const char* version : {"3.1", "5"}) {
    SCOPED_TRACE(version);
    const int level = *mqtt::ParseVersion(version);
    StartIngest([&](ingest::IngestOptions& o) {
      o.mqtt_transport.version = level;
      if (level == 5) {
        o.shared_group = "ingest";
        o.mqtt_client_id += "-v5";
      }
    });
    auto sim = StartSim([&](sim::SimOptions& o) { o.mqtt_transport.version = level; });
    const int64_t before = Count("SELECT count(*) FROM readings");
    for (int i = 0; i < 3; ++i) EXPECT_EQ(Dispatch(Read(sim->DeviceId(0), 0, 2)).code(), 200);
    EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") == before + 3; }));
    sim->Stop();
    StopIngest();
  }
}

TEST_F(IngestTest, ReadCommandRoundTripsThroughTheDevice) {
  StartIngest();
  EventCollector events(stub_.get(), {});
  auto sim = StartSim();
  const std::string id = sim->DeviceId(0);
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 1; }));

  v1::Command read = Read(id, 0, 12);
  v1::CommandResult r = Dispatch(read);
  EXPECT_EQ(r.code(), 200) << r.msg();
  EXPECT_EQ(r.request_id(), read.request_id());
  EXPECT_TRUE(common::IsUuid(r.command_id()));
  EXPECT_EQ(r.request(), std::string("\x01\x03\x00\x00\x00\x0c\x45\xcf", 8));
  ASSERT_EQ(r.values_size(), 9);
  EXPECT_EQ(r.values(0).name(), "temperature");
  EXPECT_EQ(r.values(0).unit(), "°C");
  const double temperature = std::stod(r.values(0).json_value());
  EXPECT_GT(temperature, 15);
  EXPECT_LT(temperature, 27);

  v1::Event result = events.WaitFor([&](const v1::Event& e) { return e.has_data() && e.data().command_id() == r.command_id(); });
  EXPECT_TRUE(result.data().solicited());
  EXPECT_TRUE(WaitFor([&] {
    return Count("SELECT count(*) FROM commands WHERE status = 'succeeded' AND code = 200 AND command_id = '" +
                 r.command_id() + "'") == 1 &&
           Count("SELECT count(*) FROM readings WHERE address = 0 AND \"values\" ? 'temperature' AND command_id = '" +
                 r.command_id() + "'") == 1;
  })) << "commands/readings rows missing";

  v1::Command write;
  write.set_device_id(id);
  write.set_function(6);
  write.set_address(11);
  write.add_values(250);
  EXPECT_EQ(Dispatch(write).code(), 200);
  v1::CommandResult setpoint = Dispatch(Read(id, 11, 1));
  ASSERT_EQ(setpoint.values_size(), 1);
  EXPECT_EQ(setpoint.values(0).json_value(), "25") << "the write stuck";

  grpc::ClientContext ctx;
  v1::GetReadingsRequest req;
  req.set_device_id(id);
  v1::GetReadingsResponse readings;
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= 2; }));
  ASSERT_TRUE(stub_->GetReadings(&ctx, req, &readings).ok());
  ASSERT_GE(readings.readings_size(), 2);
  bool has_temperature = false;  // jsonb keeps its own key order
  for (const auto& v : readings.readings(0).values()) has_temperature |= v.name() == "temperature";
  EXPECT_TRUE(has_temperature);
}

TEST_F(IngestTest, EachFailureCode) {
  StartIngest([](ingest::IngestOptions& o) { o.command_queue_depth = 2; });
  auto good = StartSim();
  auto crc = StartSim([](sim::SimOptions& o) { o.id_prefix = "crc-"; o.crc_error_rate = 1; });
  auto mute = StartSim([](sim::SimOptions& o) { o.id_prefix = "mute-"; o.drop_rate = 1; });
  auto slow = StartSim([](sim::SimOptions& o) { o.id_prefix = "slow-"; o.reply_delay = absl::Milliseconds(300); });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 4; }));

  EXPECT_EQ(Dispatch(Read("nobody", 0, 1)).code(), 2004);
  v1::CommandResult bad = Dispatch(Read(good->DeviceId(0), 0, 200));
  EXPECT_EQ(bad.code(), 400);
  EXPECT_NE(bad.msg().find("count"), std::string::npos) << bad.msg();
  v1::CommandResult frame_error = Dispatch(Read(crc->DeviceId(0), 0, 1));
  EXPECT_EQ(frame_error.code(), 2001);
  EXPECT_NE(frame_error.msg().find("CRC"), std::string::npos) << frame_error.msg();
  v1::Command quick = Read(mute->DeviceId(0), 0, 1);
  quick.set_timeout_ms(300);
  EXPECT_EQ(Dispatch(quick).code(), 2002);
  v1::CommandResult exception = Dispatch(Read(good->DeviceId(0), 500, 1));
  EXPECT_EQ(exception.code(), 2006);
  EXPECT_EQ(exception.exception_code(), 2u);
  EXPECT_EQ(exception.exception_name(), "illegal data address");

  // 2003: one in flight at the slow device, two waiting, so of five at once at least one is refused.
  std::vector<std::future<v1::CommandResult>> pending;
  for (int i = 0; i < 5; ++i) {
    pending.push_back(std::async(std::launch::async, [&] { return Dispatch(Read(slow->DeviceId(0), 0, 1)); }));
  }
  int full = 0, ok = 0;
  for (auto& f : pending) {
    const int code = f.get().code();
    full += code == 2003;
    ok += code == 200;
  }
  EXPECT_GE(full, 1);
  EXPECT_GE(ok, 3);
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM commands WHERE status = 'timeout' AND code = 2002") == 1; }));
}

TEST_F(IngestTest, RegistersOutsideTheMapAre2005) {
  // Ingest knows only temperature; the device answers everything.
  auto narrow = regmap::RegisterMap::Parse(
      R"({"profiles":{"p":{"registers":[{"address":0,"name":"temperature","type":"int16"}]}},"devices":{"*":"p"}})",
      "narrow");
  ASSERT_TRUE(narrow.ok());
  auto ingest_map = std::make_shared<const regmap::RegisterMap>(*std::move(narrow));
  StartIngest([&](ingest::IngestOptions& o) { o.register_map = ingest_map; });
  auto sim = StartSim();
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 1; }));
  v1::CommandResult r = Dispatch(Read(sim->DeviceId(0), 4, 2));
  EXPECT_EQ(r.code(), 2005) << r.msg();
  EXPECT_EQ(r.values_size(), 0);
}

TEST_F(IngestTest, CommandsToOneDeviceRunInOrderOneAtATime) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.reply_delay = absl::Milliseconds(50); });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 1; }));
  std::vector<std::future<v1::CommandResult>> pending;
  for (int i = 0; i < 6; ++i) {
    pending.push_back(std::async(std::launch::async, [&] { return Dispatch(Read(sim->DeviceId(0), 0, 1)); }));
  }
  for (auto& f : pending) EXPECT_EQ(f.get().code(), 200);
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM commands WHERE status = 'succeeded'") == 6; }));
  // FIFO and half duplex: ordered by when ingest took them, each completes after the one
  // before, and none was sent before the previous one completed.
  EXPECT_EQ(Count("SELECT count(*) FROM (SELECT completed_at < lag(completed_at) OVER (ORDER BY requested_at) AS out_of_order"
                  " FROM commands) x WHERE out_of_order"),
            0);
  auto span = Count("SELECT (extract(epoch from max(completed_at) - min(requested_at)) * 1000)::bigint FROM commands");
  EXPECT_GE(span, 6 * 50) << "six 50 ms replies cannot overlap on a half-duplex line";
}

TEST_F(IngestTest, BrokerRestartLosesNothing) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.data_interval = absl::Milliseconds(20); });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= 10; }));
  // Quiet the device until everything it sent is stored, so no frame is in flight between it
  // and the broker when the broker stops: the simulator's clean session would drop such a
  // frame on its side, which says nothing about ingest (this flaked when the broker stopped
  // during the burst the simulator sends on its first connect).
  sim->SetSilent(0, true);
  ASSERT_TRUE(WaitFor([&] {
    return Count("SELECT count(*) FROM readings") == static_cast<int64_t>(sim->stats().data_frames.load());
  }));
  ASSERT_TRUE(Harness("stop-mqtt"));
  int status = 0;
  EXPECT_TRUE(WaitFor([&] { HttpGet("/healthz", &status); return status == 503; })) << "healthz must say the broker is down";
  sim->SetSilent(0, false);
  absl::SleepFor(absl::Milliseconds(500));  // let the sim buffer frames while the broker is away
  ASSERT_TRUE(Harness("start-mqtt"));
  EXPECT_TRUE(WaitFor([&] { return HttpGet("/healthz").rfind("ok", 0) == 0; }, absl::Seconds(20)));
  const int64_t before = Count("SELECT count(*) FROM readings");
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") > before + 10; }, absl::Seconds(20)))
      << "no frames after the broker came back: not resubscribed?";
  sim->Stop();
  const uint64_t published = sim->stats().data_frames.load();
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") == static_cast<int64_t>(published); },
                      absl::Seconds(20)))
      << "published " << published << ", stored " << Count("SELECT count(*) FROM readings");
  // Frames from the simulator are unique (its voltage moves every frame), so this also says
  // that QoS 1 redeliveries after the restart were not stored twice.
  EXPECT_EQ(Count("SELECT count(DISTINCT raw) FROM readings"), static_cast<int64_t>(published));
}

// A PostgreSQL outage through the stages that take it: the spool on disk, then (when the
// spool is full, or without one) the broker. `spool_max_bytes` 0: no spool.
void IngestTest::OutageLosesNothing(size_t spool_max_bytes, bool expect_pushback) {
  StartIngest([&](ingest::IngestOptions& o) {
    o.db_queue_bytes = 16 * 1024;
    o.max_pending_messages = 32;
    if (spool_max_bytes == 0) {
      o.spool_dir = "none";
    } else {
      o.spool_max_bytes = spool_max_bytes;
    }
  });
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 5;
    o.data_interval = absl::Milliseconds(20);
  });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= 10; }));
  ASSERT_TRUE(Harness("stop-pg"));
  int status = 0;
  EXPECT_TRUE(WaitFor([&] { HttpGet("/healthz", &status); return status == 503; }, absl::Seconds(15)));
  const uint64_t during = sim->stats().data_frames.load();
  ASSERT_TRUE(WaitFor([&] { return sim->stats().data_frames.load() > during + 200; }));
  ASSERT_TRUE(Harness("start-pg"));
  sim->Stop();
  const uint64_t published = sim->stats().data_frames.load();
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") == static_cast<int64_t>(published); },
                      absl::Seconds(30)))
      << "published " << published << ", stored " << Count("SELECT count(*) FROM readings");
  EXPECT_EQ(Count("SELECT count(DISTINCT raw) FROM readings"), static_cast<int64_t>(published)) << "none twice";
  const std::string metrics = HttpGet("/metrics");
  if (expect_pushback) {
    EXPECT_EQ(metrics.find("devbridge_ingest_pushbacks_total 0\n"), std::string::npos)
        << "intake never pushed back:\n" << metrics;
  } else {
    EXPECT_NE(metrics.find("devbridge_ingest_pushbacks_total 0\n"), std::string::npos)
        << "the spool should have taken the outage without the broker:\n" << metrics;
    EXPECT_EQ(metrics.find("devbridge_ingest_spool_read_total 0\n"), std::string::npos)
        << "messages should have waited on disk:\n" << metrics;
  }
}

TEST_F(IngestTest, DatabaseOutageRidesOnTheSpool) { OutageLosesNothing(size_t{64} << 20, false); }

TEST_F(IngestTest, DatabaseOutageWithAFullSpoolPausesIntake) {
  OutageLosesNothing(16 * 1024, true);
  EXPECT_NE(HttpGet("/metrics").find("devbridge_ingest_spool_full"), std::string::npos);
}

TEST_F(IngestTest, DatabaseOutageWithoutASpoolLeavesTheRestToTheBroker) { OutageLosesNothing(0, true); }

TEST_F(IngestTest, WhatPostgresDidNotTakeBeforeShutdownIsWrittenAtTheNextStart) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 5;
    o.data_interval = absl::Milliseconds(20);
  });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= 10; }));
  ASSERT_TRUE(Harness("stop-pg"));
  const uint64_t during = sim->stats().data_frames.load();
  ASSERT_TRUE(WaitFor([&] { return sim->stats().data_frames.load() > during + 100; }));
  sim->Stop();
  const uint64_t published = sim->stats().data_frames.load();
  StopIngest();  // PostgreSQL is down: what it did not take stays in the spool
  ASSERT_TRUE(Harness("start-pg"));
  StartIngest();
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") == static_cast<int64_t>(published); },
                      absl::Seconds(30)))
      << "published " << published << ", stored " << Count("SELECT count(*) FROM readings");
  EXPECT_EQ(Count("SELECT count(DISTINCT raw) FROM readings"), static_cast<int64_t>(published)) << "none twice";
  EXPECT_EQ(HttpGet("/metrics").find("devbridge_ingest_spool_read_total 0\n"), std::string::npos)
      << "the spool was replayed";
}

// What a run took but the broker never saw acknowledged (the PUBACKs were lost with the
// connection, as when Paho still queued them at a stop under load) comes again after a
// restart, flagged DUP, to the same session. The spool remembers the last messages by packet
// id, so none is stored twice; messages only equal in content would still be taken.
TEST_F(IngestTest, RedeliveriesOfWhatTheLastRunTookAreNotStoredTwice) {
  TcpProxy proxy(MqttPort());
  StartIngest([&](ingest::IngestOptions& o) { o.mqtt_url = absl::StrCat("tcp://127.0.0.1:", proxy.port()); });
  ASSERT_TRUE(WaitFor([&] { return HttpGet("/healthz").rfind("ok", 0) == 0; }));
  proxy.DropRequests(true);  // ingest's PUBACKs (and its DISCONNECT) never reach the broker
  constexpr int kFrames = 40;
  for (int i = 0; i < kFrames; ++i) {
    const std::vector<uint16_t> regs = {static_cast<uint16_t>(i)};
    PublishRaw(absl::StrCat("dev-", i % 4, "/data"), modbus::ToHex(modbus::BuildReadReply(1, 3, regs)));
  }
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") == kFrames; }));
  StopIngest();
  StartIngest();  // straight to the broker: the same client id and spool
  EXPECT_TRUE(WaitFor([&] {
    return MetricValue(HttpGet("/metrics"), "devbridge_ingest_mqtt_duplicates_dropped") == kFrames;
  })) << "the broker should have redelivered all " << kFrames << ":\n" << HttpGet("/metrics");
  EXPECT_EQ(MetricValue(HttpGet("/metrics"), "devbridge_ingest_mqtt_dup_flagged"), kFrames);
  // One more message through the new session: once it is stored, so is anything before it.
  PublishRaw("dev-0/data", modbus::ToHex(modbus::BuildReadReply(1, 3, std::vector<uint16_t>{999})));
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= kFrames + 1; }));
  EXPECT_EQ(Count("SELECT count(*) FROM readings"), kFrames + 1);
}

TEST_F(IngestTest, EventStreamResumesWithoutLossOrDuplicates) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.data_interval = absl::Milliseconds(10); });
  uint64_t last_seq = 0;
  std::string epoch;
  {
    EventCollector first(stub_.get(), {});
    ASSERT_TRUE(WaitFor([&] { return first.Events().size() >= 20; }));
    first.Stop();
    auto seen = first.Events();
    last_seq = seen.back().seq();
    epoch = seen.back().epoch();
  }
  absl::SleepFor(absl::Milliseconds(200));  // events keep coming while nobody listens
  v1::SubscribeRequest resume;
  resume.set_node_id("test");
  resume.set_resume_epoch(epoch);
  resume.set_resume_after_seq(last_seq);
  EventCollector second(stub_.get(), resume);
  ASSERT_TRUE(WaitFor([&] { return second.Events().size() >= 30; }));
  auto events = second.Events();
  EXPECT_FALSE(events[0].has_reset());
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), last_seq + 1 + i) << "gap or duplicate at " << i;
  }

  v1::SubscribeRequest stale;
  stale.set_resume_epoch("gone");
  stale.set_resume_after_seq(5);
  EventCollector third(stub_.get(), stale);
  v1::Event reset = third.WaitFor([](const v1::Event& e) { return e.has_reset(); });
  ASSERT_TRUE(reset.has_reset()) << "a stale resume must be told plainly";
  EXPECT_NE(reset.reset().reason().find("epoch gone is over"), std::string::npos);
  EXPECT_EQ(third.Events()[0].has_reset(), true) << "the reset comes first";
}

TEST_F(IngestTest, PublishSequencesPushMessagesWithStreamOffsets) {
  StartIngest();
  // From the oldest event held: the subscription may start after the publishes below (it did
  // under load, and the test waited for an event it had missed).
  v1::SubscribeRequest from_oldest;
  from_oldest.set_from_oldest(true);
  EventCollector events(stub_.get(), from_oldest);
  v1::PushMessage m;
  m.set_kind(v1::PushMessage::SEND_TO_GROUP);
  m.set_system_id("fleet");
  m.set_group_name("ops");
  m.set_data(R"({"x":1})");
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext ctx;
    v1::PublishResponse resp;
    ASSERT_TRUE(stub_->Publish(&ctx, m, &resp).ok());
  }
  v1::Event second = events.WaitFor([](const v1::Event& e) {
    return e.has_push() && e.streams_size() == 1 && e.streams(0).offset() == 2;
  });
  ASSERT_TRUE(second.has_push());
  EXPECT_EQ(second.streams(0).group_name(), "ops");
  grpc::ClientContext ctx;
  v1::PublishResponse resp;
  m.set_system_id("bad id");
  EXPECT_EQ(stub_->Publish(&ctx, m, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(IngestTest, PublishRefusesWhatAReplicaCouldNotApply) {
  StartIngest();
  auto refused = [&](const std::function<void(v1::PushMessage&)>& adjust) {
    v1::PushMessage m;
    m.set_kind(v1::PushMessage::SEND_TO_SYSTEM);
    m.set_system_id("fleet");
    m.set_origin_node("node-a");
    m.set_data(R"({"ok":1})");
    adjust(m);
    grpc::ClientContext ctx;
    v1::PublishResponse resp;
    return stub_->Publish(&ctx, m, &resp).error_code();
  };
  EXPECT_EQ(refused([](v1::PushMessage&) {}), grpc::StatusCode::OK);
  EXPECT_EQ(refused([](v1::PushMessage& m) { m.set_data(R"({"a":)"); }), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused([](v1::PushMessage& m) { m.set_data(R"(1,"type":"device.online")"); }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused([](v1::PushMessage& m) { m.set_data(std::string(100000, '[')); }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused([](v1::PushMessage& m) {
              m.set_kind(v1::PushMessage::NODE_SNAPSHOT);
              m.set_data("[1]");
            }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused([](v1::PushMessage& m) { m.set_kind(static_cast<v1::PushMessage::Kind>(77)); }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(refused([](v1::PushMessage& m) { m.set_kind(v1::PushMessage::CLOSE_CLIENT); }),
            grpc::StatusCode::INVALID_ARGUMENT)
      << "close_client names a client";
  EXPECT_NE(HttpGet("/metrics").find("devbridge_ingest_rpc_refused_total 6"), std::string::npos);
}

TEST_F(IngestTest, ArgumentsOutOfRangeAndReusedCommandIdsAreRefused) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.devices = 5; });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 5; }));
  {
    grpc::ClientContext ctx;
    v1::GetReadingsRequest req;
    req.set_device_id(sim->DeviceId(0));
    req.set_since_unix_ms(INT64_MAX);
    v1::GetReadingsResponse resp;
    EXPECT_EQ(stub_->GetReadings(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::GetReadingsRequest req;
    req.set_device_id(sim->DeviceId(0));
    req.set_limit(10001);
    v1::GetReadingsResponse resp;
    EXPECT_EQ(stub_->GetReadings(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // The same command id twice: the second is refused, the first row keeps its own frames.
  v1::Command first = Read(sim->DeviceId(0), 0, 2);
  first.set_command_id(common::NewUuid());
  ASSERT_EQ(Dispatch(first).code(), 200);
  v1::Command again = Read(sim->DeviceId(1), 0, 1);
  again.set_command_id(first.command_id());
  {
    grpc::ClientContext ctx;
    v1::CommandResult result;
    EXPECT_EQ(stub_->Dispatch(&ctx, again, &result).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  }
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM commands WHERE status = 'succeeded'") == 1; }));
  EXPECT_EQ(Count("SELECT count(*) FROM commands WHERE device_id = '" + sim->DeviceId(0) + "'"), 1);
  // Devices come in pages, in id order, each naming the next.
  std::vector<std::string> ids;
  std::string after;
  int pages = 0;
  do {
    grpc::ClientContext ctx;
    v1::ListDevicesRequest req;
    req.set_limit(2);
    req.set_after(after);
    v1::ListDevicesResponse page;
    ASSERT_TRUE(stub_->ListDevices(&ctx, req, &page).ok());
    ASSERT_LE(page.devices_size(), 2);
    for (const auto& d : page.devices()) ids.push_back(d.device_id());
    after = page.next();
    ASSERT_LT(++pages, 10);
  } while (!after.empty());
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(ids[0], sim->DeviceId(0));
  grpc::ClientContext ctx;
  v1::ListDevicesRequest big;
  big.set_limit(10001);
  v1::ListDevicesResponse resp;
  EXPECT_EQ(stub_->ListDevices(&ctx, big, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(IngestTest, AHeartbeatPostgresCannotStoreStopsNoWrites) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.data_interval = absl::Milliseconds(50); });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") >= 5; }));
  PublishRaw("nul-1/heartbeat", R"({"fw":"\u0000"})");
  PublishRaw(sim->DeviceId(0) + "/heartbeat", R"({"fw":"\u0000"})");
  const int64_t before = Count("SELECT count(*) FROM readings");
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM readings") > before + 20; }))
      << "writes stopped after the heartbeat";
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE device_id = 'nul-1'") == 1; }))
      << "the device itself is stored, without that meta";
  EXPECT_EQ(HttpGet("/healthz").rfind("ok", 0), 0u);
  EXPECT_NE(HttpGet("/metrics").find("devbridge_ingest_heartbeat_meta_refused_total 2"), std::string::npos);
}

TEST_F(IngestTest, GarbageOnEveryTopicLeavesTheServiceHealthy) {
  StartIngest();
  auto sim = StartSim();
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 1; }));
  PublishRaw("g1/data", "zz not hex");
  PublishRaw("g1/data", "");
  PublishRaw("g1/data", std::string(1 << 20, 'A'));
  PublishRaw("g1/data", std::string("\x01\x03\x02\x00", 4));
  PublishRaw("g1/heartbeat", std::string(1 << 20, '{'));
  PublishRaw("bad id/data", "0103");
  PublishRaw(std::string(65, 'x') + "/heartbeat", "{}");
  PublishRaw("g1/heartbeat", "\xff\xfe not json");
  std::string metrics;
  ASSERT_TRUE(WaitFor([&] {
    metrics = HttpGet("/metrics");
    return metrics.find("devbridge_ingest_messages_dropped_total{reason=\"invalid_id\"} 2") != std::string::npos &&
           metrics.find("devbridge_ingest_messages_dropped_total{reason=\"oversize\"} 2") != std::string::npos;
  })) << metrics;
  EXPECT_NE(metrics.find("devbridge_ingest_frames_bad_total{kind=\"hex\"} 2"), std::string::npos) << metrics;
  EXPECT_EQ(HttpGet("/healthz").rfind("ok", 0), 0u);
  EXPECT_EQ(Dispatch(Read(sim->DeviceId(0), 0, 2)).code(), 200) << "still serving commands";
}

TEST_F(IngestTest, ShutdownFailsInFlightCommandsAndFlushes) {
  StartIngest();
  auto sim = StartSim([](sim::SimOptions& o) { o.drop_rate = 1; });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM devices WHERE online") == 1; }));
  v1::Command slow = Read(sim->DeviceId(0), 0, 1);
  slow.set_timeout_ms(30000);
  auto result = std::async(std::launch::async, [&] { return Dispatch(slow); });
  ASSERT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM commands WHERE status = 'sent'") == 1; }));
  StopIngest();
  v1::CommandResult r = result.get();
  EXPECT_EQ(r.code(), 503);
  EXPECT_EQ(r.msg(), "ingest is shutting down");
  EXPECT_EQ(Count("SELECT count(*) FROM commands WHERE status = 'failed' AND code = 503"), 1)
      << "the writer must flush before exit";
}

}  // namespace
}  // namespace devbridge::testing
