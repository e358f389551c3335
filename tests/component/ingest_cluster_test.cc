// Two ingest replicas sharing the fleet (--partitions) as processes, on a real bus, broker and
// database: each holds its share of the partitions, every frame the broker acknowledged is
// stored once whichever replica took it, and after a kill -9 of one replica under load the
// other takes its partitions; once the killed one is back (and has forwarded what its spool
// kept) and got its share again, nothing is lost or stored twice.
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <pqxx/pqxx>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "bus/connection.h"
#include "bus/leases.h"
#include "services/ingest/cluster/device_directory.h"
#include "services/ingest/cluster/partitions.h"
#include "tests/component/ingest_fixture.h"
#include "tests/component/nats_cluster.h"
#include "tests/component/test_env.h"

namespace devbridge::testing {
namespace {

constexpr int kPartitions = 8;

class IngestClusterTest : public IngestFixture {
 protected:
  struct Replica {
    std::string name;
    int http_port = 0;
    int grpc_port = 0;
    int pid = -1;
  };

  void SetUp() override {
    IngestFixture::SetUp();
    ASSERT_TRUE(bus_.WaitHealthy()) << "see " << bus_.log(0);
    dir_ = absl::StrCat(std::getenv("DEVBRIDGE_TEST_DIR") ? std::getenv("DEVBRIDGE_TEST_DIR") : "/tmp", "/cluster-",
                        absl::StrReplaceAll(prefix_, {{"/", "-"}}));
  }
  void TearDown() override {
    for (Replica& r : replicas_) {
      if (r.pid > 0) {
        ::kill(r.pid, SIGTERM);
        WaitExit(r.pid, absl::Seconds(20));
      }
    }
    IngestFixture::TearDown();
  }

