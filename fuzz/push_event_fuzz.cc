// Applying any event from ingest's stream on a push replica with clients in systems and
// groups: a poison event is counted and skipped, and nothing escapes (CONTRACT §10.1).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/log.h"
#include "fuzz/null_peers.h"
#include "services/push/core/push_node.h"

using devbridge::fuzz::NullTransport;
using devbridge::fuzz::NullUpstream;
using devbridge::push::ConnId;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Logs would cost more than the work; a registry per input keeps metrics from piling up.
  static const bool quiet = devbridge::common::SetLogLevel("off").ok();
  (void)quiet;
  devbridge::common::MetricsRegistry metrics;
  static NullTransport transport;
  static NullUpstream upstream;
  devbridge::v1::Event event;
  if (!event.ParseFromArray(data, static_cast<int>(size))) return 0;
  devbridge::push::NodeOptions options;
  options.node_id = "fuzz";
  options.history_size = 16;
  devbridge::push::PushNode node(options, &transport, &upstream, &metrics);
  const absl::Time now = absl::FromUnixSeconds(1800000000);
  for (ConnId conn : {1, 2}) {
    auto request = node.Validate(conn == 1 ? "systemId=fleet&clientId=c1&groups=ops" : "systemId=sim-1&clientId=c2",
                                 "", now);
    node.OnOpen(conn, std::get<devbridge::push::ConnectRequest>(request), now);
  }
  node.OnEvent(event, now);
  node.OnEvent(event, now + absl::Seconds(1));
  return 0;
}
