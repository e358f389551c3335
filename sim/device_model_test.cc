#include "sim/device_model.h"

#include "gtest/gtest.h"
#include "modbus/frame.h"

namespace devbridge::sim {
namespace {

constexpr char kMap[] = R"({"profiles":{"meter":{"unit":3,"registers":[
  {"address":0,"name":"temperature","type":"int16","scale":0.1,"unit":"°C"},
  {"address":2,"name":"energy","type":"uint32","scale":0.01,"wordOrder":"little"},
  {"address":4,"name":"voltage","type":"float32"},
  {"address":6,"name":"alarm","type":"bool","bit":3}]}}})";

// A fixed instant, so that no result depends on the day the test runs.
const absl::Time kStart = absl::FromUnixSeconds(1700000000);

class DeviceModelTest : public ::testing::Test {
 protected:
  DeviceModelTest()
      : map_(*regmap::RegisterMap::Parse(kMap, "t")),
        model_(map_.profiles()[0], 5, [this] { return now_; }) {}

  // Energy (registers 2-3) as the dashboard would decode it.
  double Energy() {
    modbus::Request read;
    read.unit = 3;
    read.address = 2;
    read.count = 2;
    const std::vector<uint8_t> frame = model_.Answer(*modbus::BuildRequest(read));  // `reply` points into it
    auto reply = modbus::ParseReply(frame, read);
    std::vector<regmap::DecodedValue> values;
    if (!reply.ok() || !regmap::Decode(map_.profiles()[0], 2, reply->data, &values).ok() ||
        values.size() != 1) {
      ADD_FAILURE() << "energy read failed";
      return -1;
    }
    return values[0].value.AsDouble();
  }

  absl::Time now_ = kStart;
  regmap::RegisterMap map_;
  DeviceModel model_;
};

TEST_F(DeviceModelTest, ReadRepliesDecodeToPlausibleValues) {
  modbus::Request read;
  read.unit = 3;
  read.address = 2;
  read.count = 5;
  auto reply_frame = model_.Answer(*modbus::BuildRequest(read));
  auto reply = modbus::ParseReply(reply_frame, read);
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_FALSE(reply->is_exception());
  std::vector<regmap::DecodedValue> values;
  ASSERT_TRUE(regmap::Decode(map_.profiles()[0], 2, reply->data, &values).ok());
  ASSERT_EQ(values.size(), 3u);
  EXPECT_GE(values[0].value.AsDouble(), 1000);          // energy, little word order
  EXPECT_LT(values[0].value.AsDouble(), 12000);
  EXPECT_NEAR(values[1].value.AsDouble(), 230, 4.1);    // voltage
  read.address = 0;
  read.count = 1;
  reply_frame = model_.Answer(*modbus::BuildRequest(read));
  ASSERT_TRUE(regmap::Decode(map_.profiles()[0], 0, modbus::ParseReply(reply_frame, read)->data, &values).ok());
  EXPECT_NEAR(values[0].value.AsDouble(), 21, 3.1);     // temperature
}

TEST_F(DeviceModelTest, AddressesOutsideTheProfileGetException02) {
  modbus::Request read;
  read.unit = 3;
  read.address = 6;
  read.count = 2;  // 7 is not covered
  auto reply = modbus::ParseReply(model_.Answer(*modbus::BuildRequest(read)), read);
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->exception, modbus::kIllegalDataAddress);
  read.address = 1;  // register 1 is a gap
  read.count = 1;
  EXPECT_EQ(modbus::ParseReply(model_.Answer(*modbus::BuildRequest(read)), read)->exception, 2);
}

TEST_F(DeviceModelTest, WritesStickAndEcho) {
  modbus::Request write;
  write.unit = 3;
  write.function = modbus::kWriteSingleRegister;
  write.address = 0;
  write.values = {123};
  auto reply = modbus::ParseReply(model_.Answer(*modbus::BuildRequest(write)), write);
  ASSERT_TRUE(reply.ok()) << reply.status();
  now_ += absl::Minutes(4);
  model_.Update(now_);
  EXPECT_EQ(model_.Word(0), 123) << "a written register holds its value";
  write.function = modbus::kWriteMultipleRegisters;
  write.address = 2;
  write.values = {1, 2};
  EXPECT_TRUE(modbus::ParseReply(model_.Answer(*modbus::BuildRequest(write)), write).ok());
  EXPECT_EQ(model_.Word(3), 2);
}

TEST_F(DeviceModelTest, AWrittenRegisterDriftsAgainAfterFiveMinutes) {
  modbus::Request write;
  write.unit = 3;
  write.function = modbus::kWriteSingleRegister;
  write.address = 0;
  write.values = {999};  // 99.9 °C: far from the 21 ± 3 the wave gives
  ASSERT_TRUE(modbus::ParseReply(model_.Answer(*modbus::BuildRequest(write)), write).ok());
  now_ += absl::Minutes(5) + absl::Seconds(1);
  model_.Update(now_);
  EXPECT_NE(model_.Word(0), 999);
}

TEST_F(DeviceModelTest, EnergyGrowsTenAnHourAndStaysInRangeOnEveryDay) {
  model_.Update(now_);
  const double first = Energy();
  now_ += absl::Hours(1);
  model_.Update(now_);
  EXPECT_NEAR(Energy() - first, 10, 0.02);
  // Every day of the ~42-day wrap cycle, so no calendar date can push it out of range.
  for (int day = 0; day < 45; ++day) {
    now_ = kStart + absl::Hours(24 * day);
    model_.Update(now_);
    const double e = Energy();
    EXPECT_GE(e, 1000) << "day " << day;
    EXPECT_LT(e, 12000) << "day " << day;
  }
}

TEST_F(DeviceModelTest, OtherUnitsAndGarbageGetNoAnswer) {
  modbus::Request read;
  read.unit = 9;
  read.count = 1;
  EXPECT_TRUE(model_.Answer(*modbus::BuildRequest(read)).empty());
  const uint8_t junk[] = {1, 2, 3};
  EXPECT_TRUE(model_.Answer(junk).empty());
}

TEST_F(DeviceModelTest, UnsolicitedReadCoversTheContiguousProfileFromItsStart) {
  auto frame = model_.UnsolicitedRead();
  auto reply = modbus::ParseUnsolicited(frame);
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(reply->quantity, 1) << "register 1 is a gap, so only register 0";
}

}  // namespace
}  // namespace devbridge::sim