  Replica StartReplica(const std::string& name) {
    Replica r;
    r.name = name;
    r.http_port = FreePort();
    r.grpc_port = FreePort();
    r.pid = Spawn({DEVBRIDGE_INGEST_BIN, "--mqtt_url=" + MqttUrl(), "--mqtt_client_id=" + prefix_ + "-" + name,
                   "--topic_prefix=" + prefix_, "--pg_dsn=" + dsn_, absl::StrCat("--grpc_listen=127.0.0.1:", r.grpc_port),
                   absl::StrCat("--http_listen=127.0.0.1:", r.http_port),
                   "--register_map=" DEVBRIDGE_SOURCE_DIR "/config/registers.json",
                   "--spool_dir=" + dir_ + "/spool-" + name, "--bus=" + bus_.urls(), "--bus_replicas=1",
                   absl::StrCat("--partitions=", kPartitions), "--lease_ttl=3s"},
                  dir_ + "-" + name + ".log");
    replicas_.push_back(r);
    return r;
  }
  double Metric(const Replica& r, const std::string& series) {
    int status = 0;
    const std::string metrics = HttpRequest(r.http_port, "GET", "/metrics", {}, "", &status);
    return status == 200 ? MetricValue(metrics, series) : -1;
  }
  double Held(const Replica& r) { return Metric(r, "devbridge_ingest_partitions_held"); }
  void WaitShared(const Replica& a, const Replica& b) {
    ASSERT_TRUE(WaitFor([&] { return Held(a) == kPartitions / 2 && Held(b) == kPartitions / 2; }, absl::Seconds(60)))
        << "partitions not shared: " << a.name << " holds " << Held(a) << ", " << b.name << " holds " << Held(b)
        << "; see " << dir_ << "-" << a.name << ".log";
  }
  static std::unique_ptr<v1::Ingest::Stub> Stub(const Replica& r) {
    return v1::Ingest::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", r.grpc_port), grpc::InsecureChannelCredentials()));
  }
  static grpc::Status Run(v1::Ingest::Stub* stub, const v1::Command& command, v1::CommandResult* result) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub->Dispatch(&ctx, command, result);
  }
  int64_t Readings() { return Count("SELECT count(*) FROM readings WHERE command_id IS NULL"); }
  // The sequence-numbered frames stored: (device, frame number) → copies. False if the
  // database did not answer.
  bool StoredFrames(std::map<std::pair<std::string, uint64_t>, int>* stored) {
    stored->clear();
    try {
      pqxx::connection conn(dsn_);
      pqxx::read_transaction tx(conn);
      for (const auto& row : tx.exec(
               "SELECT device_id, (get_byte(raw,3)::bigint<<24)|(get_byte(raw,4)<<16)|(get_byte(raw,5)<<8)|"
               "get_byte(raw,6) FROM readings WHERE command_id IS NULL AND length(raw) > 20")) {
        ++(*stored)[{row[0].as<std::string>(), row[1].as<uint64_t>()}];
      }
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  NatsCluster bus_{1};
  std::string dir_;
  std::vector<Replica> replicas_;
};

// The frames the simulator's ack log lists: device → frame numbers.
std::map<std::string, std::set<uint64_t>> ReadAckLog(const std::string& path) {
  std::map<std::string, std::set<uint64_t>> acked;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() < 3) continue;
    for (absl::string_view range : absl::StrSplit(parts[2], ',')) {
      std::vector<std::string> ends = absl::StrSplit(range, '-');
      uint64_t from = 0, to = 0;
      if (!absl::SimpleAtoi(ends[0], &from)) continue;
      to = from;
      if (ends.size() == 2 && !absl::SimpleAtoi(ends[1], &to)) continue;
      for (uint64_t f = from; f <= to; ++f) acked[parts[0]].insert(f);
    }
  }
  return acked;
}

TEST_F(IngestClusterTest, AKilledReplicasPartitionsMoveAndNothingIsLostOrStoredTwice) {
  const Replica ra = StartReplica("a");
  const Replica rb = StartReplica("b");
  WaitShared(ra, rb);

  const std::string ack_log = dir_ + "-acks.txt";
  auto sim = StartSim([&](sim::SimOptions& o) {
    o.devices = 20;
    o.data_interval = absl::Milliseconds(50);  // 400 frames/s
    o.heartbeat_interval = absl::Seconds(1);
    o.sequence = true;
    o.ack_log = ack_log;
  });
  ASSERT_TRUE(sim);
  ASSERT_TRUE(WaitFor([&] { return Readings() >= 1000; }, absl::Seconds(60))) << Readings();

  ::kill(ra.pid, SIGKILL);
  const absl::Time killed = absl::Now();
  WaitExit(ra.pid, absl::Seconds(10));
  replicas_[0].pid = -1;
  std::map<std::pair<std::string, uint64_t>, int> stored;
  ASSERT_TRUE(StoredFrames(&stored));
  std::map<std::string, uint64_t> at_kill;  // device → the last frame stored before the kill
  for (const auto& [key, n] : stored) at_kill[key.first] = std::max(at_kill[key.first], key.second);
  ASSERT_EQ(at_kill.size(), 20u);
  ASSERT_TRUE(WaitFor([&] { return Held(rb) == kPartitions; }, absl::Seconds(60))) << Held(rb);
  const absl::Duration takeover = absl::Now() - killed;
  ASSERT_TRUE(WaitFor([&] { return Metric(rb, "devbridge_ingest_sessions_adopted") == 1; }, absl::Seconds(60)))
      << "the dead replica's MQTT session was not adopted; see " << dir_ << "-b.log";
  const absl::Duration adopted = absl::Now() - killed;
  std::cout << "[ figures ] the survivor held every partition " << absl::FormatDuration(takeover)
            << " and the dead replica's MQTT session " << absl::FormatDuration(adopted)
            << " after the kill -9 (lease_ttl 3s)\n";

  // The broker shares every device's messages between both replicas' sessions, and keeps
  // sharing to the dead one's: with the session adopted, every frame sent after the kill is
  // stored while the dead replica is still down (2 s of margin either side: 40 frames).
  size_t missing = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        if (!StoredFrames(&stored)) return false;
        missing = 0;
        for (const auto& [device, last] : at_kill) {
          for (uint64_t f = last + 40; f <= last + 200; ++f) missing += stored.count({device, f}) > 0 ? 0 : 1;
        }
        return missing == 0;
      },
      absl::Seconds(60)))
      << missing << " frames sent after the kill are not stored while the killed replica is down";
  std::cout << "[ figures ] the frames sent 2 to 10 s after the kill were all stored "
            << absl::FormatDuration(absl::Now() - killed) << " after it, the killed replica still down\n";

  // What the dead replica had taken and not yet forwarded is in its spool: it comes when the
  // replica is back, which then gets its share of partitions, handed over by the survivor, and
  // its MQTT session, given back by the survivor.
  const Replica again = StartReplica("a");
  ASSERT_TRUE(WaitFor([&] { return Held(again) == kPartitions / 2 && Held(rb) == kPartitions / 2; },
                      absl::Seconds(60)))
      << "a holds " << Held(again) << ", b holds " << Held(rb);
  EXPECT_TRUE(WaitFor([&] { return Metric(rb, "devbridge_ingest_sessions_adopted") == 0; }, absl::Seconds(30)))
      << "the survivor kept the session of the replica that came back";
  const int64_t after_return = Readings();
  ASSERT_TRUE(WaitFor([&] { return Readings() >= after_return + 1000; }, absl::Seconds(60))) << Readings();
  sim.reset();  // writes the ack log

  const std::map<std::string, std::set<uint64_t>> acked = ReadAckLog(ack_log);
  size_t acked_count = 0;
  for (const auto& [device, frames] : acked) acked_count += frames.size();
  ASSERT_GT(acked_count, 2000u);
  size_t lost = 0;
  // Poll until every acknowledged frame is in (the returning replica forwards its spool's tail).
  WaitFor(
      [&] {
        if (!StoredFrames(&stored)) return false;
        lost = 0;
        for (const auto& [device, frames] : acked) {
          for (uint64_t f : frames) lost += stored.count({device, f}) > 0 ? 0 : 1;
        }
        return lost == 0;
      },
      absl::Seconds(60));
  size_t twice = 0;
  for (const auto& [key, n] : stored) twice += n > 1 ? n - 1 : 0;
  std::cout << "[ figures ] copies dropped by the partitions' owners: "
            << Metric(rb, "devbridge_ingest_intake_duplicates_total") + Metric(again, "devbridge_ingest_intake_duplicates_total")
            << "; broker redeliveries dropped by the MQTT clients: "
            << Metric(rb, "devbridge_ingest_mqtt_duplicates_dropped") + Metric(again, "devbridge_ingest_mqtt_duplicates_dropped")
            << "\n";
  std::cout << "[ figures ] acknowledged " << acked_count << ", stored " << stored.size() << ", lost " << lost
            << ", stored twice " << twice << "\n";
  EXPECT_EQ(lost, 0u) << "see " << dir_ << "-a.log and -b.log";
  EXPECT_EQ(twice, 0u);
}

