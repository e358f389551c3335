#include "bus/subscription.h"

#include "absl/strings/str_cat.h"

namespace devbridge::bus {

absl::StatusOr<std::unique_ptr<Subscription>> Subscription::Start(const Connection* connection,
                                                                  const std::string& subject, natsMsgHandler handler,
                                                                  void* closure) {
  std::unique_ptr<Subscription> subscription(new Subscription());
  natsStatus s = natsConnection_Subscribe(&subscription->sub_, connection->nc(), subject.c_str(), handler, closure);
  if (s == NATS_OK) {
    s = natsSubscription_SetOnCompleteCB(subscription->sub_, &Subscription::Completed, subscription.get());
  }
  if (s != NATS_OK) {
    if (subscription->sub_ != nullptr) {
      natsSubscription_Unsubscribe(subscription->sub_);
      natsSubscription_Destroy(subscription->sub_);
      subscription->sub_ = nullptr;
    }
    return FromNats(s, absl::StrCat("subscribing to ", subject));
  }
  return subscription;
}

Subscription::~Subscription() {
  if (sub_ == nullptr) return;
  // Completed runs once the last handler call has returned: after the unsubscribe, or once
  // the connection was closed (then the unsubscribe fails at once).
  const bool unsubscribed = natsSubscription_Unsubscribe(sub_) == NATS_OK;
  completed_.WaitForNotificationWithTimeout(unsubscribed ? absl::Seconds(10) : absl::Seconds(2));
  natsSubscription_Destroy(sub_);
}

void Subscription::Completed(void* closure) { static_cast<Subscription*>(closure)->completed_.Notify(); }

}  // namespace devbridge::bus
