// How an event is laid out on the bus (--bus, docs/scaling.md), shared by the writers
// (ingest's publisher, a push replica's API calls) and the readers (push replicas).
//
// Ingest's gRPC stream sends each event once, whole, to every replica. On the bus a replica
// reads only the streams its clients hold (interest routing), so an event is split:
//   * one FANOUT part per push stream it is a message of, on that stream's subject, with that
//     stream's offset: a replica turns it into a frame, keeps it in the history and sends it
//     to the stream's connections, and does nothing else with it;
//   * one EFFECTS part on the cluster subject, which every replica reads, when the event
//     changes what every replica knows or must do (membership, binds, sends to named clients,
//     closes, a command's result for the client that asked) or belongs to no stream at all:
//     a replica acts on it and sends no stream frame for it.
// So a bind is applied once per replica (not once per stream it reached) and a replica that
// holds no client of a group still knows the group's members.
#ifndef DEVBRIDGE_EVENTS_BUS_LAYOUT_H_
#define DEVBRIDGE_EVENTS_BUS_LAYOUT_H_

#include <string>
#include <vector>

#include "devbridge/v1/events.pb.h"

namespace devbridge::events {

// The JetStream stream that carries the events, and its subjects' prefix: a push stream's
// subject is bus::StreamSubject(prefix, system, group); every replica reads ClusterSubject.
inline constexpr char kBusStream[] = "DEVBRIDGE_EVENTS";
inline constexpr char kBusPrefix[] = "devbridge.ev";
inline std::string ClusterSubject(const std::string& prefix) { return prefix + ".cluster"; }

// A push stream: a system's own stream (group empty) or one of its groups.
struct StreamRef {
  std::string system_id;
  std::string group_name;
};

// The push streams a Push API operation is a message of: a send to a system or a group, and
// the presence frame of a bind or unbind. Membership and sends to clients have none.
std::vector<StreamRef> PushStreams(const v1::PushMessage& message);

// Whether every replica must act on `event` (its EFFECTS part), beyond fanning it out.
bool AffectsCluster(const v1::Event& event);
// Whether `event` (with its streams) is written with an EFFECTS part: it affects the cluster,
// or it is of no stream at all.
bool HasEffectsPart(const v1::Event& event);

// Encoding the parts of `event` (stamped with the bus's epoch; its seq is left 0, as a bus
// message's place is its JetStream sequence):
// the EFFECTS part, naming the streams of `event` without their offsets;
std::string EncodeEffects(v1::Event event);
// what the FANOUT parts share: `event` without streams;
std::string EncodeFanoutBase(v1::Event event);
// and one stream's FANOUT part: that base, then the stream with the offset the bus gave it
// (a message's fields may come in any order, and repeated ones add up).
std::string EncodeFanout(const std::string& base, const StreamRef& stream, uint64_t offset);

}  // namespace devbridge::events

#endif  // DEVBRIDGE_EVENTS_BUS_LAYOUT_H_
