// The bus against a real 3-server JetStream cluster (nats-server processes of its own):
// offsets stay contiguous with several writers and through a server's kill -9, readers find
// where to go on, and leases have one holder at a time and move when their holder goes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "bus/connection.h"
#include "bus/durable_reader.h"
#include "bus/leases.h"
#include "bus/offset_log.h"
#include "bus/subject_reader.h"
#include "common/mutex.h"
#include "tests/component/nats_cluster.h"
#include "tests/component/test_env.h"

namespace devbridge::bus {
namespace {

using testing::NatsCluster;

class BusTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new NatsCluster(3);
    ASSERT_TRUE(cluster_->WaitHealthy()) << "see " << cluster_->log(0);
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  // A connection to the servers in `urls` (all of them by default).
  std::unique_ptr<Connection> Connect(std::string urls = "") {
    ConnectionOptions options;
    options.urls = *ParseBusFlag(urls.empty() ? cluster_->urls() : urls);
    options.name = "bus_component_test";
    absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Connect(options);
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.ok() ? *std::move(connection) : nullptr;
  }

  // A stream of 3 replicas of its own for the running test, created once the cluster has a
  // JetStream leader (right after start, that takes a moment).
  std::string NewStream(const Connection& connection) {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    StreamSpec spec{name, {name + ".>"}, 3};
    absl::Status created;
    EXPECT_TRUE(testing::WaitFor([&] { return (created = EnsureStream(connection, spec)).ok(); },
                                 absl::Seconds(30)))
        << created;
    return name;
  }

  // Every message of `stream`, in order: subject → (offset → data).
  static std::map<std::string, std::map<uint64_t, std::string>> ReadAll(OffsetLog& log, const Connection& connection,
                                                                        const std::string& stream) {
    std::map<std::string, std::map<uint64_t, std::string>> all;
    const uint64_t last = *LastSequence(connection, stream);
    for (uint64_t seq = 1; seq <= last; ++seq) {
      absl::StatusOr<OffsetLog::Message> message = log.Read(seq);
      if (!message.ok()) {
        ADD_FAILURE() << message.status();
        continue;
      }
      EXPECT_TRUE(all[message->subject].emplace(message->position.offset, message->data).second)
          << "offset " << message->position.offset << " twice on " << message->subject;
    }
    return all;
  }

  // Runs `write` as writer "a" on `a` and as writer "b" on `b`, at once.
  static void Together(const std::function<void(Connection*, const std::string&)>& write, Connection* a,
                       Connection* b) {
    std::thread ta(write, a, "a");
    std::thread tb(write, b, "b");
    ta.join();
    tb.join();
  }

  // Messages written as "<name>@<offset>": each must have been built for the offset it was
  // stored with, and no name may come twice (`seen` collects them). Returns how many there were.
  static size_t ExpectEachBuiltForItsOffset(const std::map<uint64_t, std::string>& messages,
                                            std::set<std::string>* seen) {
    for (const auto& [offset, data] : messages) {
      EXPECT_EQ(data.substr(data.find('@') + 1), absl::StrCat(offset));
      EXPECT_TRUE(seen->insert(data.substr(0, data.find('@'))).second) << data << " twice";
    }
    return messages.size();
  }

  // True when the offsets of `messages` are start, start + 1, … with none missing.
  static bool Contiguous(const std::map<uint64_t, std::string>& messages) {
    if (messages.empty()) return true;
    return messages.rbegin()->first - messages.begin()->first + 1 == messages.size();
  }

  static NatsCluster* cluster_;
};

NatsCluster* BusTest::cluster_ = nullptr;

TEST_F(BusTest, TwoWritersOnOneSubjectGiveContiguousOffsets) {
  std::unique_ptr<Connection> a = Connect(cluster_->url(0));
  std::unique_ptr<Connection> b = Connect(cluster_->url(1));
  ASSERT_TRUE(a && b);
  const std::string stream = NewStream(*a);
  const std::string subject = stream + ".s.plant";
  constexpr int kEach = 200;
  std::atomic<uint64_t> conflicts{0};
  // Two writers of one subject at once, in bursts of 10 with pauses of up to 10 ms: each
  // burst finds the other's appends in between, and bursts overlap at times. (A writer flat
  // out would starve the other: JetStream's check is fair to nobody, which is why a stream
  // has one writer at a time and this is about handovers.)
  auto write = [&](Connection* connection, const std::string& who) {
    OffsetLog log(connection, stream);
    absl::BitGen random;
    for (int i = 0; i < kEach; ++i) {
      if (i % 10 == 0) absl::SleepFor(absl::Microseconds(absl::Uniform(random, 0, 10000)));
      absl::StatusOr<Position> appended =
          log.Append(subject, "", [&](uint64_t offset) { return absl::StrCat(who, i, "@", offset); });
      ASSERT_TRUE(appended.ok()) << appended.status();
    }
    conflicts += log.conflicts();
  };
  Together(write, a.get(), b.get());

  OffsetLog reader(a.get(), stream);
  auto all = ReadAll(reader, *a, stream);
  const auto& messages = all[subject];
  ASSERT_EQ(messages.size(), 2u * kEach);
  EXPECT_TRUE(Contiguous(messages));
  std::set<std::string> seen;
  ExpectEachBuiltForItsOffset(messages, &seen);
  std::cout << "conflicts retried: " << conflicts << "\n";
  EXPECT_GT(conflicts.load(), 0u) << "the writers never raced: the test proves nothing";
}

TEST_F(BusTest, ANewSubjectStartsAboveEveryOffsetItCouldHaveHad) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  OffsetLog log(connection.get(), stream);
  auto body = [](uint64_t) { return std::string("x"); };
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(log.Append(stream + ".s.a", "", body).ok());
  absl::StatusOr<Position> first_b = log.Append(stream + ".s.b", "", body);
  ASSERT_TRUE(first_b.ok()) << first_b.status();
  EXPECT_EQ(first_b->offset, 4u);  // the stream held 3 messages
  EXPECT_EQ(first_b->sequence, 4u);