// A listing that lacks a live replica's page fails rather than look complete.
TEST_F(IngestClusterTest, AListingIsWholeOnlyWhenItsPagesCoverEveryPartition) {
  absl::StatusOr<std::vector<std::string>> urls = bus::ParseBusFlag(bus_.urls());
  ASSERT_TRUE(urls.ok()) << urls.status();
  bus::ConnectionOptions options;
  options.urls = *urls;
  absl::StatusOr<std::unique_ptr<bus::Connection>> connection = bus::Connection::Connect(options);
  ASSERT_TRUE(connection.ok()) << connection.status();
  // Two replicas of 4 partitions, one device each; what each holds is set below.
  std::mutex mu;
  std::vector<int> held_a = {0, 1}, held_b = {2, 3};
  auto replica = [&](std::vector<int>* held, const std::string& device) {
    return ingest::cluster::DeviceDirectory::Start(
        connection->get(), 4,
        [&mu, held] {
          std::lock_guard<std::mutex> lock(mu);
          return *held;
        },
        [device](const v1::ListDevicesRequest&, ingest::cluster::DeviceDirectory::Page done) {
          v1::ListDevicesResponse page;
          page.add_devices()->set_device_id(device);
          done(std::move(page));
        });
  };
  auto a = replica(&held_a, "d-1");
  auto b = replica(&held_b, "d-2");
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " " << b.status();
  auto list = [&] {
    std::promise<absl::StatusOr<v1::ListDevicesResponse>> listed;
    (*a)->List("", 10, absl::Milliseconds(300),
               [&](absl::StatusOr<v1::ListDevicesResponse> page) { listed.set_value(std::move(page)); });
    return listed.get_future().get();
  };
  absl::StatusOr<v1::ListDevicesResponse> whole = list();
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->devices_size(), 2);
  EXPECT_EQ(whole->devices(0).device_id(), "d-1");
  EXPECT_EQ(whole->devices(1).device_id(), "d-2");
  // Replica b has let partition 3 go and nobody has taken it yet: both pages come, but a
  // list without partition 3's devices would look complete.
  {
    std::lock_guard<std::mutex> lock(mu);
    held_b = {2};
  }
  absl::StatusOr<v1::ListDevicesResponse> short_of_one = list();
  EXPECT_TRUE(absl::IsUnavailable(short_of_one.status())) << short_of_one.status();
  EXPECT_NE(short_of_one.status().message().find("partition(s) 3 within"), absl::string_view::npos)
      << short_of_one.status();
  // Replica a takes it over: whole again.
  {
    std::lock_guard<std::mutex> lock(mu);
    held_a = {0, 1, 3};
  }
  absl::StatusOr<v1::ListDevicesResponse> again = list();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->devices_size(), 2);
}

