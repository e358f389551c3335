#include "modbus/frame.h"

#include <vector>

#include "common/status.h"
#include "gtest/gtest.h"
#include "modbus/payload.h"

namespace devbridge::modbus {
namespace {

using common::ResultCodeOf;

std::vector<uint8_t> Hex(absl::string_view text) {
  auto frame = ReadPayload(text);
  EXPECT_TRUE(frame.ok()) << frame.status();
  return {frame->bytes.begin(), frame->bytes.begin() + frame->size};
}

Request Read10() {
  Request r;
  r.unit = 1;
  r.function = kReadHoldingRegisters;
  r.address = 0;
  r.count = 2;
  return r;
}

TEST(BuildRequest, ContractVectors) {
  Request read;
  read.count = 10;
  EXPECT_EQ(*BuildRequest(read), Hex("01 03 00 00 00 0A C5 CD"));
  Request write;
  write.function = kWriteSingleRegister;
  write.address = 1;
  write.values = {3};
  EXPECT_EQ(*BuildRequest(write), Hex("01 06 00 01 00 03 98 0B"));
}

TEST(BuildRequest, WriteMultipleAndInputRead) {
  Request write;
  write.function = kWriteMultipleRegisters;
  write.address = 0x0001;
  write.values = {0x000A, 0x0102};
  // Spec example (Modbus Application Protocol 6.12) with unit 1: 01 10 0001 0002 04 000A 0102.
  std::vector<uint8_t> frame = *BuildRequest(write);
  std::vector<uint8_t> body{0x01, 0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02};
  ASSERT_EQ(frame.size(), body.size() + 2);
  EXPECT_TRUE(std::equal(body.begin(), body.end(), frame.begin()));
  AppendCrc(body);
  EXPECT_EQ(frame, body);

  Request input;
  input.function = kReadInputRegisters;
  input.address = 8;
  input.count = 1;
  auto parsed = ParseRequest(*BuildRequest(input));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->function, kReadInputRegisters);
  EXPECT_EQ(parsed->address, 8);
  EXPECT_EQ(parsed->count, 1);
}

TEST(BuildRequest, RejectsOutOfRangeArgumentsAsBadRequest) {
  Request r;
  r.count = 0;
  EXPECT_EQ(ResultCodeOf(BuildRequest(r).status()), common::kCodeBadRequest);
  r.count = 126;
  EXPECT_FALSE(BuildRequest(r).ok());
  r.count = 2;
  r.address = 65535;
  EXPECT_FALSE(BuildRequest(r).ok());
  r.address = 0;
  r.function = 5;
  EXPECT_FALSE(BuildRequest(r).ok());
  r.function = kWriteSingleRegister;
  r.values = {1, 2};
  EXPECT_FALSE(BuildRequest(r).ok());
  r.function = kWriteMultipleRegisters;
  r.values.assign(124, 0);
  EXPECT_FALSE(BuildRequest(r).ok());
  r.values.clear();
  EXPECT_FALSE(BuildRequest(r).ok());
  r.function = kReadHoldingRegisters;
  r.values = {1};
  EXPECT_FALSE(BuildRequest(r).ok());
  r.values.clear();
  r.unit = 248;
  EXPECT_FALSE(BuildRequest(r).ok());
}

TEST(ParseReply, ContractReadReply) {
  auto frame = Hex("01 03 04 00 0A 00 64 DB DA");
  auto reply = ParseReply(frame, Read10());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->is_exception());
  EXPECT_EQ(reply->quantity, 2);
  EXPECT_EQ(reply->Register(0), 10);
  EXPECT_EQ(reply->Register(1), 100);
}

TEST(ParseReply, ContractExceptionReply) {
  auto frame = Hex("01 83 02 C0 F1");
  auto reply = ParseReply(frame, Read10());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_TRUE(reply->is_exception());
  EXPECT_EQ(reply->exception, kIllegalDataAddress);
  absl::Status s = ExceptionStatus(reply->exception);
  EXPECT_EQ(ResultCodeOf(s), common::kCodeModbusException);
  EXPECT_EQ(s.message(), "exception 02: illegal data address");
  EXPECT_EQ(ExceptionName(0x04), "server device failure");
  EXPECT_EQ(ExceptionName(0x7F), "unknown exception");
}