  // All of b's messages gone: b starts again above the stream's last sequence, not at 1.
  ASSERT_TRUE(log.Append(stream + ".s.b", "", body).ok());
  jsOptions purge;
  jsOptions_Init(&purge);
  const std::string b = stream + ".s.b";
  purge.Stream.Purge.Subject = b.c_str();
  ASSERT_EQ(js_PurgeStream(connection->js(), stream.c_str(), &purge, nullptr), NATS_OK);
  OffsetLog fresh(connection.get(), stream);  // no cache of what b had
  absl::StatusOr<Position> again = fresh.Append(b, "", body);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->offset, 6u);
}

TEST_F(BusTest, ARepeatedIdIsStoredOnce) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  OffsetLog log(connection.get(), stream);
  auto body = [](uint64_t offset) { return absl::StrCat("at ", offset); };
  absl::StatusOr<Position> first = log.Append(stream + ".s.a", "ingest-1:42", body);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(log.Append(stream + ".s.a", "ingest-1:43", body).ok());
  // Another writer (a restarted one, say) sends message 42 again.
  OffsetLog other(connection.get(), stream);
  absl::StatusOr<Position> repeated = other.Append(stream + ".s.a", "ingest-1:42", body);
  ASSERT_TRUE(repeated.ok()) << repeated.status();
  EXPECT_EQ(repeated->sequence, first->sequence);
  EXPECT_EQ(repeated->offset, first->offset);
  EXPECT_EQ(*LastSequence(*connection, stream), 2u);
}

TEST_F(BusTest, LocateFindsWhereAReaderGoesOn) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  OffsetLog log(connection.get(), stream);
  const std::string a = stream + ".s.a";
  std::vector<Position> of_a;
  // a's messages interleaved with others', irregularly, so the search has gaps to cross.
  for (int i = 0; i < 60; ++i) {
    absl::StatusOr<Position> appended = log.Append(a, "", [](uint64_t) { return std::string("a"); });
    ASSERT_TRUE(appended.ok()) << appended.status();
    of_a.push_back(*appended);
    for (int j = 0; j < i % 7; ++j) {
      ASSERT_TRUE(log.Append(stream + ".g.x." + std::to_string(j), "", [](uint64_t) { return std::string("o"); }).ok());
    }
  }
  for (size_t i = 0; i + 1 < of_a.size(); ++i) {
    absl::StatusOr<Resume> resume = log.Locate(a, of_a[i].offset);
    ASSERT_TRUE(resume.ok()) << resume.status();
    EXPECT_EQ(resume->kind, Resume::kNext) << i;
    EXPECT_EQ(resume->sequence, of_a[i + 1].sequence) << i;
  }
  EXPECT_EQ(log.Locate(a, of_a.back().offset)->kind, Resume::kUpToDate);
  EXPECT_EQ(log.Locate(a, of_a.back().offset + 1)->kind, Resume::kGone);  // a future it never had
  EXPECT_EQ(log.Locate(stream + ".s.none", 5)->kind, Resume::kGone);

  // Keep a's last 10: a reader that saw the 49th goes on at the 51st; one that saw less is gone.
  jsOptions purge;
  jsOptions_Init(&purge);
  purge.Stream.Purge.Subject = a.c_str();
  purge.Stream.Purge.Keep = 10;
  ASSERT_EQ(js_PurgeStream(connection->js(), stream.c_str(), &purge, nullptr), NATS_OK);
  absl::StatusOr<Resume> resume = log.Locate(a, of_a[49].offset);
  ASSERT_TRUE(resume.ok()) << resume.status();
  EXPECT_EQ(resume->kind, Resume::kNext);
  EXPECT_EQ(resume->sequence, of_a[50].sequence);
  EXPECT_EQ(log.Locate(a, of_a[48].offset)->kind, Resume::kGone);
  EXPECT_EQ(log.Locate(a, of_a[0].offset)->kind, Resume::kGone);
}

// The server that leads `stream` now ("" if unknown).
std::string Leader(const Connection& connection, const std::string& stream) {
  jsStreamInfo* info = nullptr;
  std::string leader;
  if (js_GetStreamInfo(&info, connection.js(), stream.c_str(), nullptr, nullptr) == NATS_OK && info->Cluster != nullptr &&
      info->Cluster->Leader != nullptr) {
    leader = info->Cluster->Leader;
  }
  jsStreamInfo_Destroy(info);
  return leader;
}

