#include "regmap/register_map.h"

#include <cmath>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "regmap/json_locator.h"

namespace devbridge::regmap {
namespace {

// Big-endian bytes of `words`, as a read reply carries them.
std::vector<uint8_t> Bytes(std::initializer_list<uint16_t> words) {
  std::vector<uint8_t> out;
  for (uint16_t w : words) {
    out.push_back(static_cast<uint8_t>(w >> 8));
    out.push_back(static_cast<uint8_t>(w & 0xFF));
  }
  return out;
}

RegisterMap MustParse(absl::string_view json) {
  auto map = RegisterMap::Parse(json, "test.json");
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

// One register of `type` at address 0 with extra JSON members, decoded from `words`.
Value DecodeOne(absl::string_view type, std::initializer_list<uint16_t> words,
                absl::string_view extra = "") {
  std::string json = absl::StrCat(R"({"profiles":{"p":{"registers":[{"address":0,"name":"v","type":")",
                                  type, "\"", extra, "}]}}}");
  RegisterMap map = MustParse(json);
  std::vector<DecodedValue> out;
  auto data = Bytes(words);
  absl::Status s = Decode(map.profiles()[0], 0, data, &out);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(out.size(), 1u);
  return out.empty() ? Value{} : out[0].value;
}

TEST(Decode, ContractExampleProfile) {
  RegisterMap map = MustParse(R"({
    "profiles": {"meter": {"unit": 1, "registers": [
      {"address": 0, "name": "temperature", "type": "int16",  "scale": 0.1, "unit": "°C"},
      {"address": 1, "name": "humidity",    "type": "uint16", "scale": 0.1, "unit": "%RH"},
      {"address": 2, "name": "energy",      "type": "uint32", "scale": 0.01, "unit": "kWh", "wordOrder": "big"},
      {"address": 4, "name": "voltage",     "type": "float32", "unit": "V"}]}},
    "devices": {"*": "meter"}})");
  const Profile* p = map.ProfileFor("sim-001");
  ASSERT_NE(p, nullptr);
  float volts = 230.5f;
  uint32_t vbits;
  std::memcpy(&vbits, &volts, 4);
  auto data = Bytes({static_cast<uint16_t>(-125), 455, 0x0001, 0x86A0,
                     static_cast<uint16_t>(vbits >> 16), static_cast<uint16_t>(vbits & 0xFFFF)});
  std::vector<DecodedValue> out;
  ASSERT_TRUE(Decode(*p, 0, data, &out).ok());
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].reg->name, "temperature");
  EXPECT_EQ(out[0].value.ToJson(), "-12.5");
  EXPECT_EQ(out[0].reg->unit, "°C");
  EXPECT_EQ(out[1].value.ToJson(), "45.5");
  EXPECT_EQ(out[2].value.ToJson(), "1000");  // 100000 * 0.01
  EXPECT_EQ(out[2].raw_count, 2);
  EXPECT_EQ(out[2].raw[0], 0x0001);
  EXPECT_EQ(out[2].raw[1], 0x86A0);
  EXPECT_EQ(out[3].value.ToJson(), "230.5");
}

TEST(Decode, SixteenBitTypes) {
  EXPECT_EQ(DecodeOne("int16", {0xFFFF}).i, -1);
  EXPECT_EQ(DecodeOne("int16", {0x8000}).i, -32768);
  EXPECT_EQ(DecodeOne("int16", {0x7FFF}).i, 32767);
  EXPECT_EQ(DecodeOne("uint16", {0xFFFF}).u, 65535u);
  EXPECT_EQ(DecodeOne("uint16", {0xFFFF}).kind, Value::kUint);
}

TEST(Decode, ThirtyTwoBitTypesInBothWordOrders) {
  EXPECT_EQ(DecodeOne("uint32", {0x1234, 0x5678}).u, 0x12345678u);
  EXPECT_EQ(DecodeOne("uint32", {0x1234, 0x5678}, R"(,"wordOrder":"little")").u, 0x56781234u);
  EXPECT_EQ(DecodeOne("int32", {0xFFFF, 0xFFFE}).i, -2);
  EXPECT_EQ(DecodeOne("int32", {0xFFFE, 0xFFFF}, R"(,"wordOrder":"little")").i, -2);
  EXPECT_EQ(DecodeOne("int32", {0x8000, 0x0000}).i, INT32_MIN);
  // 1.5f = 0x3FC00000
  EXPECT_EQ(DecodeOne("float32", {0x3FC0, 0x0000}).d, 1.5);
  EXPECT_EQ(DecodeOne("float32", {0x0000, 0x3FC0}, R"(,"wordOrder":"little")").d, 1.5);
  EXPECT_EQ(DecodeOne("float32", {0xBFC0, 0x0000}).d, -1.5);
}

