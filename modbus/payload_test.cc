#include "modbus/payload.h"

#include <string>

#include "common/status.h"
#include "gtest/gtest.h"

namespace devbridge::modbus {
namespace {

std::string Bytes(std::initializer_list<uint8_t> b) { return std::string(b.begin(), b.end()); }

TEST(ReadPayload, HexTextInAnyCaseWithSpaces) {
  for (absl::string_view text : {"01030000000AC5CD", "01 03 00 00 00 0a c5 cd", " 0103 0000\t000A\nC5CD \r\n"}) {
    auto frame = ReadPayload(text);
    ASSERT_TRUE(frame.ok()) << text << ": " << frame.status();
    EXPECT_EQ(ToHex(frame->span()), "01030000000AC5CD");
  }
}

TEST(ReadPayload, RawBytes) {
  auto frame = ReadPayload(Bytes({0x01, 0x03, 0x04, 0x00, 0x0A, 0x00, 0x64, 0xDB, 0xDA}));
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(ToHex(frame->span()), "010304000A0064DBDA");
}

TEST(ReadPayload, OddLengthHexIsAnError) {
  auto frame = ReadPayload("01 03 0");
  ASSERT_FALSE(frame.ok());
  EXPECT_EQ(common::ResultCodeOf(frame.status()), common::kCodeFrameError);
  EXPECT_EQ(frame.status().message(), "bad hex text: odd number of hex digits");
}

TEST(ReadPayload, NonHexTextIsAnErrorNamingTheCharacter) {
  auto frame = ReadPayload("01 03 ZZ");
  ASSERT_FALSE(frame.ok());
  EXPECT_EQ(frame.status().message(), "bad hex text: 'Z' at offset 6");
  EXPECT_FALSE(ReadPayload("hello, world").ok());
}

TEST(ReadPayload, EmptyAndBlankPayloads) {
  EXPECT_EQ(ReadPayload("").status().message(), "empty payload");
  EXPECT_EQ(ReadPayload("   ").status().message(), "empty payload: no hex digits");
}

TEST(ReadPayload, TooLong) {
  EXPECT_FALSE(ReadPayload(std::string(size_t{2} * 257, 'A')).ok());
  EXPECT_TRUE(ReadPayload(std::string(size_t{2} * 256, 'A')).ok());
  std::string raw(1 << 20, '\x01');  // 1 MiB of binary
  EXPECT_NE(ReadPayload(raw).status().message().find("payload too long"), std::string::npos);
}

// Raw bytes that happen to be printable ASCII are still read as a frame when their CRC holds.
TEST(ReadPayload, PrintableRawFrameWithValidCrc) {
  // Find a frame of letters whose CRC bytes are printable too, but not hex digits.
  std::string payload;
  for (char a = 'G'; a <= 'Z' && payload.empty(); ++a) {
    for (char b = 'G'; b <= 'Z' && payload.empty(); ++b) {
      std::vector<uint8_t> frame{static_cast<uint8_t>(a), static_cast<uint8_t>(b), 'Q'};
      AppendCrc(frame);
      if (frame[3] >= 0x20 && frame[3] < 0x7F && frame[4] >= 0x20 && frame[4] < 0x7F) {
        payload.assign(frame.begin(), frame.end());
      }
    }
  }
  ASSERT_FALSE(payload.empty());
  auto read = ReadPayload(payload);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size, 5u);
  EXPECT_EQ(read->bytes[0], static_cast<uint8_t>(payload[0]));
}

TEST(ToHex, UpperCaseNoSpaces) {
  const uint8_t bytes[] = {0x00, 0xab, 0x10, 0xff};
  EXPECT_EQ(ToHex(bytes), "00AB10FF");
  EXPECT_EQ(ToHex({}), "");
}

}  // namespace
}  // namespace devbridge::modbus
