// What ingest's Publish takes from a push replica (CONTRACT §10.2): any PushMessage is
// forwarded only if it passes ValidatePushMessage; the NODE_SNAPSHOT decoder takes any text.
#include <cstddef>
#include <cstdint>

#include "events/push_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  devbridge::v1::PushMessage message;
  if (message.ParseFromArray(data, static_cast<int>(size))) (void)devbridge::events::ValidatePushMessage(message);
  (void)devbridge::events::DecodeSnapshot(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
