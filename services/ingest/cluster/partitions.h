// How several ingest replicas share the fleet (`--partitions`): devices hashed to
// partitions, what travels on the intake stream, and which partitions a replica should hold.
// Pure functions, testable without a bus; partition_owner.h and intake_forwarder.h use them.
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITIONS_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITIONS_H_

#include <cstdint>
#include <deque>
#include <utility>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace devbridge::ingest::cluster {

// The JetStream stream every replica forwards the MQTT messages it takes to, one subject per
// partition; the partition's owner reads its subject.
inline constexpr char kIntakeStream[] = "DEVBRIDGE_IN";
inline constexpr char kIntakePrefix[] = "devbridge.in";
// The key-value bucket of the leases: "p<N>" per partition, "node-<id>" per live replica.
inline constexpr char kLeaseBucket[] = "devbridge_ingest";

// The partition of a device: FNV-1a of its id, modulo `partitions` (> 0). Every replica
// computes the same one.
int PartitionOf(absl::string_view device_id, int partitions);
// The partition of an MQTT topic `<prefix>/<device id>/<kind>` (the prefix may have several
// levels); -1 when it has no device id.
int PartitionOfTopic(absl::string_view topic, int partitions);
std::string IntakeSubject(int partition);
std::string PartitionLease(int partition);  // "p<N>"
// A lease name for a replica: its id with every character a key may not hold replaced.
std::string NodeLease(absl::string_view node_id);
inline constexpr char kNodeLeasePrefix[] = "node-";

// One MQTT message on the intake stream, and where it came from: the forwarding replica's
// spool (a 64-bit hash of its id) and its position there (0: not spooled). A message
// forwarded twice has the same origin both times, so the partition's owner can drop the
// second copy (IntakeWindow) whatever JetStream's own duplicate check let through.
//
// And how the broker delivered it: the MQTT session that took it (IntakeSource of its client
// id), the packet id and the DUP flag. A session's messages can reach the stream through two
// replicas: the broker resends what a dead replica had not acknowledged to the survivor that
// adopted its session (SessionAdopter), flagged DUP with the same packet id, though the dead
// one may have spooled it, and forwards it when it comes back.
struct IntakeMessage {
  absl::string_view topic;
  absl::string_view payload;
  absl::Time taken_at;
  uint64_t source = 0;
  uint64_t seq = 0;
  uint64_t session = 0;     // 0: not known
  uint16_t packet_id = 0;   // 0: QoS 0, or not known
  bool dup = false;
};
// u16 topic length | topic | i64 taken at (µs since the epoch) | u64 source | u64 seq |
// u64 session | u16 packet id | u8 flags (1: DUP) | payload (integers little-endian).
std::string EncodeIntake(const IntakeMessage& message);
// False for data too short for its own lengths. The views point into `data`.
bool DecodeIntake(absl::string_view data, IntakeMessage* message);
// The `source` of a spool id, and the `session` of an MQTT client id.
uint64_t IntakeSource(absl::string_view spool_id);

// What an owner processed last, to drop a second copy of a message:
// - the same origin (source, seq) again: a copy stored again after a bus server's leader
//   change lands close to the first (within the bus's in-flight window), so a bounded window
//   of the most recent suffices;
// - the same session, packet id, topic and payload again where either copy came flagged DUP:
//   the broker gives a packet id to no other message of the session until it has the
//   acknowledgement, so a DUP copy of the message last seen under that packet id is the same
//   message, taken by two replicas (mqtt::RedeliveryFilter reasons the same way within one).
//   Payloads merely equal are distinct messages when neither copy is DUP-flagged.
class IntakeWindow {
 public:
  explicit IntakeWindow(size_t capacity = 1 << 16, size_t packets = 1 << 14)
      : capacity_(capacity), packets_capacity_(packets) {}
  // True the first time the message is offered within the window; false for a copy.
  bool Offer(const IntakeMessage& message);
  // What it remembers: at most `capacity` origins and `packets` packets.
  size_t origins() const { return seen_.size(); }
  size_t packets() const { return packets_.size(); }

 private:
  struct Packet {
    uint64_t fingerprint = 0;  // topic and payload
    bool dup = false;          // the copy seen came flagged DUP (its original may follow)
  };
  size_t capacity_;
  absl::flat_hash_set<std::pair<uint64_t, uint64_t>> seen_;
  std::deque<std::pair<uint64_t, uint64_t>> order_;
  size_t packets_capacity_;
  absl::flat_hash_map<std::pair<uint64_t, uint16_t>, Packet> packets_;  // (session, packet id)
  std::deque<std::pair<uint64_t, uint16_t>> packet_order_;
};

// What a replica does with the leases this round: take free partitions while it holds fewer
// than its share, ceil(partitions / members), and give back what it holds beyond it (a
// replica that joins gets its share that way). `holders[p]` is partition p's holder ("": free).
struct LeasePlan {
  std::vector<int> take;
  std::vector<int> release;
};
LeasePlan PlanLeases(const std::vector<std::string>& holders, const std::string& self, int members);

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_PARTITIONS_H_