TEST(Decode, SixtyFourBitTypesInBothWordOrders) {
  EXPECT_EQ(DecodeOne("uint64", {0x0102, 0x0304, 0x0506, 0x0708}).u, 0x0102030405060708u);
  EXPECT_EQ(DecodeOne("uint64", {0x0102, 0x0304, 0x0506, 0x0708}, R"(,"wordOrder":"little")").u,
            0x0708050603040102u);
  EXPECT_EQ(DecodeOne("uint64", {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF}).ToJson(), "18446744073709551615");
  EXPECT_EQ(DecodeOne("int64", {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD}).i, -3);
  EXPECT_EQ(DecodeOne("int64", {0x8000, 0, 0, 0}).i, INT64_MIN);
  // -2.25 = 0xC002000000000000
  EXPECT_EQ(DecodeOne("float64", {0xC002, 0, 0, 0}).d, -2.25);
  EXPECT_EQ(DecodeOne("float64", {0, 0, 0, 0xC002}, R"(,"wordOrder":"little")").d, -2.25);
}

TEST(Decode, Bits) {
  EXPECT_TRUE(DecodeOne("bool", {0x0001}, R"(,"bit":0)").b);
  EXPECT_FALSE(DecodeOne("bool", {0x0001}, R"(,"bit":1)").b);
  EXPECT_TRUE(DecodeOne("bool", {0x8000}, R"(,"bit":15)").b);
  EXPECT_EQ(DecodeOne("bool", {0x8000}, R"(,"bit":15)").ToJson(), "true");
}

TEST(Decode, ScaleOffsetAndNegativeValues) {
  EXPECT_EQ(DecodeOne("int16", {static_cast<uint16_t>(-40)}, R"(,"scale":0.5,"offset":10)").d, -10);
  EXPECT_EQ(DecodeOne("uint16", {3}, R"(,"scale":0.1)").ToJson(), "0.3");
  EXPECT_EQ(DecodeOne("int32", {0xFFFF, 0xFF9C}, R"(,"scale":0.01)").ToJson(), "-1");
  EXPECT_EQ(DecodeOne("uint16", {100}, R"(,"offset":-273.15)").ToJson(), "-173.15");
  EXPECT_EQ(DecodeOne("float32", {0x3FC0, 0}, R"(,"scale":2,"offset":1)").d, 4);
  EXPECT_EQ(DecodeOne("uint16", {100}, R"(,"scale":1)").kind, Value::kUint);
}

TEST(Decode, NanPrintsAsNull) {
  EXPECT_EQ(DecodeOne("float32", {0x7FC0, 0}).ToJson(), "null");
}

TEST(Decode, PartialRangesDecodeOnlyWholeEntries) {
  RegisterMap map = MustParse(R"({"profiles":{"p":{"registers":[
      {"address":10,"name":"a","type":"uint16"},
      {"address":11,"name":"b","type":"uint32"},
      {"address":13,"name":"c","type":"int16"},
      {"address":20,"name":"d","type":"float64"}]}}})");
  const Profile& p = map.profiles()[0];
  std::vector<DecodedValue> out;
  // 10..12: a and b whole.
  ASSERT_TRUE(Decode(p, 10, Bytes({1, 0, 2}), &out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].reg->name, "b");
  EXPECT_EQ(out[1].value.u, 2u);
  // 11..11: only half of b → nothing whole → 2005.
  absl::Status none = Decode(p, 11, Bytes({0}), &out);
  EXPECT_EQ(common::ResultCodeOf(none), common::kCodeNoRegister);
  EXPECT_TRUE(out.empty());
  // 12..13: second half of b and c → c only.
  ASSERT_TRUE(Decode(p, 12, Bytes({0, 7}), &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].reg->name, "c");
  // 21..24: d starts before the range → 2005.
  EXPECT_EQ(common::ResultCodeOf(Decode(p, 21, Bytes({0, 0, 0, 0}), &out)), common::kCodeNoRegister);
  // Far away → 2005, and the message says where.
  absl::Status far = Decode(p, 100, Bytes({0}), &out);
  EXPECT_NE(far.message().find("registers 100..100"), std::string::npos) << far;
}

