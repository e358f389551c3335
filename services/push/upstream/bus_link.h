// Push's link to the bus (`--bus`, docs/scaling.md): the events come from the replicated
// JetStream stream ingest appends to, not from one ingest's memory, so a replica goes on
// while ingest restarts or moves, and every replica sees each push stream with the same epoch
// and offsets. This replica's own Push API operations and membership go to the bus directly
// (events/bus_layout.h says how an event is laid out there); commands still go to ingest,
// which owns the devices (`commands`, ingest's gRPC link without its event stream).
//
// Interest routing: a replica reads the cluster subject (what every replica acts on) and,
// for each push stream it has connections to (Want), that stream's subject alone, not the
// whole stream of events. A stream's reader starts `history_size` messages back: those fill
// the recovery history and are sent to nobody (`on_event(event, past=true)`); then
// `on_stream_ready` runs (the recovers waiting for it go) and live messages follow. When the
// last connection to a stream leaves (Unwant), its reader stops.
//
// A thread of the link's own connects (trying again until the bus and its stream are there:
// ingest creates the stream), starts and stops the readers, and runs Publish and Head, all in
// the order they were asked for. Everything handed back runs on the io thread through `post`.
#ifndef DEVBRIDGE_SERVICES_PUSH_UPSTREAM_BUS_LINK_H_
#define DEVBRIDGE_SERVICES_PUSH_UPSTREAM_BUS_LINK_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/offset_log.h"
#include "bus/subject_reader.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "events/bus_layout.h"
#include "services/push/core/push_node.h"

namespace devbridge::push {

struct BusLinkOptions {
  std::vector<std::string> urls;  // from bus::ParseBusFlag
  std::string node_id;
  std::string stream = events::kBusStream;
  std::string prefix = events::kBusPrefix;
  size_t read_back = 1000;  // messages of a stream read back when a replica starts reading it (history_size)
  absl::Duration publish_deadline = absl::Seconds(5);
  absl::Duration retry = absl::Seconds(1);  // between tries to reach the bus and find the stream
};

class BusLink : public Upstream {
 public:
  using Poster = std::function<void(std::function<void()>)>;
  // `on_event(event, past)` gets the events of the cluster subject in order, with `seq` set to
  // their JetStream sequence, and those of each wanted stream in its order (seq 0: they are
  // not in the cluster subject's order); `past` for those read back. `on_state` hears when the
  // link is up (connected and reading).
  using OnStreamReady = std::function<void(const std::string& system_id, const std::string& group_name)>;
  BusLink(BusLinkOptions options, Poster post, std::function<void(v1::Event, bool past)> on_event,
          std::function<void(bool)> on_state, OnStreamReady on_stream_ready, Upstream* commands,
          common::MetricsRegistry* metrics);
  ~BusLink() override;
  BusLink(const BusLink&) = delete;
  BusLink& operator=(const BusLink&) = delete;

