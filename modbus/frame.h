// Modbus RTU frames (CONTRACT §3): request builders for functions 3, 4, 6 and 16 and a
// reply parser that validates in libmodbus's order: length >= 4 → CRC → exception reply →
// unit and function match the request → byte count (or echo) matches what was asked.
//
// Nothing here allocates on the parse path, throws, or reads past its input. Errors are
// absl::Status values carrying the contract's result code (2001 frame error, 2006 Modbus
// exception) so callers can report them as they are.
#ifndef DEVBRIDGE_MODBUS_FRAME_H_
#define DEVBRIDGE_MODBUS_FRAME_H_

#include <cstddef>
#include <cstdint>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace devbridge::modbus {

inline constexpr size_t kMaxFrameSize = 256;  // RTU ADU limit
inline constexpr uint16_t kMaxReadCount = 125;
inline constexpr uint16_t kMaxWriteCount = 123;

enum FunctionCode : uint8_t {
  kReadHoldingRegisters = 0x03,
  kReadInputRegisters = 0x04,
  kWriteSingleRegister = 0x06,
  kWriteMultipleRegisters = 0x10,
};

// True for the four functions devbridge speaks.
bool IsSupportedFunction(uint8_t function);

// Modbus exception codes, with names as in the Modbus Application Protocol spec.
enum ExceptionCode : uint8_t {
  kIllegalFunction = 0x01,
  kIllegalDataAddress = 0x02,
  kIllegalDataValue = 0x03,
  kServerDeviceFailure = 0x04,
  kAcknowledge = 0x05,
  kServerDeviceBusy = 0x06,
  kMemoryParityError = 0x08,
  kGatewayPathUnavailable = 0x0A,
  kGatewayTargetFailedToRespond = 0x0B,
};

// "illegal data address" for 0x02; "unknown exception" for codes outside the spec.
absl::string_view ExceptionName(uint8_t code);

// What a command asks of a device. For reads `count` registers from `address`; for
// function 6 `values` holds exactly one value; for 16, 1..123 values.
struct Request {
  uint8_t unit = 1;
  uint8_t function = kReadHoldingRegisters;
  uint16_t address = 0;
  uint16_t count = 0;            // reads only
  std::vector<uint16_t> values;  // writes only

  // Registers the reply will carry (reads) or that are written (writes).
  uint16_t Quantity() const;
};

// Checks `request` against the limits of its function and returns its frame, CRC included.
// Errors: InvalidArgument (result code 400) naming the field.
absl::StatusOr<std::vector<uint8_t>> BuildRequest(const Request& request);

// A validated reply. `data` points into the frame that was parsed: register bytes, big
// endian, for reads (2 * count bytes); empty for writes and exceptions.
struct Reply {
  uint8_t unit = 0;
  uint8_t function = 0;          // without the exception bit
  uint8_t exception = 0;         // 0 unless the device answered with an exception
  uint16_t address = 0;          // writes: the echoed address
  uint16_t quantity = 0;         // reads: registers carried; 6: 1; 16: echoed quantity
  absl::Span<const uint8_t> data;

  bool is_exception() const { return exception != 0; }
  // Register `i` of a read reply, 0 <= i < quantity.
  uint16_t Register(size_t i) const {
    return static_cast<uint16_t>((data[2 * i] << 8) | data[2 * i + 1]);
  }
};

// Parses `frame` as the reply to `request`. An exception reply is returned as a Reply with
// `exception` set (not as an error); use ExceptionStatus() to turn it into code 2006.
// Errors carry result code 2001 and say which check failed.
absl::StatusOr<Reply> ParseReply(absl::Span<const uint8_t> frame, const Request& request);

// Parses a frame that arrived with no command in flight: length, CRC, exception, a
// supported function and a byte count consistent with the frame's length.
absl::StatusOr<Reply> ParseUnsolicited(absl::Span<const uint8_t> frame);

// The status for an exception reply: result code 2006, message "exception 02: illegal
// data address".
absl::Status ExceptionStatus(uint8_t exception_code);

// Frame builders for the device side (the simulator): a read reply carrying `registers`,
// a write echo, and an exception reply.
std::vector<uint8_t> BuildReadReply(uint8_t unit, uint8_t function,
                                    absl::Span<const uint16_t> registers);
std::vector<uint8_t> BuildWriteReply(const Request& request);
std::vector<uint8_t> BuildExceptionReply(uint8_t unit, uint8_t function, uint8_t code);

// Parses a request frame (the device side): CRC, supported function, lengths.
absl::StatusOr<Request> ParseRequest(absl::Span<const uint8_t> frame);

// Appends the CRC, low byte first.
void AppendCrc(std::vector<uint8_t>& frame);

}  // namespace devbridge::modbus

#endif  // DEVBRIDGE_MODBUS_FRAME_H_
