// Two ingest replicas sharing the fleet (--partitions) as processes, on a real bus, broker and
// database: each holds its share of the partitions, every frame the broker acknowledged is
// stored once whichever replica took it, and after a kill -9 of one replica under load the
// other takes its partitions; once the killed one is back (and has forwarded what its spool
// kept) and got its share again, nothing is lost or stored twice.
#include <signal.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <pqxx/pqxx>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
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
    r.pid = Spawn({DEVBRIDGE_INGEST_BIN, "--mqtt_url=" + MqttUrl(), "--mqtt_client_id=" + prefix_ + "-" + name,
                   "--topic_prefix=" + prefix_, "--pg_dsn=" + dsn_, "--grpc_listen=127.0.0.1:0",
                   absl::StrCat("--http_listen=127.0.0.1:", r.http_port),
                   "--register_map=" DEVBRIDGE_SOURCE_DIR "/config/registers.json",
                   "--spool_dir=" + dir_ + "/spool-" + name, "--bus=" + bus_.urls(), "--bus_replicas=1",
                   absl::StrCat("--partitions=", kPartitions), "--lease_ttl=3s"},
                  dir_ + "-" + name + ".log");
    replicas_.push_back(r);
    return r;
  }
  double Held(const Replica& r) {
    int status = 0;
    const std::string metrics = HttpRequest(r.http_port, "GET", "/metrics", {}, "", &status);
    return status == 200 ? MetricValue(metrics, "devbridge_ingest_partitions_held") : -1;
  }
  int64_t Readings() { return Count("SELECT count(*) FROM readings WHERE command_id IS NULL"); }

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
  ASSERT_TRUE(WaitFor([&] { return Held(ra) == kPartitions / 2 && Held(rb) == kPartitions / 2; },
                      absl::Seconds(60)))
      << "partitions not shared: a holds " << Held(ra) << ", b holds " << Held(rb) << "; see " << dir_ << "-a.log";

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
  ASSERT_TRUE(WaitFor([&] { return Held(rb) == kPartitions; }, absl::Seconds(60))) << Held(rb);
  const absl::Duration takeover = absl::Now() - killed;
  std::cout << "[ figures ] the survivor held every partition " << absl::FormatDuration(takeover)
            << " after the kill -9 (lease_ttl 3s)\n";
  const int64_t after_takeover = Readings();
  ASSERT_TRUE(WaitFor([&] { return Readings() >= after_takeover + 1000; }, absl::Seconds(60))) << Readings();

  // What the dead replica had taken and not yet forwarded is in its spool, and what the
  // broker had on its way to it waits in its MQTT session: both come when it is back. It then
  // gets its share again, handed over by the survivor.
  const Replica again = StartReplica("a");
  ASSERT_TRUE(WaitFor([&] { return Held(again) == kPartitions / 2 && Held(rb) == kPartitions / 2; },
                      absl::Seconds(60)))
      << "a holds " << Held(again) << ", b holds " << Held(rb);
  const int64_t after_return = Readings();
  ASSERT_TRUE(WaitFor([&] { return Readings() >= after_return + 1000; }, absl::Seconds(60))) << Readings();
  sim.reset();  // writes the ack log

  const std::map<std::string, std::set<uint64_t>> acked = ReadAckLog(ack_log);
  size_t acked_count = 0;
  for (const auto& [device, frames] : acked) acked_count += frames.size();
  ASSERT_GT(acked_count, 2000u);
  const std::string frames_sql =
      "SELECT device_id, (get_byte(raw,3)::bigint<<24)|(get_byte(raw,4)<<16)|(get_byte(raw,5)<<8)|get_byte(raw,6) "
      "FROM readings WHERE command_id IS NULL AND length(raw) > 20";
  std::map<std::pair<std::string, uint64_t>, int> stored;
  size_t lost = 0;
  // Poll until every acknowledged frame is in (the survivor drains the dead one's backlog).
  WaitFor(
      [&] {
        stored.clear();
        try {
          pqxx::connection conn(dsn_);
          pqxx::read_transaction tx(conn);
          for (const auto& row : tx.exec(frames_sql)) {
            ++stored[{row[0].as<std::string>(), row[1].as<uint64_t>()}];
          }
        } catch (const std::exception&) {
          return false;
        }
        lost = 0;
        for (const auto& [device, frames] : acked) {
          for (uint64_t f : frames) lost += stored.count({device, f}) > 0 ? 0 : 1;
        }
        return lost == 0;
      },
      absl::Seconds(60));
  size_t twice = 0;
  for (const auto& [key, n] : stored) twice += n > 1 ? n - 1 : 0;
  std::cout << "[ figures ] acknowledged " << acked_count << ", stored " << stored.size() << ", lost " << lost
            << ", stored twice " << twice << "\n";
  EXPECT_EQ(lost, 0u) << "see " << dir_ << "-a.log and -b.log";
  EXPECT_EQ(twice, 0u);
}

}  // namespace
}  // namespace devbridge::testing
