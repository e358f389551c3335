// The event stream's replay buffer: every event ingest emits gets the next sequence number
// of this process's epoch and, for each push stream (system or group) it is a message of,
// the next offset of that stream. Events are encoded once and kept, up to `capacity` events
// and `max_bytes` bytes, so a push replica can resume after the last one it saw.
// Streams unused for a while are forgotten (ForgetIdleStreams); one used again afterwards
// continues from the current sequence number, above any offset it had, so an old recover
// position can never be mistaken for a new one. Io thread only.
#ifndef DEVBRIDGE_SERVICES_INGEST_CORE_EVENT_LOG_H_
#define DEVBRIDGE_SERVICES_INGEST_CORE_EVENT_LOG_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "devbridge/v1/events.pb.h"
#include "devbridge/v1/ingest.pb.h"
#include "events/bus_layout.h"

namespace devbridge::ingest {

// A push stream: a system's own stream (group empty) or one of its groups.
using StreamRef = events::StreamRef;

// Where a subscriber starts reading: the first sequence number to send, and, when it
// asked to resume from events no longer held, the reset event to send before them.
struct ReadStart {
  uint64_t next_seq = 0;
  std::shared_ptr<const std::string> reset;  // an encoded Event with body `reset`, or null
};

class EventLog {
 public:
  EventLog(std::string epoch, size_t capacity, size_t max_bytes = SIZE_MAX);

  // Stamps `event` (epoch, seq, time, stream offsets for `streams`), encodes it, keeps it and
  // wakes every waiter. Returns the sequence number.
  uint64_t Append(v1::Event event, const std::vector<StreamRef>& streams, absl::Time now);

  // Where a subscriber with `request` starts; see SubscribeRequest.
  ReadStart Start(const v1::SubscribeRequest& request) const;

  // The encoded event `seq`, or null if not held (evicted, or not appended yet).
  std::shared_ptr<const std::string> Get(uint64_t seq) const;
  // When event `seq` was appended (the `now` given to Append); InfinitePast if not held.
  absl::Time AppendedAt(uint64_t seq) const;

  // Forgets the offsets of streams without a message since `idle` before `now`.
  void ForgetIdleStreams(absl::Time now, absl::Duration idle);
  size_t streams() const { return stream_offsets_.size(); }
  size_t bytes() const { return bytes_; }

  // Calls `sink` with every event appended from now on, as stamped and encoded, and the
  // streams it is a message of (the bus's publisher takes them this way).
  using Sink = std::function<void(const v1::Event& event, const std::shared_ptr<const std::string>& encoded,
                                  const std::vector<StreamRef>& streams)>;
  void OnAppend(Sink sink) { on_append_ = std::move(sink); }

  // Calls `wake` once, on the next Append.
  void WaitForAppend(std::function<void()> wake) { waiters_.push_back(std::move(wake)); }

  const std::string& epoch() const { return epoch_; }
  uint64_t last_seq() const { return next_seq_ - 1; }
  uint64_t oldest_seq() const { return next_seq_ - events_.size(); }
  size_t size() const { return events_.size(); }

 private:
  std::string epoch_;
  size_t capacity_;
  size_t max_bytes_;
  size_t bytes_ = 0;         // of the encoded events held
  bool forgot_any_ = false;  // a stream was forgotten in this epoch: new ones start higher
  uint64_t next_seq_ = 1;
  struct Held {
    std::shared_ptr<const std::string> encoded;
    absl::Time appended_at;
  };
  std::deque<Held> events_;  // seq oldest_seq() .. last_seq()
  struct StreamState {
    uint64_t offset = 0;
    absl::Time last_used;
  };
  absl::flat_hash_map<std::string, StreamState> stream_offsets_;
  std::vector<std::function<void()>> waiters_;
  Sink on_append_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_CORE_EVENT_LOG_H_