// Two ingest replicas creating the event stream at once, each with an epoch of its own, and
// readers answered by whichever server leads the stream: one epoch for all. (nats-server 2.9
// gives each server's copy its own creation time, which named the epoch before.)
TEST_F(BusTest, EveryCreatorAndEveryServerAgreeOnTheStreamsEpoch) {
  std::unique_ptr<Connection> a = Connect(cluster_->url(0));
  std::unique_ptr<Connection> b = Connect(cluster_->url(2));
  ASSERT_TRUE(a && b);
  // Once JetStream has a leader (right after the suite's start, that takes a moment).
  ASSERT_TRUE(testing::WaitFor([&] { return EnsureStream(*a, {"WARMUP", {"warmup.>"}, 3}).ok(); }, absl::Seconds(30)));
  const std::string name = "EPOCHS";
  absl::Status created[2];
  {
    std::thread other([&] { created[1] = EnsureStream(*b, {name, {"epochs.>"}, 3, {}, -1, NewEpochDescription()}); });
    created[0] = EnsureStream(*a, {name, {"epochs.>"}, 3, {}, -1, NewEpochDescription()});
    other.join();
  }
  ASSERT_TRUE(created[0].ok()) << created[0];
  ASSERT_TRUE(created[1].ok()) << created[1];
  absl::StatusOr<std::string> epoch = StreamEpoch(*a, name);
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(epoch->size(), 4u + 16u) << *epoch << ": bus- and the creator's id";
  std::set<std::string> seen;
  std::set<std::string> leaders{Leader(*a, name)};
  for (int round = 0; round < 3; ++round) {
    for (Connection* c : {a.get(), b.get()}) {
      absl::StatusOr<std::string> e = StreamEpoch(*c, name);
      ASSERT_TRUE(e.ok()) << e.status();
      seen.insert(*e);
    }
    // Another server leads the stream from now on. (The step-down's answer may come after
    // the request's timeout on a busy machine, or not at all: the leader is what counts.)
    const std::string before = Leader(*a, name);
    const std::string subject = absl::StrCat("$JS.API.STREAM.LEADER.STEPDOWN.", name);
    EXPECT_TRUE(testing::WaitFor(
        [&] {
          natsMsg* reply = nullptr;
          natsConnection_RequestString(&reply, a->nc(), subject.c_str(), "", 2000);
          natsMsg_Destroy(reply);
          return testing::WaitFor([&] { const std::string now = Leader(*a, name); return !now.empty() && now != before; },
                                  absl::Seconds(5));
        },
        absl::Seconds(30)))
        << "the stream's leader stayed " << before;
    leaders.insert(Leader(*a, name));
  }
  EXPECT_GE(leaders.size(), 2u);
  EXPECT_EQ(seen, std::set<std::string>{*epoch});
}

TEST_F(BusTest, AppendsGoOnThroughAServersKill9) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string subject = stream + ".s.plant";
  OffsetLog log(connection.get(), stream);
  int retries = 0;
  auto append = [&](int i) {
    // As a writer does: the same id on every try, so a try whose answer was lost is not stored twice.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (;;) {
      absl::StatusOr<Position> appended =
          log.Append(subject, absl::StrCat("m", i), [&](uint64_t) { return absl::StrCat("m", i); });
      if (appended.ok()) return true;
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "message " << i << ": " << appended.status();
        return false;
      }
      ++retries;
      absl::SleepFor(absl::Milliseconds(50));
    }
  };
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(append(i));
  cluster_->Kill(0);
  for (int i = 100; i < 200; ++i) ASSERT_TRUE(append(i));
  ASSERT_TRUE(cluster_->Rejoin(0));
  for (int i = 200; i < 300; ++i) ASSERT_TRUE(append(i));

  auto all = ReadAll(log, *connection, stream);
  const auto& messages = all[subject];
  EXPECT_EQ(messages.size(), 300u);
  EXPECT_TRUE(Contiguous(messages));
  std::set<std::string> distinct;
  for (const auto& [offset, data] : messages) distinct.insert(data);
  EXPECT_EQ(distinct.size(), 300u);
  std::cout << "tries that failed while a server was down: " << retries << "\n";
}

TEST_F(BusTest, BatchesArePipelinedAndStayContiguousWithTwoWriters) {
  std::unique_ptr<Connection> a = Connect(cluster_->url(0));
  std::unique_ptr<Connection> b = Connect(cluster_->url(2));
  ASSERT_TRUE(a && b);
  const std::string stream = NewStream(*a);
  constexpr int kBatches = 20, kBatch = 50;
  std::atomic<uint64_t> conflicts{0};
  // Each writer: batches of 50 over 5 subjects (both write all 5), pausing up to 10 ms
  // between batches, so batches of the two meet now and then.
  auto write = [&](Connection* connection, const std::string& who) {
    OffsetLog log(connection, stream);
    absl::BitGen random;
    for (int batch = 0; batch < kBatches; ++batch) {
      absl::SleepFor(absl::Microseconds(absl::Uniform(random, 0, 10000)));
      std::vector<OffsetLog::Entry> entries;
      for (int i = 0; i < kBatch; ++i) {
        const std::string id = absl::StrCat(who, "-", batch, "-", i);
        entries.push_back({absl::StrCat(stream, ".s.", i % 5), id,
                           [id](uint64_t offset) { return absl::StrCat(id, "@", offset); }});
      }
      std::vector<Position> appended;
      absl::Status status = log.AppendBatch(entries, &appended);
      ASSERT_TRUE(status.ok()) << status;
      ASSERT_EQ(appended.size(), entries.size());
    }
    conflicts += log.conflicts();
  };
  Together(write, a.get(), b.get());

  OffsetLog reader(a.get(), stream);
  auto all = ReadAll(reader, *a, stream);
  std::set<std::string> seen;
  size_t total = 0;
  for (const auto& [subject, messages] : all) {
    EXPECT_TRUE(Contiguous(messages)) << subject;
    total += ExpectEachBuiltForItsOffset(messages, &seen);
  }
  EXPECT_EQ(total, 2u * kBatches * kBatch);
  std::cout << "batch conflicts retried: " << conflicts << "\n";
}

