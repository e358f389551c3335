// mqtt::Client over TLS and with each MQTT version, against a mosquitto of its own with TLS listeners
// and certificates made by openssl in the test: server-only TLS, a client certificate the
// broker requires, a CA that did not sign the broker's certificate (no connection, retries).
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "mqtt/client.h"
#include "tests/component/test_env.h"

namespace devbridge::mqtt {
namespace {

using testing::FreePort;
using testing::MqttUrl;
using testing::UniqueTopicPrefix;
using testing::WaitFor;

// Test certificates (testing::TestPki) and a mosquitto with two TLS listeners: `port`
// (server certificate only) and `mtls_port` (client certificate required).
class TlsBroker {
 public:
  TlsBroker() {
    const std::string& d = pki_.dir;
    port_ = FreePort();
    mtls_port_ = FreePort();
    std::ofstream(d + "/mosquitto.conf") << "allow_anonymous true\n"
                                         << "per_listener_settings false\n"
                                         << "listener " << port_ << " 127.0.0.1\n"
                                         << "cafile " << d << "/ca.pem\ncertfile " << d << "/server.pem\nkeyfile " << d
                                         << "/server.key\n"
                                         << "listener " << mtls_port_ << " 127.0.0.1\n"
                                         << "cafile " << d << "/ca.pem\ncertfile " << d << "/server.pem\nkeyfile " << d
                                         << "/server.key\nrequire_certificate true\n"
                                         << "log_dest stderr\nlog_type error\nlog_type warning\n"
                                         // Run as whoever runs the test (as root it would switch
                                         // to user mosquitto, who cannot read our key).
                                         << "user " << getpwuid(getuid())->pw_name << "\n";
    pid_ = testing::Spawn({"/usr/sbin/mosquitto", "-c", d + "/mosquitto.conf"}, d + "/mosquitto.log");
    EXPECT_TRUE(WaitFor([&] { return testing::PortOpen(port_) && testing::PortOpen(mtls_port_); }))
        << "mosquitto did not listen; see " << d << "/mosquitto.log";
  }
  ~TlsBroker() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      testing::WaitExit(pid_, absl::Seconds(5));
    }
  }
  const testing::TestPki& pki() const { return pki_; }
  int port() const { return port_; }
  int mtls_port() const { return mtls_port_; }

 private:
  testing::TestPki pki_;
  int port_ = 0, mtls_port_ = 0;
  int pid_ = -1;
};

class Inbox {
 public:
  MessageHandler Handler() {
    return [this](absl::string_view, absl::string_view payload, uint16_t, bool) {
      common::MutexLock lock(&mu_);
      last_ = std::string(payload);
    };
  }
  std::string last() {
    common::MutexLock lock(&mu_);
    return last_;
  }