// A command reaches its device's owner whichever replica push called; one in flight when the
// owner is killed fails with 503 once its partition changes hands.
TEST_F(IngestClusterTest, CommandsReachTheOwnerFromEitherReplicaAndFailWith503WhenItDies) {
  const Replica ra = StartReplica("a");
  const Replica rb = StartReplica("b");
  WaitShared(ra, rb);
  auto sim = StartSim([](sim::SimOptions& o) {
    o.devices = 8;
    o.heartbeat_interval = absl::Milliseconds(500);
  });
  auto slow = StartSim([](sim::SimOptions& o) {
    o.devices = 1;
    o.id_prefix = "slow-";
    o.client_id_prefix = "devbridge-sim-slow";
    o.heartbeat_interval = absl::Milliseconds(500);
    o.reply_delay = absl::Seconds(5);
  });
  ASSERT_TRUE(sim && slow);
  ASSERT_TRUE(WaitFor([&] {
    return Metric(ra, "devbridge_ingest_devices_online") + Metric(rb, "devbridge_ingest_devices_online") == 9;
  }, absl::Seconds(30)));

  auto a = Stub(ra), b = Stub(rb);
  // Either replica lists every device, in pages, though each knows only its own.
  for (v1::Ingest::Stub* stub : {a.get(), b.get()}) {
    std::vector<std::string> listed;
    v1::ListDevicesRequest request;
    request.set_limit(4);
    do {
      v1::ListDevicesResponse page;
      grpc::Status status;
      // UNAVAILABLE: a replica's page did not come in time, and the listing says so rather
      // than look complete; the caller asks again.
      ASSERT_TRUE(WaitFor([&] {
        grpc::ClientContext ctx;
        page.Clear();
        status = stub->ListDevices(&ctx, request, &page);
        return status.error_code() != grpc::StatusCode::UNAVAILABLE;
      }, absl::Seconds(30))) << status.error_message();
      ASSERT_TRUE(status.ok()) << status.error_message();
      for (const v1::Device& d : page.devices()) listed.push_back(d.device_id());
      request.set_after(page.next());
    } while (!request.after().empty());
    // Once a listing counted on the replicas it believed live, and a replica whose lease
    // lapsed under load (so it did not count) left 4 of 9 devices listed without `next`.
    ASSERT_EQ(listed.size(), 9u) << "listed by " << (stub == a.get() ? "a" : "b") << ": "
                                 << absl::StrJoin(listed, ",") << "; devices online a "
                                 << Metric(ra, "devbridge_ingest_devices_online") << ", b "
                                 << Metric(rb, "devbridge_ingest_devices_online") << "; partitions held a "
                                 << Metric(ra, "devbridge_ingest_partitions_held") << ", b "
                                 << Metric(rb, "devbridge_ingest_partitions_held");
    EXPECT_TRUE(std::is_sorted(listed.begin(), listed.end()));
  }
  for (int i = 0; i < 8; ++i) {
    for (v1::Ingest::Stub* stub : {a.get(), b.get()}) {
      v1::CommandResult result;
      const grpc::Status status = Run(stub, Read(sim->DeviceId(i), 0, 2), &result);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(result.code(), 200) << sim->DeviceId(i) << ": " << result.msg();
    }
  }
  const double forwarded = Metric(ra, "devbridge_ingest_commands_forwarded_total") +
                           Metric(rb, "devbridge_ingest_commands_forwarded_total");
  const double served = Metric(ra, "devbridge_ingest_commands_served_total") +
                        Metric(rb, "devbridge_ingest_commands_served_total");
  EXPECT_EQ(forwarded, 8);  // each device is owned by one of the two: the other forwarded its command
  EXPECT_EQ(served, 8);
  EXPECT_TRUE(WaitFor([&] { return Count("SELECT count(*) FROM commands WHERE status = 'succeeded'") == 16; }))
      << Count("SELECT count(*) FROM commands WHERE status = 'succeeded'");

  // The slow device's owner, from its partition's lease; the command goes in by the other.
  bus::ConnectionOptions connect;
  connect.urls = *bus::ParseBusFlag(bus_.urls());
  auto connection = bus::Connection::Connect(connect);
  ASSERT_TRUE(connection.ok()) << connection.status();
  auto leases = bus::Leases::Open(connection->get(), ingest::cluster::kLeaseBucket, absl::Seconds(3), 1);
  ASSERT_TRUE(leases.ok()) << leases.status();
  const std::string device = slow->DeviceId(0);
  auto holder = (*leases)->Holder(ingest::cluster::PartitionLease(ingest::cluster::PartitionOf(device, kPartitions)));
  ASSERT_TRUE(holder.ok()) << holder.status();
  const bool a_owns = *holder == prefix_ + "-a";
  ASSERT_TRUE(a_owns || *holder == prefix_ + "-b") << *holder;
  const Replica& owner = a_owns ? ra : rb;
  const double served_before = Metric(owner, "devbridge_ingest_commands_served_total");
  v1::CommandResult result;
  grpc::Status status;
  v1::Command command = Read(device, 0, 2);
  command.set_timeout_ms(30000);
  std::thread call([&] {
    status = Run(a_owns ? b.get() : a.get(), command, &result);
  });
  EXPECT_TRUE(WaitFor([&] { return Metric(owner, "devbridge_ingest_commands_served_total") > served_before; }));
  const std::string row = "SELECT count(*) FROM commands WHERE device_id = '" + device + "'";
  EXPECT_TRUE(WaitFor([&] { return Count(row + " AND status = 'sent'") == 1; }));
  ::kill(owner.pid, SIGKILL);
  WaitExit(owner.pid, absl::Seconds(10));
  replicas_[a_owns ? 0 : 1].pid = -1;
  call.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(result.code(), 503) << result.msg();
  EXPECT_NE(result.msg().find("partition moved"), std::string::npos) << result.msg();
  EXPECT_EQ(result.request_id(), command.request_id());
  // Its row, left 'sent' by the dead owner, is closed by the partition's next owner.
  EXPECT_TRUE(WaitFor([&] { return Count(row + " AND status = 'failed' AND code = 503") == 1; }));
}

}  // namespace
}  // namespace devbridge::testing
