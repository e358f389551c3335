// Store against a real PostgreSQL from the harness: migrations, batched writes, an outage
// in the middle of writing, and queries.
#include "services/ingest/store/store.h"

#include <atomic>
#include <future>
#include <pqxx/pqxx>

#include "gtest/gtest.h"
#include "tests/component/tcp_proxy.h"
#include "tests/component/test_env.h"

namespace devbridge::ingest {
namespace {

using devbridge::testing::CreateTestDatabase;
using devbridge::testing::Harness;
using devbridge::testing::TcpProxy;
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

StoreOptions Options(const std::string& dsn) {
  StoreOptions o;
  o.dsn = dsn;
  return o;
}

void Exec(const std::string& dsn, const std::string& sql) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  tx.exec0(sql);
  tx.commit();
}

int HarnessPgPort() { return std::stoi(std::getenv("DEVBRIDGE_TEST_PG_PORT")); }

// The database of `dsn`, reached through `proxy`.
std::string Through(const TcpProxy& proxy, const std::string& dsn) {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", proxy.port(), "/", dsn.substr(dsn.rfind('/') + 1));
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
  auto a = Store::Start(Options(dsn), &m1);
  auto b = Store::Start(Options(dsn), &m2);
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
  auto store = Store::Start(Options(fresh), &metrics);
  store->Push(Reading("d", 1));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(fresh, "SELECT count(*) FROM readings"), 1);
}

TEST(Store, WritesEveryTableAsTheContractSays) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto store = Store::Start(Options(dsn), &metrics);
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


// Readings go in with COPY's text format, where a tab, a newline and a backslash mean
// something: values carrying them, and the NULL columns, must come back as they went in.
TEST(Store, ReadingsKeepEveryCharacterAndTheirNulls) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto store = Store::Start(Options(dsn), &metrics);
  ReadingRecord r = Reading("d.1:x-y_z", 1);
  r.address = std::nullopt;
  r.raw = std::string("\x5c\x09\x0a\x00\xff", 5);  // backslash, tab, newline, NUL, 0xff
  r.values_json = R"({"name":{"value":"a\tb\nc\\d\r\"e\" °C","unit":"","raw":[]}})";
  store->Push(r);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  pqxx::connection conn(dsn);
  pqxx::read_transaction tx(conn);
  pqxx::row row = tx.exec1(
      "SELECT device_id, command_id IS NULL, address IS NULL, encode(raw, 'hex'), \"values\"->'name'->>'value',"
      " extract(epoch from received_at) * 1000 FROM readings");
  EXPECT_EQ(row[0].as<std::string>(), "d.1:x-y_z");
  EXPECT_TRUE(row[1].as<bool>());
  EXPECT_TRUE(row[2].as<bool>());
  EXPECT_EQ(row[3].as<std::string>(), "5c090a00ff");
  EXPECT_EQ(row[4].as<std::string>(), "a\tb\nc\\d\r\"e\" °C");
  EXPECT_EQ(row[5].as<double>(), 1700000000001.0);
}
TEST(Store, DatabaseOutageLosesNothingAndPushesBack) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options = Options(dsn);
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
  auto store = Store::Start(Options(dsn), &metrics);
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
  StoreOptions options = Options(dsn);
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
  auto store = Store::Start(Options(dsn), &metrics);
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

TEST(Store, TheCheckpointMovesInTheTransactionThatCompletesItsMessages) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options = Options(dsn);
  options.spool_id = "spool-a";
  std::promise<uint64_t> ready;
  std::atomic<uint64_t> committed{0};
  auto store = Store::Start(
      options, &metrics, [&](uint64_t c) { ready.set_value(c); }, [&](uint64_t c) { committed = c; });
  EXPECT_EQ(ready.get_future().get(), 0u) << "a new spool has no checkpoint";
  std::vector<StoreRecord> m10 = {Reading("d", 1), Reading("d", 2)};
  store->PushMessage(&m10, 10);  // the records of the message at spool position 10
  EXPECT_TRUE(m10.empty());
  std::vector<StoreRecord> m12 = {Reading("d", 3)};
  store->PushMessage(&m12, 12);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-a'"), 12);
  EXPECT_EQ(committed.load(), 12u);
  // Messages that produced no record: the next record committed carries their mark.
  std::vector<StoreRecord> nothing;
  store->PushMessage(&nothing, 15);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-a'"), 12);
  store->Push(Reading("d", 4));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-a'"), 15);
  store->Stop(absl::Seconds(5));

  // The next start reads it back.
  common::MetricsRegistry again;
  std::promise<uint64_t> ready2;
  auto second = Store::Start(options, &again, [&](uint64_t c) { ready2.set_value(c); });
  EXPECT_EQ(ready2.get_future().get(), 15u);
}

