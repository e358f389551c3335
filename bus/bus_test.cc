// The parts of the bus that need no server: the --bus flag and subject names.
#include <gtest/gtest.h>

#include "bus/connection.h"
#include "bus/offset_log.h"

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

}  // namespace
}  // namespace devbridge::bus
