#include "services/push/core/frames.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace devbridge::push {
namespace {

TEST(ServerFrame, EnvelopeWithOptionalFieldsLeftOut) {
  ServerFrame f;
  f.type = "connected";
  f.data_json = R"({"clientId":"c1"})";
  f.system_id = "fleet";
  EXPECT_EQ(f.ToJson(),
            R"({"type":"connected","messageId":"","code":0,"msg":"success","data":{"clientId":"c1"},"systemId":"fleet"})");
  f.type = "message";
  f.group_name = "ops";
  f.send_user_id = "u\"1";
  f.offset = 7;
  f.epoch = "ep";
  auto j = nlohmann::json::parse(f.ToJson());
  EXPECT_EQ(j["groupName"], "ops");
  EXPECT_EQ(j["sendUserId"], "u\"1");
  EXPECT_EQ(j["offset"], 7);
  EXPECT_EQ(j["epoch"], "ep");
  f.data_json.clear();
  EXPECT_TRUE(nlohmann::json::parse(f.ToJson())["data"].is_null());
}

TEST(ErrorFrame, CarriesRequestIdAndStream) {
  auto j = nlohmann::json::parse(ErrorFrame(400, "bad", "r1"));
  EXPECT_EQ(j["type"], "error");
  EXPECT_EQ(j["code"], 400);
  EXPECT_EQ(j["data"]["requestId"], "r1");
  auto gone = nlohmann::json::parse(ErrorFrame(410, "gone", "", "group:ops"));
  EXPECT_EQ(gone["data"]["stream"], "group:ops");
}

TEST(ParseClientFrame, EveryAction) {
  std::string rid;
  EXPECT_EQ(ParseClientFrame(R"({"action":"ping"})", &rid)->action, ClientFrame::kPing);
  auto join = ParseClientFrame(R"({"action":"join","group":"ops"})", &rid);
  ASSERT_TRUE(join.ok());
  EXPECT_EQ(join->action, ClientFrame::kJoin);
  EXPECT_EQ(join->group, "ops");
  EXPECT_EQ(ParseClientFrame(R"({"action":"leave","group":"ops"})", &rid)->action, ClientFrame::kLeave);
  auto read = ParseClientFrame(
      R"({"action":"command","requestId":"r9","deviceId":"sim-0001","function":3,"address":0,"count":10,"timeoutMs":800})",
      &rid);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(rid, "r9");
  EXPECT_EQ(read->command.count, 10u);
  EXPECT_EQ(read->command.timeout_ms, 800u);
  auto write = ParseClientFrame(R"({"action":"command","deviceId":"d","function":16,"address":5,"values":[1,2]})", &rid);
  ASSERT_TRUE(write.ok()) << write.status();
  EXPECT_EQ(write->command.values, (std::vector<uint32_t>{1, 2}));
  auto defaulted = ParseClientFrame(R"({"action":"command","deviceId":"d","address":0,"count":1})", &rid);
  ASSERT_TRUE(defaulted.ok());
  EXPECT_EQ(defaulted->command.function, 3u);
}

TEST(ParseClientFrame, EveryMalformedKindIsA400WithAReason) {
  struct Case {
    const char* text;
    const char* reason;
  } cases[] = {
      {"not json", "not valid JSON"},
      {"[1]", "must be a JSON object"},
      {"{}", "needs \"action\""},
      {R"({"action":5})", "needs \"action\""},
      {R"({"action":"dance"})", "must be one of"},
      {R"({"action":"join"})", "join needs \"group\""},
      {R"({"action":"join","group":"a b"})", "group must be"},
      {R"({"action":"join","group":""})", "group must be"},
      {R"({"action":"command","address":0,"count":1})", "needs \"deviceId\""},
      {R"({"action":"command","deviceId":"a/b","address":0,"count":1})", "deviceId must be"},
      {R"({"action":"command","deviceId":"d","function":5,"address":0,"count":1})", "function must be"},
      {R"({"action":"command","deviceId":"d","address":0})", "needs \"count\""},
      {R"({"action":"command","deviceId":"d","address":0,"count":126})", "count must be an integer from 0 to 125"},
      {R"({"action":"command","deviceId":"d","count":1})", "needs \"address\""},
      {R"({"action":"command","deviceId":"d","address":70000,"count":1})", "address must be"},
      {R"({"action":"command","deviceId":"d","address":0,"count":1,"timeoutMs":60001})", "timeoutMs must be"},
      {R"({"action":"command","deviceId":"d","function":6,"address":0})", "needs \"values\""},
      {R"({"action":"command","deviceId":"d","function":6,"address":0,"values":[1,2]})", "exactly one"},
      {R"({"action":"command","deviceId":"d","function":16,"address":0,"values":[70000]})", "values must be"},
      {R"({"action":"command","requestId":{},"deviceId":"d","address":0,"count":1})", "requestId must be"},
  };
  for (const auto& c : cases) {
    std::string rid;
    auto f = ParseClientFrame(c.text, &rid);
    ASSERT_FALSE(f.ok()) << c.text;
    EXPECT_NE(f.status().message().find(c.reason), std::string::npos) << c.text << " → " << f.status().message();
  }
  std::string rid;
  EXPECT_FALSE(ParseClientFrame(R"({"action":"command","requestId":"keep","deviceId":"d","address":0})", &rid).ok());
  EXPECT_EQ(rid, "keep") << "the error can carry the requestId";
}

}  // namespace
}  // namespace devbridge::push