 private:
  common::Mutex mu_;
  std::string last_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<Client> Connect(const std::string& url, Transport transport, const std::string& topic, Inbox* inbox) {
  Options o;
  o.url = url;
  o.transport = std::move(transport);
  o.client_id = absl::StrCat("tls-test-", getpid(), "-", topic.size(), "-", rand());
  o.subscriptions = {{topic, 1}};
  o.min_backoff = absl::Milliseconds(50);
  o.max_backoff = absl::Milliseconds(200);
  auto client = Client::Create(std::move(o), inbox->Handler());
  EXPECT_TRUE(client.ok()) << client.status();
  if (!client.ok()) return nullptr;
  (*client)->Start();
  return std::move(client).value();
}

// Connected, subscribed, and a message to itself comes back.
bool RoundTrips(Client& client, Inbox& inbox, const std::string& topic) {
  if (!WaitFor([&] { return client.connected(); })) return false;
  return WaitFor([&] {
    (void)client.Publish(topic, "hello", 1);
    return inbox.last() == "hello";
  });
}

TEST(MqttTls, ServerCertificateCheckedAgainstTheCa) {
  TlsBroker broker;
  Transport t;
  t.ca_file = broker.pki().ca;
  Inbox inbox;
  const std::string topic = UniqueTopicPrefix() + "/tls";
  auto client = Connect(absl::StrCat("ssl://localhost:", broker.port()), t, topic, &inbox);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(RoundTrips(*client, inbox, topic));
  // mqtts:// is the same.
  Inbox inbox2;
  auto other = Connect(absl::StrCat("mqtts://127.0.0.1:", broker.port()), t, topic + "2", &inbox2);
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(RoundTrips(*other, inbox2, topic + "2"));
}

TEST(MqttTls, ClientCertificateWhenTheBrokerRequiresOne) {
  TlsBroker broker;
  const std::string topic = UniqueTopicPrefix() + "/mtls";
  Transport without;
  without.ca_file = broker.pki().ca;
  Inbox refused_inbox;
  auto refused = Connect(absl::StrCat("ssl://localhost:", broker.mtls_port()), without, topic, &refused_inbox);
  ASSERT_NE(refused, nullptr);
  EXPECT_TRUE(WaitFor([&] { return refused->connect_failures() >= 2; })) << "it keeps trying";
  EXPECT_FALSE(refused->connected());

  Transport with = without;
  with.cert_file = broker.pki().client_cert;
  with.key_file = broker.pki().client_key;
  Inbox inbox;
  auto client = Connect(absl::StrCat("ssl://localhost:", broker.mtls_port()), with, topic, &inbox);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(RoundTrips(*client, inbox, topic));
}

TEST(MqttTls, AWrongCaIsRefusedAndRetried) {
  TlsBroker broker;
  Transport t;
  t.ca_file = broker.pki().other_ca;
  Inbox inbox;
  auto client = Connect(absl::StrCat("ssl://localhost:", broker.port()), t, UniqueTopicPrefix() + "/x", &inbox);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(WaitFor([&] { return client->connect_failures() >= 2; })) << "it keeps trying";
  EXPECT_FALSE(client->connected());
  EXPECT_EQ(client->connects(), 0u);

  // mqtt_insecure skips the check (tests only).
  t.insecure = true;
  Inbox inbox2;
  const std::string topic = UniqueTopicPrefix() + "/insecure";
  auto insecure = Connect(absl::StrCat("ssl://localhost:", broker.port()), t, topic, &inbox2);
  ASSERT_NE(insecure, nullptr);
  EXPECT_TRUE(RoundTrips(*insecure, inbox2, topic));
}

TEST(MqttTls, TlsFilesWithAPlainUrlAreRefusedAtCreate) {
  Options o;
  o.url = "tcp://127.0.0.1:1883";
  o.client_id = "x";
  o.transport.ca_file = "/etc/hostname";
  EXPECT_FALSE(Client::Create(o, [](absl::string_view, absl::string_view, uint16_t, bool) {}).ok());
  o.url = "ssl://127.0.0.1:1883";
  o.transport.ca_file = "/nonexistent/ca.pem";
  EXPECT_FALSE(Client::Create(o, [](absl::string_view, absl::string_view, uint16_t, bool) {}).ok());
}

TEST(MqttVersion, EveryVersionTalksToMosquitto) {
  for (const char* version : {"3.1", "3.1.1", "5"}) {
    absl::StatusOr<int> level = ParseVersion(version);
    ASSERT_TRUE(level.ok()) << level.status();
    Transport t;
    t.version = *level;
    Inbox inbox;
    const std::string topic = absl::StrCat(UniqueTopicPrefix(), "/v", *level);
    auto client = Connect(MqttUrl(), t, topic, &inbox);
    ASSERT_NE(client, nullptr);
    EXPECT_TRUE(RoundTrips(*client, inbox, topic)) << version;
  }
  EXPECT_FALSE(ParseVersion("3").ok());
}

}  // namespace
}  // namespace devbridge::mqtt