// A batch refused once (another writer appended first) goes again under new names:
// nats-server 2.10 notes an id before it knows whether the message will be stored, and would
// answer the same name again "duplicate of sequence 0" for the whole duplicate window.
TEST_F(BusTest, AnEntryRefusedOnceIsStoredUnderANewName) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string subject = stream + ".s.a";
  auto body = [](uint64_t offset) { return absl::StrCat("at ", offset); };
  OffsetLog a(connection.get(), stream);
  OffsetLog b(connection.get(), stream);
  std::vector<Position> appended;
  ASSERT_TRUE(b.AppendBatch({{subject, "b-0", body}}, &appended).ok());  // b knows the stream's end
  ASSERT_TRUE(a.AppendBatch({{subject, "a-0", body}}, &appended).ok());  // and now it is wrong
  absl::Status status = b.AppendBatch({{subject, "b-1", body}, {subject, "b-2", body}}, &appended);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(b.conflicts(), 1u);
  ASSERT_EQ(appended.size(), 2u);
  EXPECT_EQ(appended[0].offset, 3u);
  EXPECT_EQ(appended[1].offset, 4u);
  absl::StatusOr<OffsetLog::Message> first = b.Read(appended[0].sequence);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->id, "b-1~1");
  // An entry stored under its own name keeps it.
  ASSERT_TRUE(b.AppendBatch({{subject, "b-3", body}}, &appended).ok());
  absl::StatusOr<OffsetLog::Message> own = b.Read(appended[0].sequence);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->id, "b-3");
  // Refused again, another entry gets a name of its own, not one used before.
  ASSERT_TRUE(a.AppendBatch({{subject, "a-1", body}}, &appended).ok());
  ASSERT_TRUE(b.AppendBatch({{subject, "b-4", body}}, &appended).ok());
  absl::StatusOr<OffsetLog::Message> renamed = b.Read(appended[0].sequence);
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  EXPECT_TRUE(absl::StartsWith(renamed->id, "b-4~")) << renamed->id;
  EXPECT_EQ(renamed->position.offset, 7u);
  EXPECT_EQ(b.conflicts(), 2u);
}

// A writer that never stops (a replica with a backlog) and one that comes now and then, both
// over the same 100 subjects: the second one gets its turns (before the turn requests and the
// look-ups of a batch's subjects at once, it was refused for as long as the first one wrote).
TEST_F(BusTest, AWriterRefusedAgainAndAgainGetsItsTurn) {
  std::unique_ptr<Connection> a = Connect(cluster_->url(0));
  std::unique_ptr<Connection> b = Connect(cluster_->url(2));
  ASSERT_TRUE(a && b);
  const std::string stream = NewStream(*a);
  auto batch_of = [&](const std::string& who, int batch) {
    std::vector<OffsetLog::Entry> entries;
    for (int i = 0; i < 100; ++i) {
      const std::string id = absl::StrCat(who, "-", batch, "-", i);
      entries.push_back({absl::StrCat(stream, ".s.", i), id, [id](uint64_t offset) { return absl::StrCat(id, "@", offset); }});
    }
    return entries;
  };
  std::atomic<bool> late_done{false};
  std::atomic<int> busy_batches{0};
  std::thread busy([&] {
    OffsetLog log(b.get(), stream);
    for (int batch = 0; !late_done; ++batch) {
      std::vector<Position> appended;
      std::vector<OffsetLog::Entry> entries = batch_of("busy", batch);
      while (!late_done && !log.AppendBatch(entries, &appended).ok()) {
        entries.erase(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(appended.size()));
      }
      ++busy_batches;
    }
  });
  OffsetLog log(a.get(), stream);
  int refused = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  constexpr int kLate = 10;
  int done = 0;
  for (; done < kLate && absl::Now() < deadline; ++done) {
    absl::SleepFor(absl::Milliseconds(20));
    std::vector<OffsetLog::Entry> entries = batch_of("late", done);
    std::vector<Position> appended;
    absl::Status status;
    while (!(status = log.AppendBatch(entries, &appended)).ok() && absl::Now() < deadline) {
      ASSERT_TRUE(absl::IsAborted(status)) << status;  // refused for 5 s
      ++refused;
      entries.erase(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(appended.size()));
    }
  }
  late_done = true;
  busy.join();
  EXPECT_EQ(done, kLate) << "the late writer did not get its turns in a minute";
  EXPECT_GT(busy_batches.load(), 0);
  std::cout << "late writer: " << done << " batches, refused for 5 s " << refused << " time(s), "
            << log.conflicts() << " conflicts; busy writer: " << busy_batches << " batches\n";
  OffsetLog reader(a.get(), stream);
  std::set<std::string> seen;
  for (const auto& [subject, messages] : ReadAll(reader, *a, stream)) {
    EXPECT_TRUE(Contiguous(messages)) << subject;
    ExpectEachBuiltForItsOffset(messages, &seen);
  }
}

