// Store against a real PostgreSQL from the harness: migrations, batched writes, an outage
// in the middle of writing, and queries.
#include "services/ingest/store/store.h"

#include <future>
#include <pqxx/pqxx>

#include "gtest/gtest.h"
#include "tests/component/test_env.h"

namespace devbridge::ingest {
namespace {

using devbridge::testing::CreateTestDatabase;
using devbridge::testing::Harness;
using devbridge::testing::WaitFor;

ReadingRecord Reading(const std::string& device, int i) {
  ReadingRecord r;
  r.device_id = device;
  r.received_at = absl::FromUnixMillis(1700000000000 + i);
  r.published_at = absl::Now();
  r.unit = 1;
  r.function = 3;
  r.address = 0;
  r.raw = std::string("\x01\x03\x02\x00", 4) + static_cast<char>(i % 256);
  r.values_json = absl::StrCat(R"({"temperature":{"value":)", i, R"(,"unit":"°C","raw":[)", i, "]}}");
  return r;
}

int64_t Count(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::read_transaction tx(conn);
  return tx.exec1(sql)[0].as<int64_t>();
}

TEST(DsnWithDatabase, RewritesUriAndKeywordForms) {
  EXPECT_EQ(DsnWithDatabase("postgresql://u@h:5432/devbridge", "postgres"), "postgresql://u@h:5432/postgres");
  EXPECT_EQ(DsnWithDatabase("postgresql://u@h:5432/db?sslmode=disable", "x"),
            "postgresql://u@h:5432/x?sslmode=disable");
  EXPECT_EQ(DsnWithDatabase("postgresql://h", "x"), "postgresql://h/x");
  EXPECT_EQ(DsnWithDatabase("host=h dbname=a", "b"), "host=h dbname=a dbname=b");
}

TEST(Store, TwoStoresMigrateTheSameDatabaseTogether) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry m1, m2;
  auto a = Store::Start({dsn}, &m1);
  auto b = Store::Start({dsn}, &m2);
  a->Push(Reading("d", 1));
  b->Push(Reading("d", 2));
  ASSERT_TRUE(a->Flush(absl::Seconds(20)));
  ASSERT_TRUE(b->Flush(absl::Seconds(20)));
  EXPECT_TRUE(a->healthy());
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM devbridge_migrations"), static_cast<int64_t>(Migrations().size()));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), 2);
}

TEST(Store, CreatesAMissingDatabase) {
  const std::string dsn = CreateTestDatabase();
  const std::string fresh = DsnWithDatabase(dsn, dsn.substr(dsn.rfind('/') + 1) + "_new");
  common::MetricsRegistry metrics;
  auto store = Store::Start({fresh}, &metrics);
  store->Push(Reading("d", 1));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(fresh, "SELECT count(*) FROM readings"), 1);
}

TEST(Store, WritesEveryTableAsTheContractSays) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto store = Store::Start({dsn}, &metrics);
  const absl::Time t = absl::FromUnixSeconds(1700000000);
  DeviceRecord online{"d1", true, t, t, std::string(R"({"fw":"1.0"})")};
  DeviceRecord later{"d1", true, t, t + absl::Seconds(30), std::nullopt};
  store->Push(online);
  store->Push(later);
  const std::string id = "7d4f1c2e-3b5a-4c6d-8e9f-0a1b2c3d4e5f";
  CommandRecord queued{id, "d1", t, std::nullopt, "queued", 0, std::string("\x01\x03", 2), std::nullopt, ""};
  CommandRecord sent = queued;
  sent.status = "sent";
  CommandRecord done = queued;
  done.status = "succeeded";
  done.code = 200;
  done.completed_at = t + absl::Milliseconds(40);
  done.response = std::string("\x01\x03\x02\x00\x0a", 5);
  store->Push(queued);
  store->Push(sent);
  store->Push(done);
  ReadingRecord r = Reading("d1", 7);
  r.command_id = id;
  store->Push(r);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));

  pqxx::connection conn(dsn);
  pqxx::read_transaction tx(conn);
  pqxx::row dev = tx.exec1("SELECT online, meta->>'fw', extract(epoch from last_seen)::bigint FROM devices");
  EXPECT_TRUE(dev[0].as<bool>());
  EXPECT_EQ(dev[1].as<std::string>(), "1.0") << "meta kept when a later row has none";
  EXPECT_EQ(dev[2].as<int64_t>(), 1700000030);
  pqxx::row cmd = tx.exec1("SELECT status, code, encode(response, 'hex'), completed_at IS NOT NULL, error IS NULL FROM commands");
  EXPECT_EQ(cmd[0].as<std::string>(), "succeeded");
  EXPECT_EQ(cmd[1].as<int>(), 200);
  EXPECT_EQ(cmd[2].as<std::string>(), "010302000a");
  EXPECT_TRUE(cmd[3].as<bool>());
  EXPECT_TRUE(cmd[4].as<bool>());
  pqxx::row reading = tx.exec1(
      "SELECT command_id::text, encode(raw, 'hex'), \"values\"->'temperature'->>'value', unit, function, address FROM readings");
  EXPECT_EQ(reading[0].as<std::string>(), id);
  EXPECT_EQ(reading[1].as<std::string>(), "0103020007");
  EXPECT_EQ(reading[2].as<std::string>(), "7");
  EXPECT_EQ(reading[3].as<int>(), 1);
  EXPECT_EQ(reading[5].as<int>(), 0);
}