TEST(ProfileFor, MostSpecificPatternWins) {
  RegisterMap map = MustParse(R"({"profiles":{
      "any":{"registers":[]}, "meters":{"registers":[]}, "m1":{"registers":[]},
      "q":{"registers":[]}, "floor":{"unit":7,"registers":[]}},
    "devices":{"*":"any", "meter-*":"meters", "meter-1":"m1", "meter-?":"q", "b2-*-f3-*":"floor"}})");
  EXPECT_EQ(map.ProfileFor("pump")->name, "any");
  EXPECT_EQ(map.ProfileFor("meter-1")->name, "m1");          // exact beats every glob
  EXPECT_EQ(map.ProfileFor("meter-2")->name, "q");           // as many literals as meter-*, fewer stars
  EXPECT_EQ(map.ProfileFor("meter-22")->name, "meters");
  EXPECT_EQ(map.ProfileFor("b2-x-f3-y")->name, "floor");     // only glob besides "*" that matches
  EXPECT_EQ(map.ProfileFor("b2-x-f3-y")->unit, 7);
  EXPECT_EQ(map.FindProfile("m1")->name, "m1");
  EXPECT_EQ(map.FindProfile("nope"), nullptr);
}

TEST(ProfileFor, NoMatchAndFileOrderOnTies) {
  RegisterMap map = MustParse(R"({"profiles":{"a":{"registers":[]},"b":{"registers":[]}},
                                   "devices":{"x*":"a","*x":"b"}})");
  EXPECT_EQ(map.ProfileFor("xx")->name, "a");
  EXPECT_EQ(map.ProfileFor("yx")->name, "b");
  EXPECT_EQ(map.ProfileFor("yy"), nullptr);
  EXPECT_EQ(MustParse(R"({"profiles":{"a":{"registers":[]}}})").ProfileFor("x"), nullptr);
}

TEST(GlobMatch, Basics) {
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("a*c", "abbbc"));
  EXPECT_TRUE(GlobMatch("a?c", "abc"));
  EXPECT_FALSE(GlobMatch("a?c", "ac"));
  EXPECT_TRUE(GlobMatch("*-*-*", "a-b-c"));
  EXPECT_FALSE(GlobMatch("*-*-*", "a-b"));
  EXPECT_FALSE(GlobMatch("abc", "abcd"));
}

// Each kind of broken map names the file, the line and the reason.
struct BrokenCase {
  const char* name;
  const char* json;
  const char* expected;  // a substring of the error
};