// Not a pass/fail timing: prints what one writer gets from the cluster both ways.
TEST_F(BusTest, PrintsAppendRates) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  OffsetLog log(connection.get(), stream);
  auto body = [](uint64_t) { return std::string(200, 'x'); };
  constexpr int kEach = 1000;
  absl::Time start = absl::Now();
  for (int i = 0; i < kEach; ++i) ASSERT_TRUE(log.Append(absl::StrCat(stream, ".s.", i % 10), "", body).ok());
  const double one_by_one = kEach / absl::ToDoubleSeconds(absl::Now() - start);
  start = absl::Now();
  for (int batch = 0; batch < kEach / 100; ++batch) {
    std::vector<OffsetLog::Entry> entries;
    for (int i = 0; i < 100; ++i) entries.push_back({absl::StrCat(stream, ".s.", i % 10), absl::StrCat("r", batch, "-", i), body});
    std::vector<Position> appended;
    ASSERT_TRUE(log.AppendBatch(entries, &appended).ok());
  }
  const double batched = kEach / absl::ToDoubleSeconds(absl::Now() - start);
  std::cout << "appends/s to a 3-replica stream, 200-byte messages: one at a time " << static_cast<int>(one_by_one)
            << ", in batches of 100 " << static_cast<int>(batched) << "\n";
  EXPECT_EQ(*LastSequence(*connection, stream), 2u * kEach);
}

// What a reader got: offsets in the order they came, guarded for the client's thread.
struct Received {
  common::Mutex mu;
  std::vector<uint64_t> offsets;
  std::set<std::string> subjects;
  size_t size() {
    common::MutexLock lock(&mu);
    return offsets.size();
  }
  SubjectReader::OnMessage Sink() {
    return [this](Position position, absl::string_view subject, absl::string_view) {
      common::MutexLock lock(&mu);
      offsets.push_back(position.offset);
      subjects.emplace(subject);
    };
  }
};

// Appends `n` messages to subject `a` of `stream`, each followed by one to another subject;
// a's positions go to `of_a` (may be null).
void AppendBetweenOthers(OffsetLog& log, const std::string& stream, const std::string& a, int n,
                         std::vector<Position>* of_a) {
  auto body = [](uint64_t offset) { return absl::StrCat(offset); };
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<Position> at = log.Append(a, "", body);
    ASSERT_TRUE(at.ok()) << at.status();
    if (of_a != nullptr) of_a->push_back(*at);
    ASSERT_TRUE(log.Append(stream + ".s.other", "", body).ok());
  }
}

TEST_F(BusTest, AReaderFromLocateGetsEveryLaterMessageOnceInOrder) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string a = stream + ".s.a";
  OffsetLog log(connection.get(), stream);
  std::vector<Position> of_a;
  ASSERT_NO_FATAL_FAILURE(AppendBetweenOthers(log, stream, a, 40, &of_a));
  // A client saw a's 30th message; it goes on from the 31st while a keeps growing.
  absl::StatusOr<Resume> resume = log.Locate(a, of_a[29].offset);
  ASSERT_TRUE(resume.ok() && resume->kind == Resume::kNext) << resume.status();
  Received received;
  absl::StatusOr<std::unique_ptr<SubjectReader>> reader =
      SubjectReader::Start(connection.get(), stream, a, resume->sequence, received.Sink());
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_NO_FATAL_FAILURE(AppendBetweenOthers(log, stream, a, 100, &of_a));
  ASSERT_TRUE(testing::WaitFor([&] { return received.size() >= 110; }));
  reader->reset();
  common::MutexLock lock(&received.mu);
  ASSERT_EQ(received.offsets.size(), 110u);
  for (size_t i = 0; i < received.offsets.size(); ++i) {
    EXPECT_EQ(received.offsets[i], of_a[30 + i].offset) << i;
  }
  EXPECT_EQ(received.subjects, std::set<std::string>{a});
}

TEST_F(BusTest, AStoppedReaderReadsOnFromTheStreamWhereItStopped) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string a = stream + ".s.a";
  OffsetLog log(connection.get(), stream);
  ASSERT_NO_FATAL_FAILURE(AppendBetweenOthers(log, stream, a, 5, nullptr));
  Received received;
  absl::StatusOr<std::unique_ptr<SubjectReader>> reader =
      SubjectReader::Start(connection.get(), stream, a, 1, received.Sink());
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(testing::WaitFor([&] { return received.size() >= 5; }));
  (*reader)->Stop();
  EXPECT_TRUE((*reader)->stopped());
  const uint64_t stopped_at = (*reader)->last_sequence();
  ASSERT_NO_FATAL_FAILURE(AppendBetweenOthers(log, stream, a, 5, nullptr));
  EXPECT_EQ(received.size(), 5u) << "a stopped reader hands nothing over by itself";
  EXPECT_EQ(*(*reader)->ReadOn(3), 3u);
  EXPECT_EQ(*(*reader)->ReadOn(100), 2u);
  EXPECT_EQ(*(*reader)->ReadOn(100), 0u);
  EXPECT_GT((*reader)->last_sequence(), stopped_at);
  common::MutexLock lock(&received.mu);
  ASSERT_EQ(received.offsets.size(), 10u);
  for (size_t i = 0; i < received.offsets.size(); ++i) EXPECT_EQ(received.offsets[i], i + 1) << i;
  EXPECT_EQ(received.subjects, std::set<std::string>{a});
}

