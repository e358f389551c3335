// mqtt::Client against the harness's real mosquitto: messages both ways, pause and resume
// with a persistent session, Stop while a connect is in flight, and a broker restart.
// Run under ThreadSanitizer by scripts/test --tsan (Paho's threads call into the client).
#include <atomic>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "mqtt/client.h"
#include "tests/component/test_env.h"

namespace devbridge::mqtt {
namespace {

using testing::MqttUrl;
using testing::UniqueTopicPrefix;
using testing::WaitFor;

// Collects what a client receives; called on Paho's threads, read on the test's.
class Inbox {
 public:
  MessageHandler Handler() {
    return [this](absl::string_view topic, absl::string_view payload, uint16_t, bool) {
      common::MutexLock lock(&mu_);
      last_ = absl::StrCat(topic, " ", payload);
      ++count_;
    };
  }
  int count() {
    common::MutexLock lock(&mu_);
    return count_;
  }
  std::string last() {
    common::MutexLock lock(&mu_);
    return last_;
  }

 private:
  common::Mutex mu_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<Client> MakeClient(const std::string& id, std::vector<std::pair<std::string, int>> subs,
                                   MessageHandler handler, bool clean_session = true) {
  Options o;
  o.url = MqttUrl();
  o.client_id = id;
  o.clean_session = clean_session;
  o.subscriptions = std::move(subs);
  o.min_backoff = absl::Milliseconds(20);
  o.max_backoff = absl::Milliseconds(200);
  auto client = Client::Create(std::move(o), std::move(handler));
  EXPECT_TRUE(client.ok()) << client.status();
  return std::move(client).value();
}

// `version`: the subscriber's MQTT protocol level. With 5, the session outlives the pause only
// if the client asked for a session expiry interval.
void PublishesReceivesPausesAndResumesWithoutLoss(int version) {
  const std::string prefix = UniqueTopicPrefix();
  Inbox inbox;
  std::atomic<int> state_changes{0};
  Options o;
  o.url = MqttUrl();
  o.client_id = prefix + "-sub";
  o.transport.version = version;
  o.clean_session = false;  // the broker keeps QoS 1 messages while paused
  o.subscriptions = {{prefix + "/#", 1}};
  auto sub = Client::Create(std::move(o), inbox.Handler(), [&](bool) { state_changes.fetch_add(1); });
  ASSERT_TRUE(sub.ok()) << sub.status();
  (*sub)->Start();
  auto pub = MakeClient(prefix + "-pub", {}, [](absl::string_view, absl::string_view, uint16_t, bool) {});
  pub->Start();
  ASSERT_TRUE(WaitFor([&] { return (*sub)->connected() && pub->connected(); }));

  // The subscription is made after the connect: publish until one arrives. One publisher's
  // QoS 1 messages on one topic arrive in order, so m99 is the last of all.
  for (int attempt = 0; attempt < 40 && inbox.count() == 0; ++attempt) {
    ASSERT_TRUE(pub->Publish(prefix + "/a", "first", 1).ok());
    WaitFor([&] { return inbox.count() > 0; }, absl::Milliseconds(250));
  }
  ASSERT_GT(inbox.count(), 0);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(pub->Publish(prefix + "/a", absl::StrCat("m", i), 1).ok());
  ASSERT_TRUE(WaitFor([&] { return inbox.last() == prefix + "/a m99"; })) << inbox.last();
  EXPECT_GE(inbox.count(), 101);

  (*sub)->Pause();
  EXPECT_TRUE((*sub)->paused());
  ASSERT_TRUE(WaitFor([&] { return !(*sub)->connected(); }));
  const int at_pause = inbox.count();
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(pub->Publish(prefix + "/b", absl::StrCat("p", i), 1).ok());
  (*sub)->Resume();
  ASSERT_TRUE(WaitFor([&] { return inbox.last() == prefix + "/b p49"; }))
      << "what was published while paused arrives after Resume: " << inbox.count() - at_pause;
  EXPECT_GE(inbox.count(), at_pause + 50);
  EXPECT_GE(state_changes.load(), 3) << "up, down at the pause, up again";
  pub->Stop();
  (*sub)->Stop();
  EXPECT_FALSE((*sub)->connected());
}

TEST(MqttClient, PublishesReceivesPausesAndResumesWithoutLoss) { PublishesReceivesPausesAndResumesWithoutLoss(4); }

TEST(MqttClient, TheSameWithMqtt5) { PublishesReceivesPausesAndResumesWithoutLoss(5); }

TEST(MqttClient, StopWhileConnectingLeavesNothingConnected) {
  const std::string prefix = UniqueTopicPrefix();
  for (int i = 0; i < 20; ++i) {
    auto client = MakeClient(absl::StrCat(prefix, "-", i), {{prefix + "/#", 1}},
                             [](absl::string_view, absl::string_view, uint16_t, bool) {});
    client->Start();
    client->Stop(absl::Seconds(2));  // often while the connect is still in flight
    EXPECT_FALSE(client->connected());
  }
}

TEST(MqttClient, ReconnectsAndSubscribesAgainAfterTheBrokerRestarts) {
  const std::string prefix = UniqueTopicPrefix();
  Inbox inbox;
  auto sub = MakeClient(prefix + "-sub", {{prefix + "/#", 1}}, inbox.Handler());
  sub->Start();
  auto pub = MakeClient(prefix + "-pub", {}, [](absl::string_view, absl::string_view, uint16_t, bool) {});
  pub->Start();
  ASSERT_TRUE(WaitFor([&] { return sub->connected() && pub->connected(); }));
  const uint64_t connects = sub->connects();

  ASSERT_TRUE(testing::Harness("stop-mqtt"));
  ASSERT_TRUE(WaitFor([&] { return !sub->connected(); }));
  ASSERT_TRUE(testing::Harness("start-mqtt"));
  ASSERT_TRUE(WaitFor([&] { return sub->connected() && pub->connected(); }, absl::Seconds(20)));
  EXPECT_GT(sub->connects(), connects);

  const int before = inbox.count();
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_TRUE(pub->Publish(prefix + "/after", "x", 1).ok());
    return inbox.count() > before;
  })) << "subscribed again after the reconnect";
  pub->Stop();
  sub->Stop();
}

}  // namespace
}  // namespace devbridge::mqtt
