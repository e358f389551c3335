#include "events/push_message.h"

#include <string>

#include "gtest/gtest.h"

namespace devbridge::events {
namespace {

v1::PushMessage Send(v1::PushMessage::Kind kind, const std::string& data) {
  v1::PushMessage m;
  m.set_kind(kind);
  m.set_system_id("fleet");
  m.set_group_name("ops");
  m.add_client_ids("c1");
  m.set_origin_node("push-a:8080");
  m.set_data(data);
  return m;
}

TEST(ValidatePushMessage, AcceptsEveryWellFormedKind) {
  for (auto kind : {v1::PushMessage::SEND_TO_CLIENTS, v1::PushMessage::SEND_TO_GROUP, v1::PushMessage::SEND_TO_SYSTEM,
                    v1::PushMessage::BIND_GROUP, v1::PushMessage::UNBIND_GROUP, v1::PushMessage::CLOSE_CLIENT,
                    v1::PushMessage::CLIENT_UP, v1::PushMessage::CLIENT_DOWN, v1::PushMessage::NODE_HELLO,
                    v1::PushMessage::NODE_DOWN}) {
    EXPECT_TRUE(ValidatePushMessage(Send(kind, R"({"t":21.5})")).ok()) << kind;
  }
  EXPECT_TRUE(ValidatePushMessage(Send(v1::PushMessage::SEND_TO_SYSTEM, "")).ok()) << "no data is null";
  EXPECT_TRUE(ValidatePushMessage(Send(v1::PushMessage::NODE_SNAPSHOT, R"([{"c":"c1","s":"fleet","g":["ops"]}])")).ok());
  EXPECT_TRUE(ValidatePushMessage(Send(v1::PushMessage::NODE_SNAPSHOT, "[]")).ok());
}

TEST(ValidatePushMessage, DataThatWouldBreakOrInjectIntoFramesIsRefused) {
  for (const char* data : {R"({"a":)", R"(1,"type":"device.online")", "{} {}", "\"unterminated", "nul\x01"}) {
    absl::Status s = ValidatePushMessage(Send(v1::PushMessage::SEND_TO_SYSTEM, data));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << data;
  }
  const std::string deep = std::string(65, '[') + std::string(65, ']');
  EXPECT_NE(ValidatePushMessage(Send(v1::PushMessage::SEND_TO_GROUP, deep)).message().find("64"), std::string::npos);
}

TEST(ValidatePushMessage, BadIdsAndShapesAreRefused) {
  v1::PushMessage m = Send(v1::PushMessage::SEND_TO_SYSTEM, "1");
  m.set_system_id("a b");
  EXPECT_FALSE(ValidatePushMessage(m).ok());
  m = Send(v1::PushMessage::SEND_TO_GROUP, "1");
  m.set_group_name("");
  EXPECT_FALSE(ValidatePushMessage(m).ok());
  m = Send(v1::PushMessage::BIND_GROUP, "");
  m.add_client_ids("c2");
  EXPECT_FALSE(ValidatePushMessage(m).ok()) << "a bind names one client";
  m = Send(v1::PushMessage::CLOSE_CLIENT, "");
  m.clear_client_ids();
  EXPECT_FALSE(ValidatePushMessage(m).ok());
  m.add_client_ids("bad/id");
  EXPECT_FALSE(ValidatePushMessage(m).ok());
  m = Send(v1::PushMessage::NODE_HELLO, "");
  m.clear_origin_node();
  EXPECT_FALSE(ValidatePushMessage(m).ok());
  m.set_kind(static_cast<v1::PushMessage::Kind>(99));
  EXPECT_NE(ValidatePushMessage(m).message().find("unknown kind"), std::string::npos);
  m.set_kind(v1::PushMessage::KIND_UNSPECIFIED);
  EXPECT_FALSE(ValidatePushMessage(m).ok());
}

TEST(Snapshot, RoundTripsAndRefusesEveryWrongShape) {
  const std::vector<SnapshotMember> members = {{"c1", "fleet", {"ops", "a"}}, {"c2", "sim-1", {}}};
  absl::StatusOr<std::vector<SnapshotMember>> back = DecodeSnapshot(EncodeSnapshot(members));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0].groups, (std::vector<std::string>{"ops", "a"}));
  EXPECT_EQ((*back)[1].system_id, "sim-1");
  for (const char* data : {"[1]", "[null]", "[[]]", R"({"c":"c1"})", R"([{"c":1,"s":"x"}])", R"([{"c":"c1"}])",
                           R"([{"c":"c1","s":"x","g":"ops"}])", R"([{"c":"c1","s":"x","g":[1]}])",
                           R"([{"c":"c 1","s":"x"}])", "", "[", "1"}) {
    EXPECT_EQ(DecodeSnapshot(data).status().code(), absl::StatusCode::kInvalidArgument) << data;
  }
}

}  // namespace
}  // namespace devbridge::events
