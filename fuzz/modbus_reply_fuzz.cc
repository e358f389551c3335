// The device side of a Modbus exchange: any payload a DTU may publish on devices/ID/data,
// read as text or bytes, parsed as an unsolicited frame and as the reply to each kind of
// request. None of it may crash or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "modbus/frame.h"
#include "modbus/payload.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view payload(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<devbridge::modbus::FrameBytes> frame = devbridge::modbus::ReadPayload(payload);
  if (!frame.ok()) return 0;
  (void)devbridge::modbus::ParseUnsolicited(frame->span());
  (void)devbridge::modbus::ParseRequest(frame->span());
  devbridge::modbus::Request request;
  request.unit = size > 0 ? data[0] : 1;
  for (uint8_t function : {3, 4, 6, 16}) {
    request.function = function;
    request.count = function <= 4 ? static_cast<uint16_t>(1 + size % 125) : 0;
    request.values.assign(function == 16 ? 1 + size % 123 : (function == 6 ? 1 : 0), 7);
    (void)devbridge::modbus::ParseReply(frame->span(), request);
  }
  return 0;
}
