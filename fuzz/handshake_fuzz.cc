// A WebSocket handshake's query string, recover parameter included (CONTRACT §5), on a node
// with auth on and an Origin allow-list: refused with 400/401/403 or accepted, and an
// accepted one opens and closes cleanly.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/log.h"
#include "fuzz/null_peers.h"
#include "services/push/core/push_node.h"

using devbridge::fuzz::NullTransport;
using devbridge::fuzz::NullUpstream;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Logs would cost more than the work; a registry per input keeps metrics from piling up.
  static const bool quiet = devbridge::common::SetLogLevel("off").ok();
  (void)quiet;
  devbridge::common::MetricsRegistry metrics;
  static NullTransport transport;
  static NullUpstream upstream;
  devbridge::push::NodeOptions options;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const bool with_auth = size > 0 && (data[0] & 1);
  if (with_auth) options.auth_secret = "k";
  devbridge::push::PushNode node(options, &transport, &upstream, &metrics);
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  auto request = node.Validate(input, "", now);
  if (auto* accepted = std::get_if<devbridge::push::ConnectRequest>(&request)) {
    node.OnOpen(1, *accepted, now);
    node.OnMessage(1, input, now);
    node.OnClose(1);
  }
  return 0;
}