  void Start();
  // Announces this node's end (NODE_DOWN, so other replicas forget its clients now), then
  // stops reading and writing. Publish and Head calls not run yet fail with Unavailable.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  bool up() const override;
  void Publish(v1::PushMessage message, std::function<void(absl::Status)> done) override ABSL_LOCKS_EXCLUDED(mu_);
  // The newest message every replica acts on (the cluster subject's), as the sequence to
  // have applied; 0 when that message is from before this link started (nothing to wait for).
  void Head(std::function<void(absl::StatusOr<v1::HeadResponse>)> done) override ABSL_LOCKS_EXCLUDED(mu_);
  void Dispatch(v1::Command command, std::function<void(absl::StatusOr<v1::CommandResult>)> done) override {
    commands_->Dispatch(std::move(command), std::move(done));
  }
  // Io thread. Starts reading the stream's subject (false: OnStreamReady follows), or stops.
  bool Want(const std::string& system_id, const std::string& group_name) override ABSL_LOCKS_EXCLUDED(mu_);
  void Unwant(const std::string& system_id, const std::string& group_name) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Job = std::function<void(bus::OffsetLog* log)>;  // log is null when the link stops
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // Connects, finds the stream and starts reading; false when stopping first.
  bool Open() ABSL_LOCKS_EXCLUDED(mu_);
  // A stream's reader, on the NATS client's thread: `boundary` is the stream's newest message
  // when reading started (0: none), `generation` tells this reader from a later one.
  struct StreamRead {
    std::string system_id;
    std::string group_name;
    uint64_t boundary = 0;
    uint64_t generation = 0;
    bool ready_sent = false;
  };
  // A message of the cluster subject (`stream` null) or of a wanted stream.
  void OnMessage(bus::Position position, absl::string_view data, StreamRead* stream);
  // The link's thread: reads `stream` from `read_back` messages back.
  void StartReading(StreamRead stream, bus::OffsetLog* log);
  // Posts StreamReady for `stream` (once).
  void PostReady(StreamRead* stream);
  // Io thread: `generation`'s reader of the stream has read back; tell the node, unless the
  // stream was unwanted or wanted again since.
  void StreamReady(const std::string& system_id, const std::string& group_name, uint64_t generation);
  void Enqueue(Job job) ABSL_LOCKS_EXCLUDED(mu_);
  // Appends `message`'s parts, trying again until `give_up`.
  absl::Status Append(const v1::PushMessage& message, absl::Time give_up, bus::OffsetLog* log);
  void WaitToRetry() ABSL_LOCKS_EXCLUDED(mu_);
  // The link's thread, every kHealEvery: a reader quiet for kStalledAfter whose subject has
  // gone on without it is stopped and started again after the last message it handed over.
  // (An ordered consumer the client could not create again after a server's loss tries again
  // only after missed heartbeats: in the cluster suite, 4 of 30 streams were still stuck 40 s
  // after a nats-server's kill -9.) While the servers do not create its consumer (seen for
  // 30 s and more), it reads on from the stream, one request per message, and its consumer
  // is asked for again every kConsumerRetry.
  void Heal(bus::OffsetLog* log);
  // A reader of `subject` from stream sequence `from` whose messages go to OnMessage for
  // `stream` (null: the cluster subject); `after_offset`: the offset of the message before
  // `from`, when known (bus::ReaderTracking).
  absl::StatusOr<std::unique_ptr<bus::SubjectReader>> Read(const std::string& subject, uint64_t from,
                                                           StreamRead* stream, uint64_t after_offset = 0);
  // Starts the stopped `reader` again after its last message; false (logged) if the bus
  // refused (the stopped reader keeps its place for the next try).
  bool Restart(std::unique_ptr<bus::SubjectReader>& reader, const std::string& subject, StreamRead* stream);

  BusLinkOptions options_;
  Poster post_;
  std::function<void(v1::Event, bool)> on_event_;
  std::function<void(bool)> on_state_;
  OnStreamReady on_stream_ready_;
  Upstream* commands_;
  std::shared_ptr<spdlog::logger> log_;
  common::LogLimiter error_log_{absl::Seconds(10)};

  // Set by the link's thread before up_ turns true, and kept until Stop.
  std::unique_ptr<bus::Connection> connection_;
  std::string epoch_;
  uint64_t started_after_ = 0;  // the stream's last sequence when reading started
  std::unique_ptr<bus::SubjectReader> reader_;  // the cluster subject's
  std::atomic<bool> up_{false};
  // The link's thread: each wanted stream's reader, and what it reads for.
  struct Reader {
    std::unique_ptr<StreamRead> stream;
    std::unique_ptr<bus::SubjectReader> reader;
    absl::Time consumer_retry = absl::InfinitePast();  // stalled: when to ask for a consumer again
  };
  absl::flat_hash_map<std::string, Reader> readers_;
  // The io thread: each wanted stream's reader generation (a reader tells it is ready once).
  absl::flat_hash_map<std::string, uint64_t> wanted_;
  uint64_t generations_ = 0;
  absl::Time next_heal_ = absl::InfinitePast();  // the link's thread
  absl::Time cluster_consumer_retry_ = absl::InfinitePast();  // reader_'s Reader::consumer_retry
  size_t heal_cursor_ = 0;

  common::Mutex mu_;
  common::CondVar cv_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;

  common::Counter* read_;
  common::Counter* undecodable_;
  common::Counter* appended_;
  common::Counter* append_errors_;
  common::Gauge* streams_;
  common::Counter* restarts_;
  common::Counter* read_on_;
  bus::ReaderTracking tracking_;  // the counters every reader shares
};

}  // namespace devbridge::push

#endif  // DEVBRIDGE_SERVICES_PUSH_UPSTREAM_BUS_LINK_H_
