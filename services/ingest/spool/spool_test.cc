#include "services/ingest/spool/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <fstream>
#include <zlib.h>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace devbridge::ingest {
namespace {

using ::testing::SizeIs;

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/spool-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf ", dir_).c_str()); }

  std::unique_ptr<Spool> Open(size_t max_bytes = 1 << 20, size_t segment_bytes = 0,
                              absl::Duration sync = absl::Milliseconds(2)) {
    SpoolOptions o;
    o.dir = dir_;
    o.max_bytes = max_bytes;
    o.segment_bytes = segment_bytes;
    o.sync_interval = sync;
    // A registry per spool: its gauges read the spool, so it must not outlive it in use.
    auto spool = Spool::Open(o, &registries_.emplace_back());
    EXPECT_TRUE(spool.ok()) << spool.status();
    return spool.ok() ? *std::move(spool) : nullptr;
  }

  std::vector<std::string> Segments() const {
    std::vector<std::string> out;
    DIR* d = opendir(dir_.c_str());
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".seg") out.push_back(name);
    }
    closedir(d);
    std::sort(out.begin(), out.end());
    return out;
  }

  // Reads everything from `from` on, as the io thread does: in calls of `batch`.
  std::vector<SpooledMessage> ReadAll(Spool& spool, uint64_t from, size_t batch = 7) {
    std::vector<SpooledMessage> out;
    for (int guard = 0; guard < 100000 && from < spool.next_seq(); ++guard) {
      absl::StatusOr<uint64_t> next = spool.Read(from, batch, &out);
      EXPECT_TRUE(next.ok()) << next.status();
      if (!next.ok()) break;
      from = *next;
    }
    return out;
  }

  // The metrics of the spool opened last.
  std::string Metrics() const { return registries_.back().Render(); }

  std::string dir_;
  std::deque<common::MetricsRegistry> registries_;
};

TEST_F(SpoolTest, AppendsAndReadsBackInOrderAcrossSegments) {
  auto spool = Open(1 << 20, /*segment_bytes=*/1024);
  const absl::Time t0 = absl::FromUnixMicros(1'700'000'000'123'456);
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<uint64_t> seq =
        spool->Append(absl::StrCat("devices/d", i % 7, "/data"), absl::StrCat("payload-", i), t0 + absl::Seconds(i));
    ASSERT_TRUE(seq.ok());
    EXPECT_EQ(*seq, static_cast<uint64_t>(i + 1));
    spool->AfterAppend();
  }
  EXPECT_GT(Segments().size(), 5u);
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  ASSERT_THAT(all, SizeIs(200));
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(all[i].seq, static_cast<uint64_t>(i + 1));
    EXPECT_EQ(all[i].topic, absl::StrCat("devices/d", i % 7, "/data"));
    EXPECT_EQ(all[i].payload, absl::StrCat("payload-", i));
    EXPECT_EQ(all[i].taken_at, t0 + absl::Seconds(i));
  }
  // From the middle, as a replay after a checkpoint does.
  std::vector<SpooledMessage> tail = ReadAll(*spool, 151, 1000);
  ASSERT_THAT(tail, SizeIs(50));
  EXPECT_EQ(tail.front().seq, 151u);
}

TEST_F(SpoolTest, KeepsNumberingAndDataAcrossReopen) {
  {
    auto spool = Open();
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(spool->Append("t", "p", absl::Now()).ok());
  }
  auto spool = Open();
  EXPECT_EQ(spool->next_seq(), 11u);
  EXPECT_THAT(ReadAll(*spool, 1), SizeIs(10));
  absl::StatusOr<uint64_t> seq = spool->Append("t", "p", absl::Now());
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ(*seq, 11u);
}

TEST_F(SpoolTest, IdStaysWithTheFolder) {
  std::string id;
  {
    auto spool = Open();
    id = spool->id();
    EXPECT_FALSE(id.empty());
  }
  EXPECT_EQ(Open()->id(), id);
}

TEST_F(SpoolTest, SecondOpenOfTheSameFolderIsRefused) {
  auto first = Open();
  SpoolOptions o;
  o.dir = dir_;
  common::MetricsRegistry other;
  absl::StatusOr<std::unique_ptr<Spool>> second = Spool::Open(o, &other);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), ::testing::HasSubstr("in use by another ingest"));
}

