// Ingest's events on the bus (`--bus`): every event the event log takes, laid out as
// events/bus_layout.h says: a FANOUT part for each push stream it is a message of, appended to
// the JetStream stream `stream` on that push stream's subject (bus::StreamSubject under
// `prefix`) with that push stream's offset (bus::OffsetLog), and an EFFECTS part on
// `<prefix>.cluster` when every replica must act on it or it is of no push stream.
// So events outlive this process and a restart of ingest resets nobody's streams; the
// JetStream sequence orders the whole stream, as the event log's seq does.
//
// The io thread hands events over (Publish: a copy of a pointer, never a wait); a thread of
// the publisher's own appends what has queued up in pipelined batches, one round trip to the
// stream's leader per batch. While the bus is away or slower than intake, the queue grows;
// past half of `max_queue_bytes` it is Full() and ingest stops processing messages (they
// wait in the spool, and past its bounds in the broker, as when PostgreSQL is slow) until the
// queue is down to a quarter (then on_space runs). Only past `max_queue_bytes` itself, which
// that leaves room for, would events be dropped (and counted).
//
// Push replicas started with the same --bus read it (services/push/upstream/bus_link.h) and
// append their own API operations and membership to it; see docs/scaling.md.
#ifndef DEVBRIDGE_SERVICES_INGEST_BUS_EVENT_PUBLISHER_H_
#define DEVBRIDGE_SERVICES_INGEST_BUS_EVENT_PUBLISHER_H_

#include <cstddef>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/offset_log.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "events/bus_layout.h"
#include "services/ingest/core/event_log.h"

namespace devbridge::ingest {

struct BusOptions {
  std::vector<std::string> urls;  // from bus::ParseBusFlag; empty: no bus
  std::string node_id;            // names this process's messages (JetStream's duplicate check)
  std::string stream = events::kBusStream;
  std::string prefix = events::kBusPrefix;
  int replicas = 3;                        // copies of the stream (1 for a single server)
  absl::Duration max_age = absl::Hours(24);  // how long the bus keeps events (recover's reach)
  size_t max_queue_bytes = size_t{64} << 20;
  size_t max_batch = 256;
};

class EventPublisher {
 public:
  // Connects, creates the stream if it is missing, and starts the publishing thread.
  static absl::StatusOr<std::unique_ptr<EventPublisher>> Start(BusOptions options,
                                                              common::MetricsRegistry* metrics);
  // Appends what is queued (for at most `drain` more), then stops.
  ~EventPublisher();
  EventPublisher(const EventPublisher&) = delete;
  EventPublisher& operator=(const EventPublisher&) = delete;

  // Io thread: queues `encoded` (an Event as EventLog keeps it) for each of `streams`, and for
  // the cluster subject when `effects_part` (events::HasEffectsPart).
  void Publish(std::shared_ptr<const std::string> encoded, const std::vector<StreamRef>& streams,
               bool effects_part) ABSL_LOCKS_EXCLUDED(mu_);

  // Any thread. True while the queue holds half of max_queue_bytes or more: take no more
  // messages. `on_space` runs (on the publisher's thread) when it is down to a quarter again.
  bool Full() const { return full_.load(); }
  void SetOnSpace(std::function<void()> on_space) ABSL_LOCKS_EXCLUDED(mu_);

  // The epoch every push stream has on this bus: the JetStream stream's creation time, so it
  // changes only when the stream (and so the history) is created anew.
  const std::string& epoch() const { return epoch_; }
  // Events appended (one per push stream), and waiting to be.
  uint64_t appended() const { return appended_->Value(); }
  size_t queued() const ABSL_LOCKS_EXCLUDED(mu_);

  absl::Duration drain = absl::Seconds(5);

 private:
  struct Item {
    std::shared_ptr<const std::string> encoded;
    StreamRef stream;  // empty: the EFFECTS part, on the cluster subject
    std::string id;    // JetStream message id: the same on every try
  };
  // The batch's entries for `batch`, each event decoded once however many parts it has.
  std::vector<bus::OffsetLog::Entry> Entries(const std::vector<Item>& batch) const;
  EventPublisher(BusOptions options, std::unique_ptr<bus::Connection> connection, std::string epoch,
                 common::MetricsRegistry* metrics);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  BusOptions options_;
  std::unique_ptr<bus::Connection> connection_;
  std::string epoch_;
  std::shared_ptr<spdlog::logger> log_;
  common::LogLimiter error_log_{absl::Seconds(10)};
  common::Counter* appended_;
  common::Counter* dropped_;
  common::Counter* errors_;
  common::Counter* conflicts_;
  common::Gauge* queue_bytes_;
  common::Histogram* batch_ms_;

  mutable common::Mutex mu_;
  common::CondVar cv_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_space_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> full_{false};
  uint64_t next_id_ = 0;  // io thread
  std::thread thread_;
};

}  // namespace devbridge::ingest

#endif  // DEVBRIDGE_SERVICES_INGEST_BUS_EVENT_PUBLISHER_H_
