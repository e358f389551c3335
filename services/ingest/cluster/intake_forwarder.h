// The first half of ingest's intake in a cluster (`--partitions`): every MQTT message this
// replica takes from its shared subscription, once in the spool, is appended to the intake
// stream on its device's partition subject, whichever replica owns the device; the owner
// reads it from there (app.cc). A thread of its own publishes in pipelined batches and, once
// JetStream has stored a whole batch, calls on_forwarded(last spool position) (the spool may
// then let it go) and writes that position to `mark_path`, where the next start resumes.
//
// Nothing is forwarded twice as two messages: each carries `Nats-Msg-Id: <spool id>-<seq>`
// (a message the spool could not write has none),
// so a batch sent again (unanswered, or after a crash between the store and the mark) is
// dropped by JetStream's duplicate check (two minutes), which the mark, written after every
// batch, stays well inside.
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_INTAKE_FORWARDER_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_INTAKE_FORWARDER_H_

#include <atomic>
#include <cstdint>
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
#include "common/metrics.h"
#include "common/mutex.h"
#include "services/ingest/cluster/partitions.h"

namespace devbridge::ingest::cluster {

struct ForwarderOptions {
  int partitions = 16;
  std::string spool_id;   // names this replica's messages (the duplicate check)
  std::string mark_path;  // where the last forwarded spool position is kept
  int replicas = 3;       // copies of the intake stream
  absl::Duration max_age = absl::Hours(24);  // how long the intake stream keeps a message
  size_t max_queue_bytes = size_t{32} << 20;  // Full() past this
  size_t max_batch = 256;
};

class IntakeForwarder {
 public:
  // Creates the intake stream if it is missing and starts the thread. `connection` outlives
  // the forwarder.
  static absl::StatusOr<std::unique_ptr<IntakeForwarder>> Start(const bus::Connection* connection,
                                                                ForwarderOptions options,
                                                                std::function<void(uint64_t)> on_forwarded,
                                                                common::MetricsRegistry* metrics);
  // The position `mark_path` holds (0 when it does not exist or cannot be read).
  static uint64_t ReadMark(const std::string& mark_path);
  // Forwards what is queued for at most `drain`, then stops.
  ~IntakeForwarder();
  IntakeForwarder(const IntakeForwarder&) = delete;
  IntakeForwarder& operator=(const IntakeForwarder&) = delete;

  // Queues the message at spool position `message.seq` (positions must grow; `source` is
  // filled in). Any thread, one at a time.
  void Forward(IntakeMessage message) ABSL_LOCKS_EXCLUDED(mu_);
  // True while the queue holds more than max_queue_bytes: stop handing messages over.
  bool Full() const { return queued_bytes_.load() > options_.max_queue_bytes; }
  // Called on the forwarder's thread when the queue falls under half its bound after Full().
  void SetOnSpace(std::function<void()> on_space) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Duration drain = absl::Seconds(5);

 private:
  struct Pending {
    uint64_t key;  // ours, to match the bus's answers to messages
    uint64_t seq;  // spool position; 0: not spooled (then no duplicate check either)
    std::string subject;
    std::string data;
  };
  IntakeForwarder(const bus::Connection* connection, ForwarderOptions options, jsCtx* js,
                  std::function<void(uint64_t)> on_forwarded, common::MetricsRegistry* metrics);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // Publishes `batch` until JetStream has stored all of it; false if stopping first.
  bool Send(const std::vector<Pending>& batch) ABSL_LOCKS_EXCLUDED(mu_, failed_mu_);
  static void OnError(jsCtx* js, jsPubAckErr* error, void* closure);
  void WriteMark(uint64_t seq);

  const bus::Connection* connection_;
  const ForwarderOptions options_;
  const uint64_t source_ = IntakeSource(options_.spool_id);
  jsCtx* js_;  // ours, for the asynchronous publishing handlers
  std::function<void(uint64_t)> on_forwarded_;

  mutable common::Mutex mu_;
  common::CondVar cv_;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool was_full_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stop_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::function<void()> on_space_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> queued_bytes_{0};

  common::Mutex failed_mu_;
  std::vector<uint64_t> failed_ ABSL_GUARDED_BY(failed_mu_);  // keys the bus refused: send again
  uint64_t next_key_ = 0;  // Forward()'s caller

  common::Counter* forwarded_;
  common::Counter* errors_;
  common::Histogram* batch_ms_;
  common::Gauge* queue_gauge_;
  std::thread thread_;
};

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_INTAKE_FORWARDER_H_
