#include "modbus/frame.h"

#include "absl/strings/str_format.h"
#include "common/status.h"
#include "modbus/crc.h"

namespace devbridge::modbus {
namespace {

using common::kCodeBadRequest;
using common::kCodeFrameError;

template <typename... Args>
absl::Status FrameError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  return common::Error(kCodeFrameError, absl::StatusCode::kInvalidArgument,
                       absl::StrFormat(format, args...));
}

template <typename... Args>
absl::Status BadRequest(const absl::FormatSpec<Args...>& format, const Args&... args) {
  return common::Error(kCodeBadRequest, absl::StatusCode::kInvalidArgument,
                       absl::StrFormat(format, args...));
}

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

void PutBe16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v & 0xFF));
}

bool IsRead(uint8_t function) {
  return function == kReadHoldingRegisters || function == kReadInputRegisters;
}

// Length and CRC: the first two checks, common to every frame.
absl::Status CheckLengthAndCrc(absl::Span<const uint8_t> frame) {
  if (frame.size() < 4) return FrameError("frame too short: %d bytes, minimum 4", frame.size());
  if (frame.size() > kMaxFrameSize) {
    return FrameError("frame too long: %d bytes, maximum %d", frame.size(), kMaxFrameSize);
  }
  const size_t n = frame.size();
  const uint16_t carried = static_cast<uint16_t>(frame[n - 2] | (frame[n - 1] << 8));
  const uint16_t computed = Crc16(frame.data(), n - 2);
  if (carried != computed) {
    return FrameError("CRC mismatch: frame carries 0x%04X, computed 0x%04X", carried, computed);
  }
  return absl::OkStatus();
}

absl::StatusOr<Reply> ParseException(absl::Span<const uint8_t> frame) {
  if (frame.size() != 5) {
    return FrameError("malformed exception reply: %d bytes, want 5", frame.size());
  }
  Reply reply;
  reply.unit = frame[0];
  reply.function = static_cast<uint8_t>(frame[1] & 0x7F);
  reply.exception = frame[2];
  if (reply.exception == 0) return FrameError("malformed exception reply: exception code 0");
  return reply;
}

// A read reply's byte count must agree with the frame's length and be a whole number of
// registers.
absl::StatusOr<Reply> ParseReadBody(absl::Span<const uint8_t> frame) {
  if (frame.size() < 5) return FrameError("frame too short for a read reply: %d bytes", frame.size());
  const size_t byte_count = frame[2];
  if (frame.size() != 5 + byte_count) {
    return FrameError("malformed read reply: byte count %d but frame is %d bytes (want %d)",
                      byte_count, frame.size(), 5 + byte_count);
  }
  if (byte_count % 2 != 0) return FrameError("malformed read reply: odd byte count %d", byte_count);
  // 1..125 registers (CONTRACT §3): a reply of none, or of more than any request may ask, is
  // not a reply to anything.
  if (byte_count == 0 || byte_count > 250) {
    return FrameError("malformed read reply: byte count %d (want 2..250)", byte_count);
  }
  Reply reply;
  reply.unit = frame[0];
  reply.function = frame[1];
  reply.quantity = static_cast<uint16_t>(byte_count / 2);
  reply.data = frame.subspan(3, byte_count);
  return reply;
}

absl::StatusOr<Reply> ParseWriteBody(absl::Span<const uint8_t> frame) {
  if (frame.size() != 8) {
    return FrameError("malformed write reply: %d bytes, want 8", frame.size());
  }
  Reply reply;
  reply.unit = frame[0];
  reply.function = frame[1];
  reply.address = Be16(&frame[2]);
  reply.quantity = frame[1] == kWriteSingleRegister ? 1 : Be16(&frame[4]);
  if (reply.quantity == 0 || reply.quantity > 123) {
    return FrameError("malformed write reply: quantity %d (want 1..123)", reply.quantity);
  }
  return reply;
}

}  // namespace

bool IsSupportedFunction(uint8_t function) {
  return IsRead(function) || function == kWriteSingleRegister || function == kWriteMultipleRegisters;
}

