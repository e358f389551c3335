#include "common/json_parse.h"

#include <string>

#include "gtest/gtest.h"

namespace devbridge::common {
namespace {

std::string Nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(JsonParseTest, DepthUpToTheLimitParsesAndOneMoreIsRefused) {
  EXPECT_TRUE(ParseJson(Nested(64)).ok());
  absl::StatusOr<nlohmann::json> deep = ParseJson(Nested(65));
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(deep.status().message().find("64"), std::string::npos) << deep.status();
}

TEST(JsonParseTest, AHundredThousandLevelsAreRefusedWithoutRecursion) {
  EXPECT_FALSE(ParseJson(std::string(100000, '[')).ok());
  EXPECT_FALSE(ParseJson(std::string(100000, '{')).ok());
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  EXPECT_FALSE(ParseJson(objects).ok());
}

TEST(JsonParseTest, BracketsInsideStringsDoNotCount) {
  const std::string text = "{\"a\":\"" + std::string(100, '[') + "\\\"" + std::string(100, '{') + "\"}";
  absl::StatusOr<nlohmann::json> j = ParseJson(text);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(JsonString(*j, "a")->size(), 201u);
}

TEST(JsonParseTest, SizeLimitAndInvalidJson) {
  EXPECT_FALSE(ParseJson("[1,2,3]", 6).ok());
  EXPECT_TRUE(ParseJson("[1,2,3]", 7).ok());
  EXPECT_FALSE(ParseJson("{\"a\":").ok());
  EXPECT_FALSE(ParseJson("").ok());
}

TEST(JsonParseTest, AccessorsReturnNothingForWrongTypes) {
  const nlohmann::json j = *ParseJson(R"({"s":"x","n":3,"u":18446744073709551615,"f":2.5,"w":4.0,"b":true,"z":null,
                                           "a":[1]})");
  EXPECT_EQ(JsonString(j, "s"), "x");
  for (const char* key : {"n", "b", "z", "a", "missing"}) EXPECT_FALSE(JsonString(j, key)) << key;
  EXPECT_EQ(JsonInt(j, "n"), 3);
  EXPECT_EQ(JsonInt(j, "w"), 4);
  for (const char* key : {"u", "f", "s", "b", "z", "a"}) EXPECT_FALSE(JsonInt(j, key)) << key;
  EXPECT_EQ(JsonBool(j, "b"), true);
  EXPECT_FALSE(JsonBool(j, "n"));
  // Not an object at all.
  for (const char* text : {"[1]", "1", "null", "\"s\""}) {
    const nlohmann::json v = *ParseJson(text);
    EXPECT_EQ(JsonMember(v, "s"), nullptr) << text;
    EXPECT_FALSE(JsonString(v, "s")) << text;
  }
}

}  // namespace
}  // namespace devbridge::common
