// A WebSocket client frame (CONTRACT §5): parsed or refused with a message, never thrown.
#include <cstddef>
#include <cstdint>
#include <string>

#include "services/push/core/frames.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string request_id;
  (void)devbridge::push::ParseClientFrame(absl::string_view(reinterpret_cast<const char*>(data), size), &request_id);
  return 0;
}