TEST(ParseReply, WriteEchoes) {
  Request write;
  write.function = kWriteSingleRegister;
  write.address = 1;
  write.values = {3};
  auto frame = Hex("01 06 00 01 00 03 98 0B");
  EXPECT_TRUE(ParseReply(frame, write).ok());
  write.values = {4};
  EXPECT_NE(ParseReply(frame, write).status().message().find("value mismatch"), std::string::npos);
  write.values = {3};
  write.address = 2;
  EXPECT_NE(ParseReply(frame, write).status().message().find("address mismatch"), std::string::npos);

  Request multi;
  multi.function = kWriteMultipleRegisters;
  multi.address = 1;
  multi.values = {10, 258};
  auto echo = BuildWriteReply(multi);
  auto reply = ParseReply(echo, multi);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->quantity, 2);
  multi.values = {10};
  EXPECT_NE(ParseReply(echo, multi).status().message().find("quantity mismatch"), std::string::npos);
}

// Every prefix of a valid frame, as it would arrive byte by byte, fails cleanly with 2001
// until the whole frame is there.
TEST(ParseReply, EveryTruncationIsAFrameError) {
  const std::vector<std::vector<uint8_t>> frames = {
      Hex("01 03 04 00 0A 00 64 DB DA"), Hex("01 83 02 C0 F1"), Hex("01 06 00 01 00 03 98 0B")};
  const Request requests[] = {Read10(), Read10(), [] {
                                Request w;
                                w.function = kWriteSingleRegister;
                                w.address = 1;
                                w.values = {3};
                                return w;
                              }()};
  for (size_t f = 0; f < frames.size(); ++f) {
    for (size_t n = 0; n < frames[f].size(); ++n) {
      // A heap copy of exactly n bytes, so a read past the end is caught by sanitizers.
      std::vector<uint8_t> prefix(frames[f].begin(), frames[f].begin() + n);
      auto reply = ParseReply(prefix, requests[f]);
      ASSERT_FALSE(reply.ok()) << "frame " << f << " cut to " << n;
      EXPECT_EQ(ResultCodeOf(reply.status()), common::kCodeFrameError);
      EXPECT_FALSE(ParseUnsolicited(prefix).ok());
    }
    EXPECT_TRUE(ParseReply(frames[f], requests[f]).ok());
  }
}

TEST(ParseReply, ShortFrameSaysSo) {
  std::vector<uint8_t> three{0x01, 0x03, 0x00};
  EXPECT_EQ(ParseReply(three, Read10()).status().message(), "frame too short: 3 bytes, minimum 4");
}

TEST(ParseReply, WrongCrcIsReportedBeforeAnythingElse) {
  auto frame = Hex("02 04 04 00 0A 00 64 DB DB");  // wrong unit, function and CRC
  auto reply = ParseReply(frame, Read10());
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(ResultCodeOf(reply.status()), common::kCodeFrameError);
  EXPECT_NE(reply.status().message().find("CRC mismatch"), std::string::npos)
      << reply.status().message();
}

TEST(ParseReply, WrongUnitThenWrongFunction) {
  auto other_unit = BuildReadReply(2, kReadHoldingRegisters, std::vector<uint16_t>{10, 100});
  EXPECT_NE(ParseReply(other_unit, Read10()).status().message().find("unit mismatch"),
            std::string::npos);
  auto other_function = BuildReadReply(1, kReadInputRegisters, std::vector<uint16_t>{10, 100});
  EXPECT_NE(ParseReply(other_function, Read10()).status().message().find("function mismatch"),
            std::string::npos);
  // An exception for another function is a mismatch, not an answer to this request.
  auto other_exception = BuildExceptionReply(1, kReadInputRegisters, 2);
  EXPECT_NE(ParseReply(other_exception, Read10()).status().message().find("function mismatch"),
            std::string::npos);
}

TEST(ParseReply, WrongByteCount) {
  auto three_regs = BuildReadReply(1, kReadHoldingRegisters, std::vector<uint16_t>{1, 2, 3});
  auto reply = ParseReply(three_regs, Read10());
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.status().message().find("byte count mismatch"), std::string::npos);

  // Byte count field disagreeing with the frame's own length.
  std::vector<uint8_t> lying{0x01, 0x03, 0x06, 0x00, 0x0A, 0x00, 0x64};
  AppendCrc(lying);
  EXPECT_NE(ParseReply(lying, Read10()).status().message().find("malformed read reply"),
            std::string::npos);
  std::vector<uint8_t> odd{0x01, 0x03, 0x03, 0x00, 0x0A, 0x00};
  AppendCrc(odd);
  EXPECT_NE(ParseUnsolicited(odd).status().message().find("odd byte count"), std::string::npos);
}

