// ingest's HTTP request-head parser: any head is parsed or refused with its status.
#include <cstddef>
#include <cstdint>

#include "httpd/http_server.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<devbridge::httpd::RequestHead> head =
      devbridge::httpd::ParseRequestHead(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!head.ok()) (void)devbridge::httpd::StatusOfError(head.status());
  return 0;
}