absl::string_view ExceptionName(uint8_t code) {
  switch (code) {
    case kIllegalFunction: return "illegal function";
    case kIllegalDataAddress: return "illegal data address";
    case kIllegalDataValue: return "illegal data value";
    case kServerDeviceFailure: return "server device failure";
    case kAcknowledge: return "acknowledge";
    case kServerDeviceBusy: return "server device busy";
    case kMemoryParityError: return "memory parity error";
    case kGatewayPathUnavailable: return "gateway path unavailable";
    case kGatewayTargetFailedToRespond: return "gateway target device failed to respond";
    default: return "unknown exception";
  }
}

uint16_t Request::Quantity() const {
  if (IsRead(function)) return count;
  return static_cast<uint16_t>(values.size());
}

void AppendCrc(std::vector<uint8_t>& frame) {
  const uint16_t crc = Crc16(frame.data(), frame.size());
  frame.push_back(static_cast<uint8_t>(crc & 0xFF));
  frame.push_back(static_cast<uint8_t>(crc >> 8));
}

absl::StatusOr<std::vector<uint8_t>> BuildRequest(const Request& request) {
  if (request.unit > 247) return BadRequest("unit %d out of range 0..247", request.unit);
  std::vector<uint8_t> frame{request.unit, request.function};
  frame.reserve(9 + 2 * request.values.size());
  PutBe16(frame, request.address);
  switch (request.function) {
    case kReadHoldingRegisters:
    case kReadInputRegisters:
      if (request.count < 1 || request.count > kMaxReadCount) {
        return BadRequest("count %d out of range 1..%d", request.count, kMaxReadCount);
      }
      if (!request.values.empty()) return BadRequest("values given for a read (function %d)", request.function);
      if (request.address + request.count > 0x10000) {
        return BadRequest("address %d + count %d passes 65535", request.address, request.count);
      }
      PutBe16(frame, request.count);
      break;
    case kWriteSingleRegister:
      if (request.values.size() != 1) {
        return BadRequest("function 6 writes exactly one value, got %d", request.values.size());
      }
      PutBe16(frame, request.values[0]);
      break;
    case kWriteMultipleRegisters:
      if (request.values.empty() || request.values.size() > kMaxWriteCount) {
        return BadRequest("function 16 writes 1..%d values, got %d", kMaxWriteCount,
                          request.values.size());
      }
      if (request.address + request.values.size() > 0x10000) {
        return BadRequest("address %d + %d values passes 65535", request.address, request.values.size());
      }
      PutBe16(frame, static_cast<uint16_t>(request.values.size()));
      frame.push_back(static_cast<uint8_t>(2 * request.values.size()));
      for (uint16_t v : request.values) PutBe16(frame, v);
      break;
    default:
      return BadRequest("function %d not supported (want 3, 4, 6 or 16)", request.function);
  }
  AppendCrc(frame);
  return frame;
}

absl::StatusOr<Reply> ParseReply(absl::Span<const uint8_t> frame, const Request& request) {
  if (absl::Status s = CheckLengthAndCrc(frame); !s.ok()) return s;
  if (frame[1] == (request.function | 0x80)) return ParseException(frame);
  if (frame[0] != request.unit) {
    return FrameError("unit mismatch: reply from unit %d, request to unit %d", frame[0], request.unit);
  }
  if (frame[1] != request.function) {
    return FrameError("function mismatch: reply has function 0x%02X, request 0x%02X", frame[1],
                      request.function);
  }
  if (IsRead(request.function)) {
    absl::StatusOr<Reply> reply = ParseReadBody(frame);
    if (!reply.ok()) return reply;
    if (reply->quantity != request.count) {
      return FrameError("byte count mismatch: reply carries %d registers, request asked for %d",
                        reply->quantity, request.count);
    }
    return reply;
  }
  absl::StatusOr<Reply> reply = ParseWriteBody(frame);
  if (!reply.ok()) return reply;
  if (reply->address != request.address) {
    return FrameError("address mismatch: reply echoes %d, request wrote %d", reply->address,
                      request.address);
  }
  if (request.function == kWriteSingleRegister) {
    const uint16_t echoed = Be16(&frame[4]);
    if (request.values.size() != 1 || echoed != request.values[0]) {
      return FrameError("value mismatch: reply echoes %d", echoed);
    }
  } else if (reply->quantity != request.values.size()) {
    return FrameError("quantity mismatch: reply echoes %d registers, request wrote %d",
                      reply->quantity, request.values.size());
  }
  return reply;
}