TEST(Store, AWriterWhoseFenceWasOvertakenWritesNothingMore) {
  // Two owners of one cluster partition, one after the other: the first may not know yet that
  // its lease ran out, and must not store what the second stores again from the checkpoint.
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  auto start = [&](uint64_t fence, std::promise<uint64_t>* ready) {
    StoreOptions options = Options(dsn);
    options.spool_id = "partition-3";
    options.fence = fence;
    options.register_gauges = false;
    return Store::Start(options, &metrics, [ready](uint64_t c) { ready->set_value(c); });
  };
  auto message = [](Store* store, const std::string& device, uint64_t seq) {
    std::vector<StoreRecord> records = {Reading(device, static_cast<int>(seq))};
    store->PushMessage(&records, seq);
  };
  std::promise<uint64_t> first_ready;
  auto first = start(10, &first_ready);
  EXPECT_EQ(first_ready.get_future().get(), 0u);
  message(first.get(), "first", 5);
  ASSERT_TRUE(first->Flush(absl::Seconds(20)));

  std::promise<uint64_t> second_ready;
  auto second = start(20, &second_ready);
  EXPECT_EQ(second_ready.get_future().get(), 5u) << "the next owner starts after what the first stored";
  message(first.get(), "first-late", 6);  // the first owner has not heard yet
  ASSERT_TRUE(first->Flush(absl::Seconds(20)));
  EXPECT_TRUE(first->fenced());
  message(second.get(), "second", 6);
  ASSERT_TRUE(second->Flush(absl::Seconds(20)));
  EXPECT_FALSE(second->fenced());
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings WHERE device_id = 'first-late'"), 0);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings WHERE device_id = 'second'"), 1);
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'partition-3'"), 6);

  // An owner that starts late with an older token writes nothing at all.
  std::promise<uint64_t> stale_ready;
  auto stale = start(15, &stale_ready);
  ASSERT_TRUE(WaitFor([&] { return stale->fenced(); }, absl::Seconds(20)));
  message(stale.get(), "stale", 7);
  ASSERT_TRUE(stale->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings WHERE device_id = 'stale'"), 0);
  EXPECT_EQ(Count(dsn, "SELECT fence FROM spool_checkpoints WHERE spool_id = 'partition-3'"), 20);
  EXPECT_EQ(metrics.AddCounter("devbridge_ingest_db_fenced_records_total", "").Value(), 2u);
}

TEST(Store, AMessagesRecordsAreNeverSplitBetweenTransactions) {
  // A transaction holding part of a message's records would, after a crash, have the replay
  // of that message write that part again.
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options = Options(dsn);
  options.spool_id = "spool-s";
  options.max_batch = 4;  // smaller than two messages
  auto store = Store::Start(options, &metrics);
  constexpr int kMessages = 30;
  for (int m = 0; m < kMessages; ++m) {
    std::vector<StoreRecord> records = {Reading("d", 3 * m), Reading("d", 3 * m + 1), Reading("d", 3 * m + 2)};
    store->PushMessage(&records, static_cast<uint64_t>(m + 1));
  }
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), 3 * kMessages);
  // xmin: the transaction that inserted the row. Readings 3m..3m+2 are message m's.
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM (SELECT (extract(epoch from received_at) * 1000)::bigint % 1000 / 3 AS m"
                       " FROM readings GROUP BY m HAVING count(DISTINCT xmin::text) > 1) split"),
            0);
  EXPECT_GT(Count(dsn, "SELECT count(DISTINCT xmin::text) FROM readings"), 1) << "several transactions";
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-s'"), kMessages);
}

TEST(Store, ARefusedRecordStillMovesTheCheckpoint) {
  const std::string dsn = CreateTestDatabase();
  common::MetricsRegistry metrics;
  StoreOptions options = Options(dsn);
  options.spool_id = "spool-r";
  auto store = Store::Start(options, &metrics);
  ReadingRecord poison = Reading("bad", 1);
  poison.values_json = R"({"fw":{"value":"\u0000","unit":"","raw":[]}})";
  std::vector<StoreRecord> m7 = {Reading("d", 1), poison};  // the refused record is the last of message 7
  store->PushMessage(&m7, 7);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM rejected"), 1);
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-r'"), 7);
}

