// Ingest with --bus against a real 3-server JetStream cluster: every event lands on the bus
// once per push stream, with that stream's offset, and the offsets go on across a restart of
// ingest (the history is the bus's, not the process's).
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "bus/connection.h"
#include "bus/offset_log.h"
#include "bus/subject_reader.h"
#include "common/mutex.h"
#include "devbridge/v1/events.pb.h"
#include "tests/component/ingest_fixture.h"
#include "tests/component/nats_cluster.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

class IngestBusTest : public IngestFixture {
 protected:
  void SetUp() override {
    IngestFixture::SetUp();
    ASSERT_TRUE(cluster_.WaitHealthy()) << "see " << cluster_.log(0);
  }
  // Ingest on the bus; the first start may wait for the cluster's JetStream leader.
  void StartOnBus() {
    auto urls = bus::ParseBusFlag(cluster_.urls());
    ASSERT_TRUE(urls.ok());
    StartIngest([&](ingest::IngestOptions& o) { o.bus.urls = *urls; });
  }
  std::unique_ptr<bus::Connection> Connect() {
    bus::ConnectionOptions options;
    options.urls = *bus::ParseBusFlag(cluster_.urls());
    auto connection = bus::Connection::Connect(options);
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.ok() ? *std::move(connection) : nullptr;
  }

  NatsCluster cluster_{3};
};

// What a reader of the fleet's subject got.
struct Fleet {
  common::Mutex mu;
  std::vector<v1::Event> events;
  std::vector<uint64_t> offsets;  // from the header
  size_t size() {
    common::MutexLock lock(&mu);
    return events.size();
  }
};

TEST_F(IngestBusTest, EventsLandOncePerStreamAndOffsetsGoOnAcrossARestart) {
  StartOnBus();
  std::unique_ptr<bus::Connection> connection = Connect();
  ASSERT_TRUE(connection);
  Fleet fleet;
  auto reader = bus::SubjectReader::Start(
      connection.get(), "DEVBRIDGE_EVENTS", bus::StreamSubject("devbridge.ev", "fleet", ""), 1,
      [&](bus::Position position, absl::string_view, absl::string_view data) {
        v1::Event event;
        ASSERT_TRUE(event.ParseFromArray(data.data(), static_cast<int>(data.size())));
        common::MutexLock lock(&fleet.mu);
        fleet.events.push_back(std::move(event));
        fleet.offsets.push_back(position.offset);
      });
  ASSERT_TRUE(reader.ok()) << reader.status();

  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 5;
    o.data_interval = absl::Milliseconds(20);
  });
  ASSERT_TRUE(WaitFor([&] { return fleet.size() >= 100; }, absl::Seconds(30))) << fleet.size();
  StopIngest();
  // Everything the first run appended has reached the reader: what follows is the second's.
  bus::OffsetLog log(connection.get(), "DEVBRIDGE_EVENTS");
  const std::string fleet_subject = bus::StreamSubject("devbridge.ev", "fleet", "");
  absl::StatusOr<std::optional<bus::Position>> newest = log.Newest(fleet_subject);
  ASSERT_TRUE(newest.ok() && newest->has_value()) << newest.status();
  ASSERT_TRUE(WaitFor([&] {
    common::MutexLock lock(&fleet.mu);
    return !fleet.offsets.empty() && fleet.offsets.back() == (*newest)->offset;
  }));
  const size_t before_restart = fleet.size();
  StartOnBus();
  ASSERT_TRUE(WaitFor([&] { return fleet.size() >= before_restart + 100; }, absl::Seconds(30))) << fleet.size();
  sim.reset();
  const std::string metrics = HttpGet("/metrics");
  EXPECT_GT(MetricValue(metrics, "devbridge_ingest_bus_appended_total"), 0) << metrics;
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_bus_dropped_total"), 0);
  // One writer: nobody appends between its reads and its appends (-1: the metric is missing).
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_bus_conflicts_total"), 0);
  StopIngest();  // what ingest had queued for the bus is appended before it stops
  reader->reset();

  common::MutexLock lock(&fleet.mu);
  const std::string epoch = fleet.events.front().epoch();
  EXPECT_EQ(epoch.rfind("bus-", 0), 0u) << epoch;
  for (size_t i = 0; i < fleet.events.size(); ++i) {
    const v1::Event& event = fleet.events[i];
    EXPECT_EQ(event.epoch(), epoch) << i << ": the restart changed the epoch";
    ASSERT_EQ(event.streams_size(), 1) << i;
    EXPECT_EQ(event.streams(0).system_id(), "fleet");
    EXPECT_EQ(event.streams(0).offset(), fleet.offsets[i]) << i;
    if (i > 0) {
      EXPECT_EQ(fleet.offsets[i], fleet.offsets[i - 1] + 1) << i << ": a gap or a reset";
    }
  }

  // Every device's own stream holds that device's events, contiguously, and the fleet's data
  // events are each in exactly one device stream too.
  std::map<std::string, std::vector<uint64_t>> per_subject;
  size_t device_data = 0;
  const uint64_t last = *bus::LastSequence(*connection, "DEVBRIDGE_EVENTS");
  for (uint64_t seq = 1; seq <= last; ++seq) {
    absl::StatusOr<bus::OffsetLog::Message> message = log.Read(seq);
    ASSERT_TRUE(message.ok()) << message.status();
    per_subject[message->subject].push_back(message->position.offset);
    v1::Event event;
    ASSERT_TRUE(event.ParseFromString(message->data));
    ASSERT_EQ(event.streams_size(), 1) << seq;
    if (event.streams(0).system_id() != "fleet" && event.has_data()) ++device_data;
  }
  size_t fleet_data = 0;
  for (const v1::Event& event : fleet.events) fleet_data += event.has_data() ? 1 : 0;
  EXPECT_EQ(device_data, fleet_data);
  per_subject.erase("devbridge.ev.cluster");  // events of no push stream (none here, but allowed)
  EXPECT_EQ(per_subject.size(), 6u);  // the fleet and 5 devices
  for (const auto& [subject, offsets] : per_subject) {
    for (size_t i = 1; i < offsets.size(); ++i) EXPECT_EQ(offsets[i], offsets[i - 1] + 1) << subject << " " << i;
  }
}