TEST(Store, DatabaseOutageLosesNothingAndPushesBack) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options{dsn};
  options.max_queue_bytes = size_t{64} * 1024;
  options.max_backoff = absl::Milliseconds(200);
  auto store = Store::Start(options, &metrics);
  std::atomic<int> spaces{0};
  store->SetOnSpace([&] { spaces.fetch_add(1); });
  store->Push(Reading("d", 0));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));

  ASSERT_TRUE(Harness("stop-pg"));
  constexpr int kFrames = 2000;
  for (int i = 1; i <= kFrames; ++i) store->Push(Reading("d", i));
  EXPECT_TRUE(store->Full()) << "a queue past its bound must tell the io thread to stop taking";
  EXPECT_FALSE(store->Flush(absl::Milliseconds(300)));
  EXPECT_TRUE(WaitFor([&] { return !store->healthy(); }));
  EXPECT_FALSE(store->writes_failing(absl::Now())) << "not yet: records have waited for less than 10 s";
  EXPECT_TRUE(store->writes_failing(absl::Now() + Store::kWritesFailingAfter + absl::Seconds(1)));
  ASSERT_TRUE(Harness("start-pg"));
  ASSERT_TRUE(store->Flush(absl::Seconds(60)));
  EXPECT_FALSE(store->Full());
  EXPECT_GE(spaces.load(), 1);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), kFrames + 1);
  EXPECT_EQ(Count(dsn, "SELECT count(DISTINCT \"values\"->'temperature'->>'value') FROM readings"), kFrames + 1);
  EXPECT_NE(metrics.Render().find("devbridge_ingest_db_retries_total"), std::string::npos);
  EXPECT_FALSE(store->writes_failing(absl::Now() + absl::Hours(1))) << "nothing waits any more";
}

TEST(Store, ARecordThePostgresRefusesGoesToRejectedAndTheRestIsWritten) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto store = Store::Start({dsn}, &metrics);
  const absl::Time t = absl::FromUnixSeconds(1700000000);
  // jsonb cannot hold a NUL: both of these are refused by PostgreSQL itself (SQLSTATE 22P05).
  ReadingRecord poison = Reading("bad", 500);
  poison.values_json = R"({"fw":{"value":"\u0000","unit":"","raw":[]}})";
  constexpr int kGood = 999;
  for (int i = 0; i < kGood; ++i) {
    store->Push(Reading("d", i));
    if (i == 400) store->Push(poison);
    if (i == 700) store->Push(DeviceRecord{"nul", true, t, t, std::string(R"({"fw":"\u0000"})")});
  }
  store->Push(DeviceRecord{"d", true, t, t, std::string(R"({"fw":"1.0"})")});
  ASSERT_TRUE(store->Flush(absl::Seconds(30))) << "the refused records must not block the writer";
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), kGood);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings WHERE device_id = 'bad'"), 0);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM devices WHERE device_id = 'd'"), 1);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM rejected"), 2);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM rejected WHERE kind = 'reading' AND device_id = 'bad'"
                       " AND payload = '\\x01030200f4'::bytea AND error LIKE '%Unicode%'"), 1);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM rejected WHERE kind = 'device' AND device_id = 'nul'"), 1);
  EXPECT_NE(metrics.Render().find("devbridge_ingest_db_rejected_total 2"), std::string::npos) << metrics.Render();
  // The writer goes on with what comes next.
  store->Push(Reading("d", 5000));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), kGood + 1);
}

TEST(Store, StopIsBoundedWhileTheDatabaseIsAway) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options{dsn};
  options.max_backoff = absl::Milliseconds(200);
  auto store = Store::Start(options, &metrics);
  store->Push(Reading("d", 0));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  ASSERT_TRUE(Harness("stop-pg"));
  for (int i = 1; i <= 100; ++i) store->Push(Reading("d", i));
  EXPECT_TRUE(WaitFor([&] { return !store->healthy(); }));
  // Returns after its timeout and one last failed attempt instead of retrying forever (a
  // hang here fails the test by ctest's timeout).
  store->Stop(absl::Milliseconds(300));
  ASSERT_TRUE(Harness("start-pg"));
}

TEST(Store, GetReadingsReturnsTheLatestOldestFirst) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto store = Store::Start({dsn}, &metrics);
  for (int i = 0; i < 10; ++i) store->Push(Reading("d", i));
  store->Push(Reading("other", 99));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  std::promise<absl::StatusOr<std::vector<v1::CommandResult>>> got;
  store->GetReadings("d", absl::FromUnixMillis(1700000000002), 3,
                     [&](absl::StatusOr<std::vector<v1::CommandResult>> r) { got.set_value(std::move(r)); });
  auto readings = got.get_future().get();
  ASSERT_TRUE(readings.ok()) << readings.status();
  ASSERT_EQ(readings->size(), 3u);
  EXPECT_EQ((*readings)[0].received_at_unix_ms(), 1700000000007);
  EXPECT_EQ((*readings)[2].received_at_unix_ms(), 1700000000009);
  ASSERT_EQ((*readings)[2].values_size(), 1);
  EXPECT_EQ((*readings)[2].values(0).name(), "temperature");
  EXPECT_EQ((*readings)[2].values(0).json_value(), "9");
  EXPECT_EQ((*readings)[2].values(0).unit(), "°C");
  EXPECT_EQ((*readings)[2].response(), std::string("\x01\x03\x02\x00\x09", 5));
}

}  // namespace
}  // namespace devbridge::ingest
