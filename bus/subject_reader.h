// Reads the messages of one subject (or a wildcard of them) of a JetStream stream in order,
// from a given position on, as they are appended: an *ordered* consumer, which the NATS
// client recreates by itself from the last message it delivered when it sees a gap or loses
// its server, so a reader sees every message once, in order, across a server's kill -9.
// Where messages carry offsets (OffsetLog's subjects), the reader also checks that they follow
// one another, and counts and logs a jump: events the stream lost (nats-server 2.9.10 was
// seen to hand a stream to a copy still behind, which wrote over what the others held).
// This is how a push replica takes the cluster subject and the streams its clients hold
// (interest routing, services/push/upstream/bus_link.h).
#ifndef DEVBRIDGE_BUS_SUBJECT_READER_H_
#define DEVBRIDGE_BUS_SUBJECT_READER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "bus/offset_log.h"
#include "common/metrics.h"
#include "common/mutex.h"

namespace devbridge::bus {

// What a SubjectReader knows and counts beyond the messages themselves (counters may be null).
struct ReaderTracking {
  // The offset of the subject's message just before `from`, when known: a jump right where
  // reading starts is found too.
  uint64_t after_offset = 0;
  common::Counter* repeated = nullptr;  // delivered again by the client, not handed over again
  common::Counter* gaps = nullptr;      // jumps in a subject's offsets: messages missing from it
};

class SubjectReader {
 public:
  // A message: where it is, and its subject and data. `position.offset` is 0 for a message
  // without the offset header (one not written by OffsetLog).
  using OnMessage = std::function<void(Position position, absl::string_view subject, absl::string_view data)>;

  // Starts reading `subject` of `stream` at stream sequence `from` (0: only what is appended
  // from now on). `on_message` runs on the NATS client's thread, one message at a time, in
  // stream order: a message at or below the last one handed over (the client has been seen
  // to deliver some again around a server's restart, as it recreates its consumer) is not
  // handed over again; on a subject without wildcards, a message whose offset does not follow
  // the last one's is handed over too, and the jump counted and logged.
  static absl::StatusOr<std::unique_ptr<SubjectReader>> Start(const Connection* connection,
                                                             const std::string& stream,
                                                             const std::string& subject, uint64_t from,
                                                             OnMessage on_message, ReaderTracking tracking = {});
  // Stops reading; `on_message` is not running and will not run once this returns.
  ~SubjectReader() { Stop(); }
  SubjectReader(const SubjectReader&) = delete;
  SubjectReader& operator=(const SubjectReader&) = delete;

  // The same as the destructor; last_sequence() is then final, but for ReadOn.
  void Stop();
  bool stopped() const { return sub_ == nullptr; }
  // Stopped: hands over (on this thread) the next messages of the subject after the last one,
  // up to `max`, read from the stream one request each, without a consumer: for a reader whose
  // consumer the servers do not create again for now (after a server's kill -9, 30 s and more
  // were seen). How many it handed over.
  absl::StatusOr<size_t> ReadOn(size_t max);
  // The stream sequence of the last message handed over (from - 1 before the first; 0 when
  // reading started with the live end and nothing came yet), and when it was handed over (the
  // start before the first). A reader far behind its subject's newest message for long has
  // stalled: the client could not create its consumer again after a server's loss, and
  // tries again only after missed heartbeats. Thread-safe.
  uint64_t last_sequence() const { return state_->last_sequence.load(); }
  // The offset of the last message handed over that had one (ReaderTracking::after_offset before).
  uint64_t last_offset() const { return state_->last_offset.load(); }
  absl::Time last_delivery() const { return absl::FromUnixMillis(state_->last_delivery_ms.load()); }

 private:
  // What the client's callbacks reach. Shared with the client (through a holder that
  // Completed deletes, once the client will call Deliver no more): a late callback finds it,
  // stopped, after the reader is gone.
  struct State {
    State(const Connection* c, std::string st, std::string su, OnMessage fn, ReaderTracking t)
        : connection(c), stream(std::move(st)), subject(std::move(su)),
          literal(subject.find_first_of("*>") == std::string::npos), on_message(std::move(fn)), tracking(t),
          last_offset(t.after_offset) {}
    const Connection* connection;
    const std::string stream;
    const std::string subject;
    const bool literal;  // one subject, so one count of offsets: a jump in them is checked
    common::Mutex mu;  // held while a message is handed over; Stop takes it
    bool stopped ABSL_GUARDED_BY(mu) = false;
    OnMessage on_message;
    const ReaderTracking tracking;
    std::atomic<uint64_t> last_sequence{0};
    std::atomic<uint64_t> last_offset;
    std::atomic<int64_t> last_delivery_ms{0};
  };
  SubjectReader(const Connection* connection, std::string stream, std::string subject, OnMessage on_message,
                ReaderTracking tracking)
      : state_(std::make_shared<State>(connection, std::move(stream), std::move(subject), std::move(on_message),
                                       tracking)) {}
  // Hands `position` over (counting a jump in the offsets); then it is the last.
  static void HandOver(State& state, Position position, absl::string_view subject, absl::string_view data);
  static void Deliver(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  static void Completed(void* closure);

  std::shared_ptr<State> state_;
  natsSubscription* sub_ = nullptr;
};

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_SUBJECT_READER_H_