class BrokenMap : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenMap, ErrorNamesFileLineAndReason) {
  auto map = RegisterMap::Parse(GetParam().json, "maps/broken.json");
  ASSERT_FALSE(map.ok());
  EXPECT_NE(map.status().message().find(GetParam().expected), std::string::npos)
      << map.status().message();
  EXPECT_EQ(map.status().message().rfind("maps/broken.json", 0), 0u) << map.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Registers, BrokenMap,
    ::testing::Values(
        BrokenCase{"syntax", "{\n  \"profiles\": {\n    \"p\": [1, 2,]\n  }\n}", "broken.json:3:"},
        BrokenCase{"not_object", "[1]", "broken.json:1: top level: the map must be a JSON object"},
        BrokenCase{"no_profiles", "{\"devices\":{}}", "missing \"profiles\""},
        BrokenCase{"empty_profiles", "{\"profiles\":{}}", "at least one profile"},
        BrokenCase{"unknown_top_key", "{\"profiles\":{\"p\":{\"registers\":[]}},\"extra\":1}",
                   "unknown key \"extra\""},
        BrokenCase{"bad_type",
                   "{\"profiles\": {\"p\": {\"registers\": [\n"
                   "  {\"address\": 0, \"name\": \"a\", \"type\": \"uint16\"},\n"
                   "  {\"address\": 1, \"name\": \"b\", \"type\": \"int8\"}\n]}}}",
                   "broken.json:3: profiles.p.registers[1].type: unknown type \"int8\""},
        BrokenCase{"missing_name", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"type\":\"int16\"}]}}}",
                   "profiles.p.registers[0]: missing \"name\""},
        BrokenCase{"missing_address", "{\"profiles\":{\"p\":{\"registers\":[{\"name\":\"a\",\"type\":\"int16\"}]}}}",
                   "missing \"address\""},
        BrokenCase{"address_range", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":70000,\"name\":\"a\",\"type\":\"int16\"}]}}}",
                   "70000 out of range 0..65535"},
        BrokenCase{"past_end", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":65535,\"name\":\"a\",\"type\":\"uint32\"}]}}}",
                   "runs past register 65535"},
        BrokenCase{"bit_missing", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"bool\"}]}}}",
                   "missing \"bit\""},
        BrokenCase{"bit_range", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"bool\",\"bit\":16}]}}}",
                   "16 out of range 0..15"},
        BrokenCase{"bit_on_int", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"int16\",\"bit\":1}]}}}",
                   "applies to type bool only"},
        BrokenCase{"word_order", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"int32\",\"wordOrder\":\"middle\"}]}}}",
                   "\"middle\" is neither"},
        BrokenCase{"scale_string", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"int32\",\"scale\":\"x\"}]}}}",
                   "scale: must be a finite number"},
        BrokenCase{"duplicate_name", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"int16\"},{\"address\":1,\"name\":\"a\",\"type\":\"int16\"}]}}}",
                   "duplicate name \"a\""},
        BrokenCase{"typo_key", "{\"profiles\":{\"p\":{\"registers\":[{\"address\":0,\"name\":\"a\",\"type\":\"int16\",\"scle\":2}]}}}",
                   "unknown key \"scle\""},
        BrokenCase{"unit_range", "{\"profiles\":{\"p\":{\"unit\":300,\"registers\":[]}}}", "300 out of range 0..247"},
        BrokenCase{"no_registers", "{\"profiles\":{\"p\":{\"unit\":1}}}", "missing \"registers\""},
        BrokenCase{"unknown_profile", "{\"profiles\":{\"p\":{\"registers\":[]}},\n\"devices\":{\n\"*\":\"q\"}}",
                   "broken.json:3: devices.*: unknown profile \"q\""},
        BrokenCase{"device_not_string", "{\"profiles\":{\"p\":{\"registers\":[]}},\"devices\":{\"*\":1}}",
                   "must name a profile"},
        BrokenCase{"poll_not_array", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":{}}}}",
                   "profiles.p.poll: must be an array of blocks"},
        BrokenCase{"poll_function", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"function\":6,\"address\":0,\"count\":1,\"every\":\"1s\"}]}}}",
                   "profiles.p.poll[0].function: 6 out of range 3..4"},
        BrokenCase{"poll_count", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"address\":0,\"count\":126,\"every\":\"1s\"}]}}}",
                   "126 out of range 1..125"},
        BrokenCase{"poll_past_end", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"address\":65530,\"count\":10,\"every\":\"1s\"}]}}}",
                   "run past register 65535"},
        BrokenCase{"poll_every_short", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[\n{\"address\":0,\"count\":1,\n\"every\":\"50ms\"}]}}}",
                   "broken.json:3: profiles.p.poll[0].every: \"50ms\" out of range 100ms..24h"},
        BrokenCase{"poll_every_number", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"address\":0,\"count\":1,\"every\":5}]}}}",
                   "every: must be a string"},
        BrokenCase{"poll_every_words", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"address\":0,\"count\":1,\"every\":\"often\"}]}}}",
                   "\"often\" is not a duration"},
        BrokenCase{"poll_every_missing", "{\"profiles\":{\"p\":{\"registers\":[],\"poll\":[{\"address\":0,\"count\":1}]}}}",
                   "missing \"every\""},
        BrokenCase{"device_object_no_profile", "{\"profiles\":{\"p\":{\"registers\":[]}},\"devices\":{\"*\":{\"poll\":[]}}}",
                   "devices.*: missing \"profile\""},
        BrokenCase{"device_object_typo", "{\"profiles\":{\"p\":{\"registers\":[]}},\"devices\":{\"*\":{\"profile\":\"p\",\"pol\":[]}}}",
                   "unknown key \"pol\""}),
    [](const ::testing::TestParamInfo<BrokenCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(PollPlan, ProfilePlanAndDeviceOverride) {
  RegisterMap map = MustParse(R"({
    "profiles": {
      "meter": {"unit": 2, "registers": [{"address": 0, "name": "a", "type": "uint16"}],
                "poll": [{"function": 4, "address": 0, "count": 12, "every": "5s"},
                         {"address": 100, "count": 2, "every": "500ms"}]},
      "plain": {"registers": []}
    },
    "devices": {"quiet-*": {"profile": "meter", "poll": []},
                "fast-1": {"profile": "meter", "poll": [{"address": 0, "count": 1, "every": "100ms"}]},
                "same-*": {"profile": "meter"},
                "plain-*": "plain",
                "*": "meter"}
  })");
  const auto& plan = map.PollPlanFor("m-1");
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].function, 4);
  EXPECT_EQ(plan[0].count, 12);
  EXPECT_EQ(plan[0].every, absl::Seconds(5));
  EXPECT_EQ(plan[1].function, 3);  // the default
  EXPECT_EQ(plan[1].address, 100);
  EXPECT_EQ(plan[1].every, absl::Milliseconds(500));
  EXPECT_TRUE(map.PollPlanFor("quiet-7").empty());  // [] replaces the profile's plan: none
  ASSERT_EQ(map.PollPlanFor("fast-1").size(), 1u);
  EXPECT_EQ(map.PollPlanFor("fast-1")[0].every, absl::Milliseconds(100));
  EXPECT_EQ(map.PollPlanFor("same-1").size(), 2u);  // an object without "poll" keeps the profile's
  EXPECT_EQ(map.ProfileFor("same-1")->name, "meter");
  EXPECT_TRUE(map.PollPlanFor("plain-1").empty());
  EXPECT_EQ(map.ProfileFor("quiet-7")->unit, 2);
  RegisterMap none = MustParse(R"({"profiles": {"p": {"registers": []}}})");
  EXPECT_TRUE(none.PollPlanFor("x").empty());  // no profile: no plan
}

TEST(LoadFile, MissingFileSaysSo) {
  auto map = RegisterMap::LoadFile("/nonexistent/registers.json");
  ASSERT_FALSE(map.ok());
  EXPECT_NE(map.status().message().find("/nonexistent/registers.json: cannot open"),
            std::string::npos);
}

TEST(LoadFile, ShippedDefaultMapLoads) {
  auto map = RegisterMap::LoadFile(DEVBRIDGE_SOURCE_DIR "/config/registers.json");
  ASSERT_TRUE(map.ok()) << map.status();
  const Profile* p = map->ProfileFor("sim-0001");
  ASSERT_NE(p, nullptr);
  EXPECT_GE(p->registers.size(), 4u);
}

TEST(JsonLocator, FindsNestedPaths) {
  const char* text = "{\n\"a\": {\n  \"b\": [\n    1,\n    {\"c\": \"x\\\"y\"}\n  ]\n}\n}";
  EXPECT_EQ(LineOfPath(text, "a"), 2);
  EXPECT_EQ(LineOfPath(text, "a.b[0]"), 4);
  EXPECT_EQ(LineOfPath(text, "a.b[1].c"), 5);
  EXPECT_EQ(LineOfPath(text, "a.missing"), 0);
  EXPECT_EQ(LineAndColumn("ab\ncd", 4), (std::pair<int, int>{2, 2}));
}

TEST(RegisterMapErrors, ANumberTooLargeForJsonIsAnErrorNotAnAbort) {
  // Found by fuzz/register_map_fuzz.cc: nlohmann throws out_of_range, not parse_error.
  auto map = RegisterMap::Parse(R"({"profiles":{"m":{"unit":1,"registers":[{"address":6666e6666}]}}})", "big.json");
  ASSERT_FALSE(map.ok());
  EXPECT_EQ(map.status().message().rfind("big.json: ", 0), 0u) << map.status();
  EXPECT_NE(map.status().message().find("number overflow"), std::string::npos) << map.status();
}

}  // namespace
}  // namespace devbridge::regmap