// A reader counts a jump in its subject's offsets (events missing from the stream) and goes
// on; one that knows the offset before where it starts finds a jump right there too.
TEST_F(BusTest, AReaderCountsAJumpInTheOffsets) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string a = stream + ".s.a";
  OffsetLog log(connection.get(), stream);
  std::vector<Position> of_a;
  ASSERT_NO_FATAL_FAILURE(AppendBetweenOthers(log, stream, a, 4, &of_a));
  common::MetricsRegistry metrics;
  ReaderTracking tracking{of_a[0].offset, &metrics.AddCounter("repeated", ""), &metrics.AddCounter("gaps", "")};
  Received received;
  // As if a#1 came last: a#2 is missing before a#3.
  absl::StatusOr<std::unique_ptr<SubjectReader>> reader =
      SubjectReader::Start(connection.get(), stream, a, of_a[2].sequence, received.Sink(), tracking);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(testing::WaitFor([&] { return received.size() >= 2; }));
  EXPECT_EQ(tracking.gaps->Value(), 1u);
  EXPECT_EQ(tracking.repeated->Value(), 0u);
  EXPECT_EQ((*reader)->last_offset(), of_a[3].offset);
  common::MutexLock lock(&received.mu);
  EXPECT_EQ(received.offsets, (std::vector<uint64_t>{of_a[2].offset, of_a[3].offset}));
}

TEST_F(BusTest, AReaderGoesOnThroughItsServersKill9) {
  std::unique_ptr<Connection> reading = Connect(cluster_->url(0));
  std::unique_ptr<Connection> writing = Connect(cluster_->url(1));
  ASSERT_TRUE(reading && writing);
  const std::string stream = NewStream(*writing);
  const std::string a = stream + ".s.a";
  OffsetLog log(writing.get(), stream);
  auto append = [&](int i) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!log.Append(a, absl::StrCat("m", i), [](uint64_t offset) { return absl::StrCat(offset); }).ok()) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return true;
  };
  ASSERT_TRUE(append(0));
  const uint64_t first = *LastSequence(*writing, stream);
  Received received;
  absl::StatusOr<std::unique_ptr<SubjectReader>> reader =
      SubjectReader::Start(reading.get(), stream, a, first, received.Sink());
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (int i = 1; i < 100; ++i) ASSERT_TRUE(append(i));
  ASSERT_TRUE(testing::WaitFor([&] { return received.size() >= 100; }));
  cluster_->Kill(0);
  for (int i = 100; i < 200; ++i) ASSERT_TRUE(append(i));
  ASSERT_TRUE(cluster_->Rejoin(0));
  for (int i = 200; i < 300; ++i) ASSERT_TRUE(append(i));
  EXPECT_TRUE(testing::WaitFor([&] { return received.size() >= 300; }, absl::Seconds(30)));
  reader->reset();
  common::MutexLock lock(&received.mu);
  ASSERT_EQ(received.offsets.size(), 300u);
  for (size_t i = 1; i < received.offsets.size(); ++i) {
    EXPECT_EQ(received.offsets[i], received.offsets[i - 1] + 1) << i;
  }
}

TEST_F(BusTest, OneHolderPerLease) {
  std::unique_ptr<Connection> a = Connect(cluster_->url(0));
  std::unique_ptr<Connection> b = Connect(cluster_->url(2));
  ASSERT_TRUE(a && b);
  const std::string bucket = "leases-one-holder";
  absl::StatusOr<std::unique_ptr<Leases>> la, lb;
  ASSERT_TRUE(testing::WaitFor([&] { return (la = Leases::Open(a.get(), bucket, absl::Seconds(30), 3)).ok(); },
                               absl::Seconds(30)))
      << la.status();
  lb = Leases::Open(b.get(), bucket, absl::Seconds(30), 3);
  ASSERT_TRUE(lb.ok()) << lb.status();

  Leases::Held first, renewal, later;
  EXPECT_EQ(*(*la)->Hold("p0", "ingest-a", &first), true);
  EXPECT_FALSE(first.renewed);
  EXPECT_EQ(*(*lb)->Hold("p0", "ingest-b"), false);
  EXPECT_EQ(*(*la)->Hold("p0", "ingest-a", &renewal), true);
  EXPECT_TRUE(renewal.renewed);
  EXPECT_GT(renewal.revision, first.revision);
  EXPECT_EQ(*(*lb)->Holder("p0"), "ingest-a");
  EXPECT_EQ(*(*lb)->Hold("p1", "ingest-b"), true);

  // b releasing what a holds changes nothing; a releasing it frees it for b.
  ASSERT_TRUE((*lb)->Release("p0", "ingest-b").ok());
  EXPECT_EQ(*(*la)->Holder("p0"), "ingest-a");
  ASSERT_TRUE((*la)->Release("p0", "ingest-a").ok());
  EXPECT_EQ(*(*la)->Holder("p0"), "");
  // The next holder's fencing token is greater than every earlier holder's.
  EXPECT_EQ(*(*lb)->Hold("p0", "ingest-b", &later), true);
  EXPECT_FALSE(later.renewed);
  EXPECT_GT(later.revision, renewal.revision);
  EXPECT_EQ(*(*la)->Hold("p0", "ingest-a"), false);

  // Both racing for one free name: exactly one wins.
  for (int round = 0; round < 20; ++round) {
    const std::string name = absl::StrCat("race", round);
    std::atomic<int> winners{0};
    std::thread ta([&] { winners += *(*la)->Hold(name, "ingest-a") ? 1 : 0; });
    std::thread tb([&] { winners += *(*lb)->Hold(name, "ingest-b") ? 1 : 0; });
    ta.join();
    tb.join();
    EXPECT_EQ(winners.load(), 1) << name;
  }

  // The names held, without the released ones.
  absl::StatusOr<std::vector<std::string>> names = (*la)->Names("race");
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_EQ(names->size(), 20u);
  ASSERT_TRUE((*la)->Release("race0", *(*la)->Holder("race0")).ok());
  names = (*lb)->Names("race");
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_EQ(names->size(), 19u);
  EXPECT_EQ(std::count(names->begin(), names->end(), "race0"), 0);
  EXPECT_EQ(std::count(names->begin(), names->end(), "race19"), 1);
}