TEST(Store, CommandsACrashLeftOpenAreFailedAtTheNextStart) {
  const std::string dsn = CreateTestDatabase();
  {
    common::MetricsRegistry metrics;
    std::promise<uint64_t> ready;
    auto store = Store::Start(Options(dsn), &metrics, [&](uint64_t c) { ready.set_value(c); });
    ready.get_future().get();  // migrated
  }
  Exec(dsn,
       "INSERT INTO commands (command_id, device_id, requested_at, status, code, request) VALUES"
       " ('00000000-0000-0000-0000-000000000001', 'd', now() - interval '1 minute', 'queued', 0, '\\x01'),"
       " ('00000000-0000-0000-0000-000000000002', 'd', now() - interval '1 minute', 'sent', 0, '\\x01'),"
       " ('00000000-0000-0000-0000-000000000003', 'd', now() - interval '1 minute', 'succeeded', 200, '\\x01'),"
       " ('00000000-0000-0000-0000-000000000004', 'd', now() + interval '1 hour', 'queued', 0, '\\x01')");
  common::MetricsRegistry metrics;
  StoreOptions options = Options(dsn);
  options.started = absl::Now();
  std::promise<uint64_t> ready;
  auto store = Store::Start(options, &metrics, [&](uint64_t c) { ready.set_value(c); });
  ready.get_future().get();
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM commands WHERE status = 'failed' AND code = 503"
                       " AND completed_at IS NOT NULL AND error <> ''"),
            2);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM commands WHERE status = 'succeeded'"), 1);
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM commands WHERE status = 'queued'"), 1)
      << "a command of this run (requested after it started) is left alone";
}

TEST(Store, AStatementHangingOnASilentNetworkIsAbandonedAndRetried) {
  const std::string dsn = CreateTestDatabase();
  TcpProxy proxy(HarnessPgPort());
  const std::string via = Through(proxy, dsn);
  common::MetricsRegistry metrics;
  StoreOptions options = Options(via);
  options.statement_timeout = absl::Seconds(1);
  options.max_backoff = absl::Milliseconds(200);
  auto store = Store::Start(options, &metrics);
  store->Push(Reading("d", 0));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  proxy.Freeze(true);
  for (int i = 1; i <= 50; ++i) store->Push(Reading("d", i));
  EXPECT_TRUE(WaitFor([&] { return metrics.Render().find("devbridge_ingest_db_abandoned_total 0") == std::string::npos; },
                      absl::Seconds(10)))
      << "the writer must give up on the hanging statement";
  EXPECT_FALSE(store->Flush(absl::Milliseconds(500)));
  proxy.Freeze(false);
  ASSERT_TRUE(store->Flush(absl::Seconds(30)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), 51);
  EXPECT_EQ(Count(dsn, "SELECT count(DISTINCT raw) FROM readings"), 51) << "nothing twice";
}

TEST(Store, ACommitWhoseAnswerIsLostIsNotWrittenTwice) {
  const std::string dsn = CreateTestDatabase();
  TcpProxy proxy(HarnessPgPort());
  const std::string via = Through(proxy, dsn);
  common::MetricsRegistry metrics;
  StoreOptions options = Options(via);
  options.spool_id = "spool-u";
  options.statement_timeout = absl::Seconds(1);
  options.max_backoff = absl::Milliseconds(200);
  auto store = Store::Start(options, &metrics);
  std::vector<StoreRecord> first = {Reading("d", 0)};
  store->PushMessage(&first, 1);
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  proxy.FreezeAnswersAfter("COMMIT");
  for (int i = 1; i <= 20; ++i) {
    std::vector<StoreRecord> m = {Reading("d", i)};
    store->PushMessage(&m, static_cast<uint64_t>(i + 1));
  }
  // The whole batch and its COMMIT reach PostgreSQL; the answer does not come back.
  ASSERT_TRUE(WaitFor([&] { return Count(dsn, "SELECT count(*) FROM readings") == 21; }, absl::Seconds(10)));
  EXPECT_TRUE(WaitFor([&] { return metrics.Render().find("devbridge_ingest_db_abandoned_total 0") == std::string::npos; },
                      absl::Seconds(10)));
  proxy.ThawAnswers();
  ASSERT_TRUE(store->Flush(absl::Seconds(30)));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), 21) << "the committed batch must not be written again";
  EXPECT_EQ(Count(dsn, "SELECT seq FROM spool_checkpoints WHERE spool_id = 'spool-u'"), 21);
}

TEST(Store, StopReturnsWhileAStatementHangs) {
  const std::string dsn = CreateTestDatabase();
  TcpProxy proxy(HarnessPgPort());
  const std::string via = Through(proxy, dsn);
  common::MetricsRegistry metrics;
  StoreOptions options = Options(via);
  options.statement_timeout = absl::Hours(1);  // the watchdog's own timeout never fires here
  auto store = Store::Start(options, &metrics);
  store->Push(Reading("d", 0));
  ASSERT_TRUE(store->Flush(absl::Seconds(20)));
  proxy.Freeze(true);
  store->Push(Reading("d", 1));
  // Whether the writer is inside the statement or about to start it, Stop() abandons it
  // (a hang fails the test by ctest's timeout).
  store->Stop(absl::Milliseconds(500));
  EXPECT_EQ(Count(dsn, "SELECT count(*) FROM readings"), 1);
  proxy.Freeze(false);
}

}  // namespace
}  // namespace devbridge::ingest
