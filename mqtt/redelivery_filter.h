// Tells a broker's redelivery of a message already taken from a new message. A QoS 1 or 2
// PUBLISH the broker sends again, because it did not see our acknowledgement (the connection
// closed first: intake paused, the network dropped, the broker restarted), carries the DUP flag
// and its original packet identifier (MQTT 3.1.1 §4.4, MQTT 5 §4.4), and the broker gives that
// identifier to no other message until it has our acknowledgement. So a DUP message whose
// packet id last came with the same topic and payload was taken already, however many messages
// came between (Paho may hold thousands in its own queue across a reconnect). Payloads that are
// merely equal (a meter reading the same values twice) are distinct messages and are taken.
#ifndef DEVBRIDGE_MQTT_REDELIVERY_FILTER_H_
#define DEVBRIDGE_MQTT_REDELIVERY_FILTER_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"

namespace devbridge::mqtt {

class RedeliveryFilter {
 public:
  RedeliveryFilter() : last_(65536, 0) {}

  // True when this QoS 1/2 message (`dup`: its DUP flag) is a redelivery of one taken before;
  // otherwise records it as taken under `packet_id` and returns false. QoS 0 (packet id 0)
  // is never a redelivery. One caller at a time (Paho's receive thread).
  bool Redelivered(uint16_t packet_id, bool dup, absl::string_view topic, absl::string_view payload);
  // Records a message as taken under `packet_id` (by an earlier run, say); 0 is ignored.
  void Taken(uint16_t packet_id, absl::string_view topic, absl::string_view payload);

 private:
  std::vector<uint64_t> last_;  // by packet id: fingerprint of the last message taken with it; 0: none
};

}  // namespace devbridge::mqtt

#endif  // DEVBRIDGE_MQTT_REDELIVERY_FILTER_H_
