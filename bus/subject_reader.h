// Reads the messages of one subject (or a wildcard of them) of a JetStream stream in order,
// from a given position on, as they are appended: an *ordered* consumer, which the NATS
// client recreates by itself from the last message it delivered when it sees a gap or loses
// its server, so a reader sees every message once, in order, across a server's kill -9.
// This is how a push replica takes the cluster subject and the streams its clients hold
// (interest routing, services/push/upstream/bus_link.h).
#ifndef DEVBRIDGE_BUS_SUBJECT_READER_H_
#define DEVBRIDGE_BUS_SUBJECT_READER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "bus/connection.h"
#include "bus/offset_log.h"

namespace devbridge::bus {

class SubjectReader {
 public:
  // A message: where it is, and its subject and data. `position.offset` is 0 for a message
  // without the offset header (one not written by OffsetLog).
  using OnMessage = std::function<void(Position position, absl::string_view subject, absl::string_view data)>;

  // Starts reading `subject` of `stream` at stream sequence `from` (0: only what is appended
  // from now on). `on_message` runs on the NATS client's thread, one message at a time.
  static absl::StatusOr<std::unique_ptr<SubjectReader>> Start(const Connection* connection,
                                                             const std::string& stream,
                                                             const std::string& subject, uint64_t from,
                                                             OnMessage on_message);
  // Stops reading; `on_message` is not running and will not run once this returns.
  ~SubjectReader();
  SubjectReader(const SubjectReader&) = delete;
  SubjectReader& operator=(const SubjectReader&) = delete;

 private:
  explicit SubjectReader(OnMessage on_message) : on_message_(std::move(on_message)) {}
  static void Deliver(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
  static void Completed(void* closure);

  OnMessage on_message_;
  natsSubscription* sub_ = nullptr;
  absl::Notification completed_;  // the client will call Deliver no more
};

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_SUBJECT_READER_H_