TEST_F(BusTest, ALeaseNotRenewedMovesAfterItsTtl) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  constexpr absl::Duration kTtl = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<Leases>> a, b;
  ASSERT_TRUE(testing::WaitFor(
      [&] { return (a = Leases::Open(connection.get(), "leases-ttl", kTtl, 3)).ok(); }, absl::Seconds(30)))
      << a.status();
  b = Leases::Open(connection.get(), "leases-ttl", kTtl, 3);
  ASSERT_TRUE(b.ok()) << b.status();

  const absl::Time sent = absl::Now();
  ASSERT_EQ(*(*a)->Hold("p7", "ingest-a"), true);
  // While a's lease is good, b cannot have it; a stops renewing and b gets it after the TTL.
  absl::Time taken = absl::InfiniteFuture();
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        absl::StatusOr<bool> held = (*b)->Hold("p7", "ingest-b");
        if (held.ok() && *held) taken = absl::Now();
        return held.ok() && *held;
      },
      absl::Seconds(20)));
  EXPECT_GT(taken, (*a)->HeldUntil(sent)) << "b took the lease while a could still act on it";
  EXPECT_EQ(*(*a)->Hold("p7", "ingest-a"), false);
  EXPECT_EQ(*(*a)->Holder("p7"), "ingest-b");
}

// What a durable reader handed over: (stream sequence, data) in the order they came.
struct Handed {
  common::Mutex mu;
  std::vector<std::pair<uint64_t, std::string>> messages;
  size_t size() {
    common::MutexLock lock(&mu);
    return messages.size();
  }
  DurableReader::OnMessage Sink() {
    return [this](uint64_t sequence, absl::string_view data) {
      common::MutexLock lock(&mu);
      messages.emplace_back(sequence, data);
    };
  }
};

// The consumer's acknowledged floor (stream sequence), 0 when it cannot be read.
uint64_t AckFloor(const Connection& connection, const std::string& stream, const std::string& consumer) {
  jsConsumerInfo* info = nullptr;
  if (js_GetConsumerInfo(&info, connection.js(), stream.c_str(), consumer.c_str(), nullptr, nullptr) != NATS_OK) {
    return 0;
  }
  const uint64_t floor = info->AckFloor.Stream;
  jsConsumerInfo_Destroy(info);
  return floor;
}

TEST_F(BusTest, ADurableReaderHandsOverEachMessageOnceInOrderAndAcknowledgesTheCommit) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string mine = stream + ".i.0";
  OffsetLog log(connection.get(), stream);
  std::vector<uint64_t> sequences;
  for (int i = 0; i < 50; ++i) {
    sequences.push_back(log.Append(mine, "", [i](uint64_t) { return absl::StrCat("m", i); })->sequence);
    ASSERT_TRUE(log.Append(stream + ".i.1", "", [](uint64_t) { return std::string("other"); }).ok());
  }
  DurableReaderOptions options{stream, mine, "reader-0", sequences[10]};
  Handed handed;
  absl::StatusOr<std::unique_ptr<DurableReader>> reader = DurableReader::Start(connection.get(), options, handed.Sink());
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(testing::WaitFor([&] { return handed.size() >= 40; }));
  (*reader)->Commit(sequences[29]);
  EXPECT_TRUE(testing::WaitFor([&] { return AckFloor(*connection, stream, "reader-0") == sequences[29]; }))
      << AckFloor(*connection, stream, "reader-0");
  reader->reset();
  {
    common::MutexLock lock(&handed.mu);
    ASSERT_EQ(handed.messages.size(), 40u);
    for (int i = 0; i < 40; ++i) {
      EXPECT_EQ(handed.messages[i], std::make_pair(sequences[10 + i], absl::StrCat("m", 10 + i))) << i;
    }
    handed.messages.clear();
  }
  // The next reader of the same consumer starts where it is told, whatever the floor was.
  options.from = sequences[30];
  reader = DurableReader::Start(connection.get(), options, handed.Sink());
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_TRUE(testing::WaitFor([&] { return handed.size() >= 20; }));
  reader->reset();
  common::MutexLock lock(&handed.mu);
  ASSERT_EQ(handed.messages.size(), 20u);
  EXPECT_EQ(handed.messages.front().first, sequences[30]);
  EXPECT_EQ(handed.messages.back().first, sequences[49]);
}