TEST_F(SpoolTest, TornTailIsCutAtOpenAndAppendsContinue) {
  {
    auto spool = Open();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(spool->Append("topic", "payload", absl::Now()).ok());
  }
  // A crash in the middle of a write(): half a record at the end of the newest segment.
  const std::string path = dir_ + "/" + Segments().back();
  {
    std::ofstream f(path, std::ios::app | std::ios::binary);
    f << std::string("\x30\x00\x00\x00\x11\x22", 6);
  }
  auto spool = Open();
  EXPECT_EQ(spool->next_seq(), 6u);
  ASSERT_TRUE(spool->Append("topic", "after", absl::Now()).ok());
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  ASSERT_THAT(all, SizeIs(6));
  EXPECT_EQ(all.back().payload, "after");
  EXPECT_EQ(all.back().seq, 6u);
}

TEST_F(SpoolTest, CorruptRecordInAnOlderSegmentIsSkippedAndCounted) {
  {
    auto spool = Open(1 << 20, /*segment_bytes=*/256);
    for (int i = 0; i < 40; ++i) ASSERT_TRUE(spool->Append("topic", absl::StrCat("p", i), absl::Now()).ok());
  }
  ASSERT_GT(Segments().size(), 2u);
  // Flip a byte in the first record of the second segment.
  const std::string path = dir_ + "/" + Segments()[1];
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, 20), 1);
  c ^= 0x55;
  ASSERT_EQ(pwrite(fd, &c, 1, 20), 1);
  close(fd);

  auto spool = Open(1 << 20, 256);
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  EXPECT_LT(all.size(), 40u);
  EXPECT_GT(all.size(), 20u);
  EXPECT_EQ(all.back().seq, 40u);  // reading went on after the bad segment
  EXPECT_THAT(Metrics(), ::testing::HasSubstr("devbridge_ingest_spool_corrupt_total 1"));
}

TEST_F(SpoolTest, OriginsAreKeptAndOlderRecordFormatsStillRead) {
  // Two records as earlier spool formats wrote them: the first had no packet id (the length's
  // top bit clear), the second a packet id but no DUP flag or session (only the top bit set).
  std::string segment;
  auto record = [&segment](uint64_t seq, bool with_packet_id, absl::string_view topic) {
    std::string body;
    auto put = [&body](uint64_t v, int bytes) {
      for (int i = 0; i < bytes; ++i) body.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    };
    put(seq, 8);
    put(1700000000000000, 8);  // taken at, µs
    if (with_packet_id) put(777, 2);
    put(topic.size(), 2);
    body.append(topic.data(), topic.size());
    body += "payload";
    const uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(body.data()),
                                                     static_cast<uInt>(body.size())));
    const uint64_t length = body.size() | (with_packet_id ? 0x80000000u : 0);
    for (uint64_t v : {length, static_cast<uint64_t>(crc)}) {
      for (int i = 0; i < 4; ++i) segment.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
    segment += body;
  };
  record(1, false, "t/v1");
  record(2, true, "t/v2");
  std::ofstream(absl::StrCat(dir_, "/00000000000000000001.seg"), std::ios::binary) << segment;

  auto spool = Open();
  ASSERT_EQ(spool->next_seq(), 3u) << "the old records are whole";
  ASSERT_TRUE(spool->Append("t/new", "p", absl::Now(), 4242, /*dup=*/true, /*session=*/0xfeedface12345678).ok());
  ASSERT_TRUE(spool->Append("t/qos0", "p", absl::Now()).ok());
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  ASSERT_THAT(all, SizeIs(4));
  EXPECT_EQ(all[0].topic, "t/v1");
  EXPECT_EQ(all[0].payload, "payload");
  EXPECT_EQ(all[0].packet_id, 0);
  EXPECT_EQ(all[0].taken_at, absl::FromUnixMicros(1700000000000000));
  EXPECT_EQ(all[1].topic, "t/v2");
  EXPECT_EQ(all[1].payload, "payload");
  EXPECT_EQ(all[1].packet_id, 777);
  EXPECT_FALSE(all[1].dup);
  EXPECT_EQ(all[1].session, 0u);
  EXPECT_EQ(all[2].topic, "t/new");
  EXPECT_EQ(all[2].packet_id, 4242);
  EXPECT_TRUE(all[2].dup);
  EXPECT_EQ(all[2].session, 0xfeedface12345678u);
  EXPECT_EQ(all[3].packet_id, 0);
  EXPECT_FALSE(all[3].dup);
  spool.reset();
  const SpooledMessage again = ReadAll(*Open(), 3)[0];
  EXPECT_EQ(again.packet_id, 4242) << "and after a restart";
  EXPECT_EQ(again.session, 0xfeedface12345678u);
}

