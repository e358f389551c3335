// A plain NATS subscription (no JetStream) whose end is clean: destroying it unsubscribes
// and waits until its handler runs no more, so the handler's closure may go right after.
#ifndef DEVBRIDGE_BUS_SUBSCRIPTION_H_
#define DEVBRIDGE_BUS_SUBSCRIPTION_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "bus/connection.h"

namespace devbridge::bus {

class Subscription {
 public:
  // `handler(nc, sub, msg, closure)` runs on the client's delivery thread and owns `msg`.
  static absl::StatusOr<std::unique_ptr<Subscription>> Start(const Connection* connection,
                                                             const std::string& subject, natsMsgHandler handler,
                                                             void* closure);
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

 private:
  Subscription() = default;
  static void Completed(void* closure);
  natsSubscription* sub_ = nullptr;
  absl::Notification completed_;
};

}  // namespace devbridge::bus

#endif  // DEVBRIDGE_BUS_SUBSCRIPTION_H_