// Deliveries the reader never got (here another client pulls them from its consumer, as a
// server's death takes them in flight) are read from the stream, in their place.
TEST_F(BusTest, ADurableReaderFillsAGapInItsDeliveriesFromTheStream) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_TRUE(connection);
  const std::string stream = NewStream(*connection);
  const std::string mine = stream + ".i.0";
  OffsetLog log(connection.get(), stream);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(log.Append(mine, "", [i](uint64_t) { return absl::StrCat("m", i); }).ok());
  DurableReaderOptions options{stream, mine, "reader-gap", 1};
  options.batch = 1;
  absl::Notification first_came;
  absl::Notification go_on;
  Handed handed;
  auto sink = handed.Sink();
  absl::StatusOr<std::unique_ptr<DurableReader>> reader =
      DurableReader::Start(connection.get(), options, [&](uint64_t sequence, absl::string_view data) {
        sink(sequence, data);
        if (!first_came.HasBeenNotified()) {
          first_came.Notify();
          go_on.WaitForNotification();
        }
      });
  ASSERT_TRUE(reader.ok()) << reader.status();
  first_came.WaitForNotification();
  // The thief takes deliveries 2 to 4 while the reader is busy with the first.
  jsSubOptions bind;
  jsSubOptions_Init(&bind);
  bind.Stream = stream.c_str();
  bind.Consumer = "reader-gap";
  natsSubscription* thief = nullptr;
  ASSERT_EQ(js_PullSubscribe(&thief, connection->js(), mine.c_str(), "reader-gap", nullptr, &bind, nullptr), NATS_OK);
  natsMsgList stolen;
  ASSERT_EQ(natsSubscription_Fetch(&stolen, thief, 3, 5000, nullptr), NATS_OK);
  EXPECT_EQ(stolen.Count, 3);
  natsMsgList_Destroy(&stolen);
  natsSubscription_Unsubscribe(thief);
  natsSubscription_Destroy(thief);
  go_on.Notify();
  ASSERT_TRUE(testing::WaitFor([&] { return handed.size() >= 10; }));
  const uint64_t filled = (*reader)->filled();
  reader->reset();
  common::MutexLock lock(&handed.mu);
  ASSERT_EQ(handed.messages.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(handed.messages[i].second, absl::StrCat("m", i)) << i;
  EXPECT_EQ(filled, 3u);
}

TEST_F(BusTest, ADurableReaderGoesOnThroughItsServersKill9) {
  std::unique_ptr<Connection> reading = Connect(cluster_->url(0));
  std::unique_ptr<Connection> writing = Connect(cluster_->url(1));
  ASSERT_TRUE(reading && writing);
  const std::string stream = NewStream(*writing);
  const std::string mine = stream + ".i.0";
  OffsetLog log(writing.get(), stream);
  auto append = [&](int i) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!log.Append(mine, absl::StrCat("m", i), [i](uint64_t) { return absl::StrCat("m", i); }).ok()) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return true;
  };
  ASSERT_TRUE(append(0));
  Handed handed;
  auto sink = handed.Sink();
  std::atomic<DurableReader*> committer{nullptr};
  absl::StatusOr<std::unique_ptr<DurableReader>> reader = DurableReader::Start(
      reading.get(), {stream, mine, "reader-kill", 1}, [&](uint64_t sequence, absl::string_view data) {
        sink(sequence, data);
        if (DurableReader* r = committer.load()) r->Commit(sequence);  // as a writer's commit would
      });
  ASSERT_TRUE(reader.ok()) << reader.status();
  committer = reader->get();
  for (int i = 1; i < 100; ++i) ASSERT_TRUE(append(i));
  ASSERT_TRUE(testing::WaitFor([&] { return handed.size() >= 100; }));
  cluster_->Kill(0);
  for (int i = 100; i < 200; ++i) ASSERT_TRUE(append(i));
  ASSERT_TRUE(cluster_->Rejoin(0));
  for (int i = 200; i < 300; ++i) ASSERT_TRUE(append(i));
  EXPECT_TRUE(testing::WaitFor([&] { return handed.size() >= 300; }, absl::Seconds(30)));
  const uint64_t filled = (*reader)->filled();
  const uint64_t copies = (*reader)->copies();
  reader->reset();
  common::MutexLock lock(&handed.mu);
  ASSERT_EQ(handed.messages.size(), 300u);
  for (int i = 0; i < 300; ++i) EXPECT_EQ(handed.messages[i].second, absl::StrCat("m", i)) << i;
  std::printf("through the kill: %llu read back from the stream, %llu copies dropped\n",
              static_cast<unsigned long long>(filled), static_cast<unsigned long long>(copies));
}

// A replica holds a reader per stream its clients hold; stopping them while every server is
// gone must not wait for the bus (it once waited 10 s per reader: minutes at shutdown).
TEST_F(BusTest, ReadersStopWhileTheBusIsAway) {
  NatsCluster lone(1);
  ASSERT_TRUE(lone.WaitHealthy()) << lone.log(0);
  ConnectionOptions options;
  options.urls = *ParseBusFlag(lone.urls());
  absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Connect(options);
  ASSERT_TRUE(connection.ok()) << connection.status();
  ASSERT_TRUE(testing::WaitFor([&] { return EnsureStream(**connection, {"AWAY", {"away.>"}, 1}).ok(); }));
  std::vector<std::unique_ptr<SubjectReader>> readers;
  for (int i = 0; i < 20; ++i) {
    auto reader = SubjectReader::Start(connection->get(), "AWAY", absl::StrCat("away.s", i), 0,
                                       [](Position, absl::string_view, absl::string_view) {});
    ASSERT_TRUE(reader.ok()) << reader.status();
    readers.push_back(*std::move(reader));
  }
  lone.Kill(0);
  const absl::Time start = absl::Now();
  (*connection)->Close();
  EXPECT_FALSE((*connection)->connected());
  readers.clear();  // a hang here (5 s per reader before) is caught by the test's timeout
  std::printf("20 readers stopped in %s with the bus away\n", absl::FormatDuration(absl::Now() - start).c_str());
}

}  // namespace
}  // namespace devbridge::bus