TEST(ParseReply, MalformedExceptionReplies) {
  std::vector<uint8_t> long_exception{0x01, 0x83, 0x02, 0x00};
  AppendCrc(long_exception);
  EXPECT_EQ(ResultCodeOf(ParseReply(long_exception, Read10()).status()), common::kCodeFrameError);
  std::vector<uint8_t> zero_code{0x01, 0x83, 0x00};
  AppendCrc(zero_code);
  EXPECT_FALSE(ParseReply(zero_code, Read10()).ok());
}

TEST(ParseUnsolicited, AcceptsEachKindAndRejectsUnknownFunctions) {
  auto read = ParseUnsolicited(Hex("01 03 04 00 0A 00 64 DB DA"));
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->quantity, 2);
  EXPECT_TRUE(ParseUnsolicited(Hex("01 83 02 C0 F1"))->is_exception());
  EXPECT_TRUE(ParseUnsolicited(Hex("01 06 00 01 00 03 98 0B")).ok());
  std::vector<uint8_t> coils{0x01, 0x01, 0x01, 0x00};
  AppendCrc(coils);
  EXPECT_NE(ParseUnsolicited(coils).status().message().find("unsupported function 0x01"),
            std::string::npos);
  std::vector<uint8_t> huge(300, 0);
  EXPECT_NE(ParseUnsolicited(huge).status().message().find("frame too long"), std::string::npos);
}

TEST(ParseUnsolicited, RejectsRepliesNoRequestCouldHaveAsked) {
  auto with_crc = [](std::vector<uint8_t> bytes) {
    AppendCrc(bytes);
    return bytes;
  };
  EXPECT_NE(ParseUnsolicited(with_crc({0x01, 0x03, 0x00})).status().message().find("byte count 0"), std::string::npos);
  std::vector<uint8_t> too_many = {0x01, 0x03, 252};
  too_many.resize(3 + 252, 0);
  EXPECT_FALSE(ParseUnsolicited(with_crc(too_many)).ok()) << "126 registers";
  EXPECT_NE(ParseUnsolicited(with_crc({0x01, 0x10, 0x00, 0x00, 0xFF, 0xFF})).status().message().find("quantity 65535"),
            std::string::npos);
  EXPECT_FALSE(ParseUnsolicited(with_crc({0x01, 0x10, 0x00, 0x00, 0x00, 0x00})).ok());
  EXPECT_TRUE(ParseUnsolicited(with_crc({0x01, 0x10, 0x00, 0x00, 0x00, 0x7B})).ok()) << "123 is the most";
  EXPECT_NE(ParseUnsolicited(with_crc({0xFF, 0x03, 0x02, 0x00, 0x01})).status().message().find("unit 255"),
            std::string::npos);
  EXPECT_FALSE(ParseUnsolicited(with_crc({0x00, 0x03, 0x02, 0x00, 0x01})).ok()) << "broadcast";
  EXPECT_TRUE(ParseUnsolicited(with_crc({0xF7, 0x03, 0x02, 0x00, 0x01})).ok()) << "247 is the last unit";
}

TEST(ParseRequest, RoundTripsEveryFunctionAndRejectsMalformed) {
  for (uint8_t fn : {kReadHoldingRegisters, kReadInputRegisters}) {
    Request r;
    r.function = fn;
    r.address = 300;
    r.count = 125;
    auto back = ParseRequest(*BuildRequest(r));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->count, 125);
  }
  Request w;
  w.function = kWriteMultipleRegisters;
  w.address = 7;
  w.values = {1, 2, 3};
  auto back = ParseRequest(*BuildRequest(w));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->values, w.values);
  auto frame = *BuildRequest(w);
  frame[6] = 4;  // byte count disagrees with quantity
  frame.resize(frame.size() - 2);
  AppendCrc(frame);
  EXPECT_FALSE(ParseRequest(frame).ok());
  std::vector<uint8_t> unsupported{0x01, 0x05, 0x00, 0x00, 0xFF, 0x00};
  AppendCrc(unsupported);
  EXPECT_FALSE(ParseRequest(unsupported).ok());
}

}  // namespace
}  // namespace devbridge::modbus
