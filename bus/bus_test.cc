// The parts of the bus that need no server: the --bus flag, subject names, filling a skip.
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"

#include "bus/connection.h"
#include "bus/offset_log.h"
#include "bus/subject_reader.h"

namespace devbridge::bus {
namespace {

TEST(ParseBusFlagTest, TakesOneOrSeveralServers) {
  EXPECT_EQ(*ParseBusFlag("nats://127.0.0.1:4222"), std::vector<std::string>{"nats://127.0.0.1:4222"});
  EXPECT_EQ(*ParseBusFlag("nats://a:1,nats://b.example:65535"),
            (std::vector<std::string>{"nats://a:1", "nats://b.example:65535"}));
}

TEST(ParseBusFlagTest, SaysWhatIsWrong) {
  for (const char* bad : {"", "127.0.0.1:4222", "tcp://a:4222", "nats://a", "nats://:4222", "nats://a:0",
                          "nats://a:65536", "nats://a:x", "nats://a:4222,", "nats://a:4222,,nats://b:1"}) {
    absl::StatusOr<std::vector<std::string>> parsed = ParseBusFlag(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--bus"), std::string::npos) << parsed.status();
  }
}

TEST(StreamSubjectTest, OneTokenPerIdWithDotsEscaped) {
  EXPECT_EQ(StreamSubject("db.ev", "plant-1", ""), "db.ev.s.plant-1");
  EXPECT_EQ(StreamSubject("db.ev", "plant-1", "hall:2"), "db.ev.g.plant-1.hall:2");
  // "a.b" as a system and "a" + group "b" must not share a subject.
  EXPECT_EQ(StreamSubject("db.ev", "a.b", ""), "db.ev.s.a%2Eb");
  EXPECT_NE(StreamSubject("db.ev", "a.b", ""), StreamSubject("db.ev", "a", "b"));
  EXPECT_EQ(StreamSubject("db.ev", "a", "b.c"), "db.ev.g.a.b%2Ec");
}

TEST(FromNatsTest, MapsTheClientsErrors) {
  EXPECT_TRUE(FromNats(NATS_OK, "x").ok());
  EXPECT_EQ(FromNats(NATS_TIMEOUT, "x").code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(FromNats(NATS_NO_SERVER, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromNats(NATS_ERR, "x", JSStreamWrongLastSequenceErr).code(), absl::StatusCode::kFailedPrecondition);
  absl::Status status = FromNats(NATS_ERR, "appending to s", 10999);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(status.message().find("appending to s"), std::string::npos);
  EXPECT_NE(status.message().find("10999"), std::string::npos);
}

// A stream of two subjects, as FillSkipped reads it: sequence -> message ("a" carries offsets).
class FakeStream {
 public:
  void Put(uint64_t sequence, const std::string& subject, uint64_t offset) {
    StoredMessage m;
    m.sequence = sequence;
    m.subject = subject;
    m.headers = absl::StrCat("NATS/1.0\r\n", kOffsetHeader, ": ", offset, "\r\n\r\n");
    m.data = absl::StrCat(subject, "#", offset);
    messages_[sequence] = m;
  }
  ReadAtFn Reader() {
    return [this](uint64_t sequence) -> absl::StatusOr<std::optional<StoredMessage>> {
      ++reads;
      if (sequence == fail_at) return absl::DeadlineExceededError("no answer");
      auto it = messages_.find(sequence);
      if (it == messages_.end()) return std::nullopt;
      return it->second;
    };
  }
  SubjectReader::OnMessage Sink() {
    return [this](Position p, absl::string_view, absl::string_view data) {
      handed.push_back(std::string(data));
      sequences.push_back(p.sequence);
    };
  }
  std::vector<std::string> handed;
  std::vector<uint64_t> sequences;
  size_t reads = 0;
  uint64_t fail_at = 0;

 private:
  std::map<uint64_t, StoredMessage> messages_;
};

TEST(FillSkippedTest, HandsOverTheSkippedMessagesOfTheSubjectInOrder) {
  FakeStream stream;
  stream.Put(10, "a", 5);
  stream.Put(11, "b", 40);
  stream.Put(12, "a", 6);
  stream.Put(13, "b", 41);  // another subject's
  // 14: deleted
  stream.Put(15, "a", 7);
  stream.Put(16, "a", 8);
  const absl::Time later = absl::Now() + absl::Minutes(1);
  EXPECT_EQ(FillSkipped({10, 5}, {16, 8}, "a", stream.Reader(), stream.Sink(), 100, later).missing, 0u);
  EXPECT_EQ(stream.handed, (std::vector<std::string>{"a#6", "a#7"}));
  EXPECT_EQ(stream.sequences, (std::vector<uint64_t>{12, 15}));
  EXPECT_EQ(stream.reads, 5u) << "sequences 11 to 15, not 16";
}

TEST(FillSkippedTest, CountsWhatItCouldNotHandOver) {
  FakeStream stream;
  stream.Put(1, "a", 1);
  stream.Put(2, "a", 3);  // 2 is gone from the stream
  stream.Put(3, "a", 4);
  stream.Put(4, "a", 5);
  stream.Put(5, "a", 6);
  const absl::Time later = absl::Now() + absl::Minutes(1);
  EXPECT_EQ(FillSkipped({1, 1}, {5, 6}, "a", stream.Reader(), stream.Sink(), 100, later).missing, 1u);
  EXPECT_EQ(stream.handed, (std::vector<std::string>{"a#3", "a#4", "a#5"}));

  FakeStream failing;
  for (uint64_t i = 1; i <= 5; ++i) failing.Put(i, "a", i);
  failing.fail_at = 3;
  const SkipFill fill = FillSkipped({1, 1}, {5, 5}, "a", failing.Reader(), failing.Sink(), 100, later);
  EXPECT_EQ(fill.missing, 2u) << "3 and 4";
  EXPECT_EQ(fill.error.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(failing.handed, (std::vector<std::string>{"a#2"}));

  FakeStream bounded;
  for (uint64_t i = 1; i <= 5; ++i) bounded.Put(i, "a", i);
  EXPECT_EQ(FillSkipped({1, 1}, {5, 5}, "a", bounded.Reader(), bounded.Sink(), 1, later).missing, 2u);
  EXPECT_EQ(bounded.reads, 1u);
  FakeStream late;
  for (uint64_t i = 1; i <= 5; ++i) late.Put(i, "a", i);
  EXPECT_EQ(FillSkipped({1, 1}, {5, 5}, "a", late.Reader(), late.Sink(), 100, absl::Now() - absl::Seconds(1)).missing, 3u);
  EXPECT_EQ(late.reads, 0u);
}

}  // namespace
}  // namespace devbridge::bus
