// An MQTT client on Paho MQTT C (async): connects in the background, reconnects with
// exponential backoff, subscribes again after every connect, and can pause intake.
//
// Callbacks run on Paho's threads and must not block. Paho acknowledges a QoS 1 message
// when it arrives, before the handler sees it, so a handler cannot refuse one without
// losing it: a consumer that is full takes the message and calls Pause(), which
// disconnects (keeping a persistent session when clean_session is false, so the broker
// holds what follows); Resume() connects again.
#ifndef DEVBRIDGE_MQTT_CLIENT_H_
#define DEVBRIDGE_MQTT_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "mqtt/redelivery_filter.h"

namespace devbridge::mqtt {

// How to reach the broker beyond its URL (CONTRACT §10.4): TLS for ssl:// and mqtts:// URLs,
// and the protocol version.
struct Transport {
  std::string ca_file;    // PEM CAs to trust; empty: the system's
  std::string cert_file;  // PEM client certificate (with key_file): the broker may require one
  std::string key_file;
  bool insecure = false;  // do not verify the broker's certificate or name (tests only)
  int version = 4;        // MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5
};

// `text` as a protocol level: "3.1" → 3, "3.1.1" → 4, "5" → 5.
absl::StatusOr<int> ParseVersion(absl::string_view text);
// True for ssl:// and mqtts:// URLs.
bool IsTlsUrl(absl::string_view url);

struct Options {
  std::string url = "tcp://127.0.0.1:1883";
  Transport transport;
  std::string client_id;
  std::string username;
  std::string password;
  bool clean_session = true;
  int keepalive_seconds = 30;
  int max_inflight = 1000;          // our own QoS 1 publishes awaiting PUBACK
  int max_buffered = 100000;        // publishes kept while disconnected
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  std::vector<std::pair<std::string, int>> subscriptions;  // topic filter, QoS
  // Drop QoS 1/2 redeliveries of messages already taken (mqtt/redelivery_filter.h): a broker
  // resends what it did not see acknowledged when the connection closed first.
  bool drop_redeliveries = true;
  std::string log_name = "mqtt";    // logger name, e.g. "ingest.mqtt"
  // Connect again when an established connection is lost. False for a client that must not
  // fight another for its client id (the broker closes the older of two): once lost, it
  // stays down, and lost() says so.
  bool reconnect = true;
};

// Runs on a Paho thread; must take the message (copy what it needs) and return at once.
// `packet_id`: the MQTT packet identifier it came with (0 for QoS 0); a caller that keeps
// messages across restarts keeps it too and hands it back with RememberTaken(). `dup`: it
// came flagged DUP, a redelivery of a message this session may have taken already.
using MessageHandler =
    std::function<void(absl::string_view topic, absl::string_view payload, uint16_t packet_id, bool dup)>;
// Runs on a Paho thread when the broker acknowledged a publish (true) or Paho gave up on it
// (false). For QoS 0, true once it was written to the socket.
using DeliveryHandler = std::function<void(bool delivered)>;
// Runs on a Paho thread (or the client's supervisor thread) on every connect and disconnect.
using StateHandler = std::function<void(bool connected)>;

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Create(Options options, MessageHandler on_message,
                                                        StateHandler on_state = nullptr);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts connecting in the background; returns at once.
  void Start();
  // Disconnects and stops reconnecting. Blocks for at most `timeout`.
  void Stop(absl::Duration timeout = absl::Seconds(2));

  // Queues a publish; thread-safe, never blocks. While disconnected, up to max_buffered
  // messages wait for the next connect. Errors: the buffer is full, or the client stopped.
  absl::Status Publish(absl::string_view topic, absl::string_view payload, int qos,
                       bool retained = false);
  // The same, and tells `on_done` what became of it (not called when this returns an error).
  absl::Status Publish(absl::string_view topic, absl::string_view payload, int qos, bool retained,
                       DeliveryHandler on_done);

  // Before Start(): this message was taken under `packet_id` by an earlier run (a spool
  // kept it), so the broker's redelivery of it, which a restart may bring, is dropped.
  void RememberTaken(uint16_t packet_id, absl::string_view topic, absl::string_view payload);

  // Stops taking messages by disconnecting; Resume() connects again. Idempotent.
  void Pause();
  void Resume();

  bool connected() const { return connected_.load(); }
  bool paused() const { return paused_.load(); }
  // With reconnect off: an established connection was lost (the client stays down).
  bool lost() const { return lost_.load(); }
  uint64_t connects() const { return connects_.load(); }
  uint64_t connect_failures() const { return connect_failures_.load(); }
  uint64_t duplicates_dropped() const { return duplicates_.load(); }
  // Messages that arrived with the DUP flag (a redelivery), dropped or not.
  uint64_t dup_flagged() const { return dup_flagged_.load(); }

 private:
  Client(Options options, MessageHandler on_message, StateHandler on_state);
  void Supervise() ABSL_LOCKS_EXCLUDED(mu_);
  void RequestConnect() ABSL_LOCKS_EXCLUDED(mu_);
  void SetConnected(bool connected);

  // What Paho's callbacks do (PahoCallbacks in client.cc calls these with the exact
  // function types Paho expects; the Paho types stay out of this header).
  friend struct PahoCallbacks;
  void OnMessageArrived(absl::string_view topic, absl::string_view payload, int qos, bool dup, int packet_id);
  void OnConnectionLost(const char* cause);
  void OnConnectSuccess();
  void OnConnectFailure(const char* message, int code);
  void OnSubscribeFailure(int code);
  void OnTlsError(absl::string_view text);

  Options options_;
  MessageHandler on_message_;
  StateHandler on_state_;
  void* client_ = nullptr;  // MQTTAsync

  common::Mutex mu_;
  common::CondVar cv_;  // any of the three below changed
  bool want_connect_ ABSL_GUARDED_BY(mu_) = false;
  bool connecting_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> connected_{false};
  std::atomic<bool> paused_{false};
  std::atomic<bool> lost_{false};
  std::atomic<uint64_t> connects_{0};
  std::atomic<uint64_t> connect_failures_{0};
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> duplicates_{0};
  std::atomic<uint64_t> dup_flagged_{0};
  common::Mutex redelivery_mu_;  // Paho delivers on one thread; the lock costs nothing then
  RedeliveryFilter redeliveries_ ABSL_GUARDED_BY(redelivery_mu_);
  common::Mutex tls_error_mu_;
  std::string tls_error_ ABSL_GUARDED_BY(tls_error_mu_);  // OpenSSL's last words, for the connect failure log
  std::thread supervisor_;
};

// The broker port `url` names ("tcp://host:1883", "ssl://[::1]:8883"), or its scheme's
// default (1883; 8883 for ssl:// and mqtts://) when it names none.
int PortOf(const std::string& url);

}  // namespace devbridge::mqtt

#endif  // DEVBRIDGE_MQTT_CLIENT_H_