TEST_F(SpoolTest, CommittedDeletesWhollyCoveredSegmentsOnly) {
  auto spool = Open(1 << 20, /*segment_bytes=*/256);
  for (int i = 0; i < 60; ++i) ASSERT_TRUE(spool->Append("topic", "payload", absl::Now()).ok());
  const size_t segments = Segments().size();
  ASSERT_GT(segments, 3u);
  const size_t bytes = spool->bytes();
  spool->Committed(0);
  EXPECT_EQ(Segments().size(), segments);
  spool->Committed(30);
  EXPECT_LT(Segments().size(), segments);
  EXPECT_LT(spool->bytes(), bytes);
  EXPECT_LE(spool->first_seq(), 31u);  // what is not committed stays
  std::vector<SpooledMessage> rest = ReadAll(*spool, 31, 1000);
  ASSERT_THAT(rest, SizeIs(30));
  EXPECT_EQ(rest.front().seq, 31u);
  spool->Committed(60);
  // The newest two stay: the newest's name keeps the numbering, and both keep the last
  // messages' packet ids for after a restart.
  EXPECT_THAT(Segments(), SizeIs(2));
  spool.reset();
  EXPECT_EQ(Open(1 << 20, 256)->next_seq(), 61u);
}

TEST_F(SpoolTest, FullPastMaxBytesAndNotAfterCommit) {
  auto spool = Open(/*max_bytes=*/4096, /*segment_bytes=*/1024);
  int n = 0;
  while (!spool->Full() && n < 10000) {
    ASSERT_TRUE(spool->Append("topic", std::string(100, 'x'), absl::Now()).ok());
    ++n;
  }
  EXPECT_TRUE(spool->Full());
  EXPECT_LT(n, 100);
  spool->Committed(static_cast<uint64_t>(n));
  EXPECT_FALSE(spool->Full());
}

TEST_F(SpoolTest, GroupCommitSyncsWithinTheInterval) {
  auto spool = Open(1 << 20, 0, absl::Milliseconds(2));
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(spool->Append("topic", "payload", absl::Now()).ok());
    spool->AfterAppend();
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (spool->unsynced() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(spool->unsynced(), 0u);
}

TEST_F(SpoolTest, SyncZeroSyncsEveryMessage) {
  auto spool = Open(1 << 20, 0, absl::ZeroDuration());
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(spool->Append("topic", "payload", absl::Now()).ok());
    spool->AfterAppend();
    EXPECT_EQ(spool->unsynced(), 0u);
  }
  EXPECT_THAT(Metrics(), ::testing::HasSubstr("devbridge_ingest_spool_fsyncs_total 20"));
}

TEST_F(SpoolTest, ReadStopsAtWhatWasAppendedAndContinuesLater) {
  auto spool = Open();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(spool->Append("t", absl::StrCat(i), absl::Now()).ok());
  std::vector<SpooledMessage> out;
  absl::StatusOr<uint64_t> next = spool->Read(1, 100, &out);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, 4u);
  ASSERT_TRUE(spool->Append("t", "3", absl::Now()).ok());
  next = spool->Read(*next, 100, &out);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, 5u);
  ASSERT_THAT(out, SizeIs(4));
  EXPECT_EQ(out[3].payload, "3");
}

TEST_F(SpoolTest, LargePayloadRoundTrips) {
  auto spool = Open(8 << 20);
  const std::string big(600 * 1024, 'z');
  ASSERT_TRUE(spool->Append("t", "small", absl::Now()).ok());
  ASSERT_TRUE(spool->Append("t", big, absl::Now()).ok());
  ASSERT_TRUE(spool->Append("t", "after", absl::Now()).ok());
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  ASSERT_THAT(all, SizeIs(3));
  EXPECT_EQ(all[1].payload, big);
  EXPECT_EQ(all[2].payload, "after");
}

TEST_F(SpoolTest, AMessageTooLargeForARecordIsRefusedAndTheSpoolGoesOn) {
  auto spool = Open(1 << 30);
  ASSERT_TRUE(spool->Append("t", "before", absl::Now()).ok());
  EXPECT_FALSE(spool->Append("t", std::string((64 << 20) + 1, 'x'), absl::Now()).ok());
  ASSERT_TRUE(spool->Append("t", "after", absl::Now()).ok());
  std::vector<SpooledMessage> all = ReadAll(*spool, 1);
  ASSERT_THAT(all, SizeIs(2));
  EXPECT_EQ(all[1].payload, "after");
}

}  // namespace
}  // namespace devbridge::ingest