// Every reading PostgreSQL stored is on the bus once, in the fleet's stream, in order, after a
// server's kill -9 and an outage of the whole cluster under load.
TEST_F(IngestBusTest, NothingIsLostWhileTheBusIsDown) {
  StartOnBus();
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 5;
    o.data_interval = absl::Milliseconds(20);
  });
  auto appended = [&] { return MetricValue(HttpGet("/metrics"), "devbridge_ingest_bus_appended_total"); };
  ASSERT_TRUE(WaitFor([&] { return appended() >= 200; }, absl::Seconds(30)));
  cluster_.Kill(0);  // one of three: the stream keeps its quorum
  double before = appended();
  ASSERT_TRUE(WaitFor([&] { return appended() >= before + 200; }, absl::Seconds(30)));
  ASSERT_TRUE(cluster_.Rejoin(0));

  for (int i = 0; i < 3; ++i) cluster_.Kill(i);  // the whole bus away; ingest goes on
  const std::string down = HttpGet("/metrics");
  ASSERT_TRUE(WaitFor([&] { return MetricValue(HttpGet("/metrics"), "devbridge_ingest_bus_queue_bytes") > 0; }));
  EXPECT_EQ(HttpGet("/healthz").rfind("ok", 0), 0u) << "ingest itself stays healthy without the bus";
  absl::SleepFor(absl::Seconds(2));  // an outage of some length (not a synchronisation)
  for (int i = 0; i < 3; ++i) cluster_.Start(i);
  ASSERT_TRUE(cluster_.WaitHealthy(absl::Seconds(60)));
  before = appended();
  ASSERT_TRUE(WaitFor([&] { return appended() >= before + 200; }, absl::Seconds(60)));
  sim.reset();
  // Everything taken is processed, stored and on the bus.
  ASSERT_TRUE(WaitFor([&] {
    const std::string m = HttpGet("/metrics");
    return MetricValue(m, "devbridge_ingest_bus_queue_bytes") == 0 && MetricValue(m, "devbridge_ingest_intake_depth") == 0;
  }, absl::Seconds(30)));
  const std::string metrics = HttpGet("/metrics");
  EXPECT_EQ(MetricValue(metrics, "devbridge_ingest_bus_dropped_total"), 0);
  EXPECT_GT(MetricValue(metrics, "devbridge_ingest_bus_errors_total"), 0) << "the outage was not noticed";
  StopIngest();

  std::unique_ptr<bus::Connection> connection = Connect();
  ASSERT_TRUE(connection);
  bus::OffsetLog log(connection.get(), "DEVBRIDGE_EVENTS");
  const std::string fleet = bus::StreamSubject("devbridge.ev", "fleet", "");
  std::vector<uint64_t> offsets, sequences;
  int64_t data = 0;
  const uint64_t last = *bus::LastSequence(*connection, "DEVBRIDGE_EVENTS");
  for (uint64_t seq = 1; seq <= last; ++seq) {
    absl::StatusOr<bus::OffsetLog::Message> message = log.Read(seq);
    ASSERT_TRUE(message.ok()) << message.status();
    if (message->subject != fleet) continue;
    offsets.push_back(message->position.offset);
    sequences.push_back(seq);
    v1::Event event;
    ASSERT_TRUE(event.ParseFromString(message->data));
    if (event.has_data()) ++data;
  }
  // Offsets never go back or repeat. They may skip after a leader is lost: nats-server 2.9
  // can store a batch an old leader accepted after the writer planned the next one (see
  // docs/scaling.md, "Still open"); counted and printed here, not yet a failure.
  int skips = 0;
  for (size_t i = 1; i < offsets.size(); ++i) {
    EXPECT_GT(offsets[i], offsets[i - 1]) << i << " at sequences " << sequences[i - 1] << ", " << sequences[i];
    if (offsets[i] > offsets[i - 1] + 1) {
      ++skips;
      std::cout << "offsets skip " << offsets[i - 1] << " -> " << offsets[i] << " at sequences " << sequences[i - 1]
                << ", " << sequences[i] << "\n";
    }
  }
  const int64_t stored = Count("select count(*) from readings");
  EXPECT_GT(stored, 500);
  EXPECT_EQ(data, stored) << "readings stored vs data events on the bus";
  std::cout << "readings stored " << stored << ", on the bus " << data << ", bus errors during the outage "
            << MetricValue(metrics, "devbridge_ingest_bus_errors_total") << ", offset skips " << skips << "\n";
}

}  // namespace
}  // namespace devbridge::testing
