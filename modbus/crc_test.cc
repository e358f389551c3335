#include "modbus/crc.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace devbridge::modbus {
namespace {

// Bit-by-bit CRC-16/MODBUS straight from the definition, to check the tables against.
uint16_t ReferenceCrc(const std::vector<uint8_t>& data) {
  uint16_t crc = 0xFFFF;
  for (uint8_t byte : data) {
    crc ^= byte;
    for (int i = 0; i < 8; ++i) crc = (crc & 1) ? (crc >> 1) ^ 0xA001 : crc >> 1;
  }
  return crc;
}

TEST(Crc16, CheckValueOf123456789Is4B37) {
  const std::string check = "123456789";
  EXPECT_EQ(Crc16(reinterpret_cast<const uint8_t*>(check.data()), check.size()), 0x4B37);
}

TEST(Crc16, ContractVectors) {
  // 01 03 00 00 00 0A C5 CD: CRC C5 CD is sent low byte first, so the value is 0xCDC5.
  const uint8_t read_request[] = {0x01, 0x03, 0x00, 0x00, 0x00, 0x0A};
  EXPECT_EQ(Crc16(read_request, sizeof read_request), 0xCDC5);
  const uint8_t reply[] = {0x01, 0x03, 0x04, 0x00, 0x0A, 0x00, 0x64};
  EXPECT_EQ(Crc16(reply, sizeof reply), 0xDADB);
  const uint8_t exception[] = {0x01, 0x83, 0x02};
  EXPECT_EQ(Crc16(exception, sizeof exception), 0xF1C0);
  const uint8_t write[] = {0x01, 0x06, 0x00, 0x01, 0x00, 0x03};
  EXPECT_EQ(Crc16(write, sizeof write), 0x0B98);
}

TEST(Crc16, EmptyInputIsTheInitialValue) { EXPECT_EQ(Crc16(nullptr, 0), 0xFFFF); }

TEST(Crc16, MatchesBitwiseReferenceOnEveryLength) {
  std::mt19937 rng(7);
  for (size_t len = 0; len <= 300; ++len) {
    std::vector<uint8_t> data(len);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    ASSERT_EQ(Crc16(data.data(), data.size()), ReferenceCrc(data)) << "length " << len;
  }
}

TEST(Crc16, UpdateContinuesAcrossSplits) {
  std::vector<uint8_t> data(100);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31);
  const uint16_t whole = Crc16(data.data(), data.size());
  for (size_t split = 0; split <= data.size(); ++split) {
    const uint16_t first = Crc16(data.data(), split);
    ASSERT_EQ(Crc16Update(first, data.data() + split, data.size() - split), whole) << split;
  }
}

}  // namespace
}  // namespace devbridge::modbus
