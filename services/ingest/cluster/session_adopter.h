// A dead replica's MQTT session, taken over by a live one until the replica is back.
//
// mosquitto goes on handing a shared subscription's messages to a member whose persistent
// session is disconnected: they wait in that session until its client connects again. A
// replica killed for good would keep its share of the fleet waiting. So every replica records
// its MQTT client id in the bucket `devbridge_ingest_sessions` (entries kept for good), and
// every ttl / 3 looks for recorded sessions whose replica holds no node lease (a dead one's).
// One survivor takes the lease `adopt-<node>` and connects under the dead replica's client id
// with its persistent session: the broker hands over what waited there (flagged DUP when the
// dead replica may have taken it already) and goes on sharing to it. `on_message` gets each
// message with the session's IntakeSource, so the partitions' owners can tell a redelivery
// the dead replica had spooled (IntakeWindow).
//
// A replica's node lease also lapses while the bus does not answer it, so a session is
// adopted only after the bus has answered this adopter's every request for a whole ttl.
//
// When the dead replica's node lease is live again, the adopter disconnects and gives the
// lease back. The broker closes the older of two connections under one client id, so an
// adopted session's client never connects again by itself: the replica coming back closes it
// (lost()), and the next round decides again.
//
// Threads: a thread of its own runs the rounds; Pause() and Resume() from any thread.
#ifndef DEVBRIDGE_SERVICES_INGEST_CLUSTER_SESSION_ADOPTER_H_
#define DEVBRIDGE_SERVICES_INGEST_CLUSTER_SESSION_ADOPTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bus/connection.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "mqtt/client.h"

namespace devbridge::ingest::cluster {

// The bucket where every replica records its MQTT client id.
inline constexpr char kSessionBucket[] = "devbridge_ingest_sessions";
inline constexpr char kAdoptLeasePrefix[] = "adopt-";

struct AdopterOptions {
  // This replica's client, as a template for an adopted session's: URL, credentials, TLS,
  // subscriptions (the same shared ones). client_id is this replica's own.
  mqtt::Options mqtt;
  absl::Duration ttl = absl::Seconds(6);  // of the leases (the partitions' too)
  int replicas = 3;                       // copies of the session bucket
};

class SessionAdopter {
 public:
  // Runs on an adopted client's Paho thread, as mqtt::MessageHandler does; `session` is
  // IntakeSource(the adopted client id).
  using OnMessage = std::function<void(uint64_t session, absl::string_view topic, absl::string_view payload,
                                       uint16_t packet_id, bool dup)>;
  // Starts the thread; the first round runs at once. `connection` outlives the adopter.
  static std::unique_ptr<SessionAdopter> Start(const bus::Connection* connection, AdopterOptions options,
                                               OnMessage on_message, common::MetricsRegistry* metrics);
  // Disconnects every adopted session and gives its lease back.
  ~SessionAdopter();
  SessionAdopter(const SessionAdopter&) = delete;
  SessionAdopter& operator=(const SessionAdopter&) = delete;

  // Stop and start taking messages on every adopted session (and on those adopted later),
  // with the replica's own intake (mqtt::Client::Pause).
  void Pause() ABSL_LOCKS_EXCLUDED(mu_);
  void Resume() ABSL_LOCKS_EXCLUDED(mu_);
  int adopted() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  SessionAdopter(const bus::Connection* connection, AdopterOptions options, OnMessage on_message)
      : connection_(connection), options_(std::move(options)), on_message_(std::move(on_message)) {}
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  class Round;
  // Connects under `client_id`; null if the client cannot even be created (bad options).
  std::unique_ptr<mqtt::Client> Connect(const std::string& client_id) ABSL_LOCKS_EXCLUDED(mu_);
  void Drop(const std::string& client_id, const char* why) ABSL_LOCKS_EXCLUDED(mu_);

  const bus::Connection* connection_;
  const AdopterOptions options_;
  OnMessage on_message_;

  mutable common::Mutex mu_;
  common::CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::unique_ptr<mqtt::Client>> clients_ ABSL_GUARDED_BY(mu_);  // by client id

  common::Counter* adoptions_ = nullptr;
  common::Gauge* adopted_gauge_ = nullptr;
  std::thread thread_;
};

}  // namespace devbridge::ingest::cluster

#endif  // DEVBRIDGE_SERVICES_INGEST_CLUSTER_SESSION_ADOPTER_H_