absl::StatusOr<Reply> ParseUnsolicited(absl::Span<const uint8_t> frame) {
  if (absl::Status s = CheckLengthAndCrc(frame); !s.ok()) return s;
  // Unit 0 is broadcast (nobody answers it) and 248..255 are reserved: no device replies as them.
  if (frame[0] == 0 || frame[0] > 247) return FrameError("malformed reply: unit %d cannot answer", frame[0]);
  if ((frame[1] & 0x80) != 0) return ParseException(frame);
  if (IsRead(frame[1])) return ParseReadBody(frame);
  if (IsSupportedFunction(frame[1])) return ParseWriteBody(frame);
  return FrameError("unsupported function 0x%02X", frame[1]);
}

absl::Status ExceptionStatus(uint8_t exception_code) {
  return common::Error(common::kCodeModbusException, absl::StatusCode::kFailedPrecondition,
                       absl::StrFormat("exception %02d: %s", exception_code,
                                       ExceptionName(exception_code)));
}

std::vector<uint8_t> BuildReadReply(uint8_t unit, uint8_t function,
                                    absl::Span<const uint16_t> registers) {
  std::vector<uint8_t> frame{unit, function, static_cast<uint8_t>(2 * registers.size())};
  frame.reserve(5 + 2 * registers.size());
  for (uint16_t r : registers) PutBe16(frame, r);
  AppendCrc(frame);
  return frame;
}

std::vector<uint8_t> BuildWriteReply(const Request& request) {
  std::vector<uint8_t> frame{request.unit, request.function};
  PutBe16(frame, request.address);
  if (request.function == kWriteSingleRegister) {
    PutBe16(frame, request.values.empty() ? 0 : request.values[0]);
  } else {
    PutBe16(frame, static_cast<uint16_t>(request.values.size()));
  }
  AppendCrc(frame);
  return frame;
}

std::vector<uint8_t> BuildExceptionReply(uint8_t unit, uint8_t function, uint8_t code) {
  std::vector<uint8_t> frame{unit, static_cast<uint8_t>(function | 0x80), code};
  AppendCrc(frame);
  return frame;
}

absl::StatusOr<Request> ParseRequest(absl::Span<const uint8_t> frame) {
  if (absl::Status s = CheckLengthAndCrc(frame); !s.ok()) return s;
  Request request;
  request.unit = frame[0];
  request.function = frame[1];
  if (!IsSupportedFunction(request.function)) {
    return FrameError("unsupported function 0x%02X", request.function);
  }
  if (frame.size() < 8) return FrameError("request too short: %d bytes", frame.size());
  request.address = Be16(&frame[2]);
  const uint16_t word = Be16(&frame[4]);
  switch (request.function) {
    case kReadHoldingRegisters:
    case kReadInputRegisters:
      if (frame.size() != 8) return FrameError("read request of %d bytes, want 8", frame.size());
      if (word < 1 || word > kMaxReadCount) return FrameError("read quantity %d out of range 1..125", word);
      request.count = word;
      break;
    case kWriteSingleRegister:
      if (frame.size() != 8) return FrameError("write request of %d bytes, want 8", frame.size());
      request.values = {word};
      break;
    default: {  // kWriteMultipleRegisters
      if (frame.size() < 9) return FrameError("request too short: %d bytes", frame.size());
      const size_t byte_count = frame[6];
      if (word < 1 || word > kMaxWriteCount || byte_count != size_t{2} * word ||
          frame.size() != 9 + byte_count) {
        return FrameError("malformed write-multiple request: quantity %d, byte count %d, %d bytes",
                          word, byte_count, frame.size());
      }
      for (size_t i = 0; i < word; ++i) request.values.push_back(Be16(&frame[7 + (2 * i)]));
    }
  }
  return request;
}

}  // namespace devbridge::modbus
