// What a PushMessage (proto/devbridge/v1/events.proto) must look like to be forwarded by
// ingest's Publish and applied by a push replica (CONTRACT §10.2), and the NODE_SNAPSHOT
// membership payload. Ingest refuses a message that breaks these rules; a replica checks
// them again before it applies an event, so one bad event can never take a replica down.
#ifndef DEVBRIDGE_EVENTS_PUSH_MESSAGE_H_
#define DEVBRIDGE_EVENTS_PUSH_MESSAGE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "devbridge/v1/events.pb.h"

namespace devbridge::events {

// At most this many client ids in one message (send_to_clients, close_client).
inline constexpr int kMaxClientIds = 10000;

// OK, or InvalidArgument saying which field breaks which rule: a known kind, valid ids for
// the kind, `data` that is valid JSON (at most 64 levels deep) for sends, and a
// well-formed member list for NODE_SNAPSHOT.
absl::Status ValidatePushMessage(const v1::PushMessage& message);
// The `data` rule alone: empty, or exactly one JSON value at most 64 levels deep.
absl::Status ValidateData(absl::string_view data);

// One client of a replica, as a NODE_SNAPSHOT lists it: [{"c":clientId,"s":systemId,"g":[groups]}].
struct SnapshotMember {
  std::string client_id;
  std::string system_id;
  std::vector<std::string> groups;
};
std::string EncodeSnapshot(const std::vector<SnapshotMember>& members);
// The members, or InvalidArgument when `data` is not an array of such objects with valid ids.
absl::StatusOr<std::vector<SnapshotMember>> DecodeSnapshot(absl::string_view data);

}  // namespace devbridge::events

#endif  // DEVBRIDGE_EVENTS_PUSH_MESSAGE_H_
