// MQTT payloads that carry one Modbus RTU frame: hex text (any case, spaces and other ASCII
// white space allowed) or the raw bytes themselves.
#ifndef DEVBRIDGE_MODBUS_PAYLOAD_H_
#define DEVBRIDGE_MODBUS_PAYLOAD_H_

#include <array>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "modbus/frame.h"

namespace devbridge::modbus {

// A frame's bytes, held inline: reading a payload never allocates.
struct FrameBytes {
  std::array<uint8_t, kMaxFrameSize> bytes{};
  size_t size = 0;

  absl::Span<const uint8_t> span() const { return {bytes.data(), size}; }
};

// Reads one frame from `payload`.
//
// A payload made only of printable ASCII and white space is hex text and must decode as
// such; if it does not (a non-hex character, an odd number of digits) but its bytes form a
// frame with a valid CRC, it is taken as raw bytes that happen to be printable. Any other
// payload is raw bytes. Errors carry result code 2001: empty payload, bad hex, or more
// than 256 bytes.
absl::StatusOr<FrameBytes> ReadPayload(absl::string_view payload);

// Upper-case hex without spaces, as published on the command topic: "01030000000AC5CD".
std::string ToHex(absl::Span<const uint8_t> bytes);

}  // namespace devbridge::modbus

#endif  // DEVBRIDGE_MODBUS_PAYLOAD_H_
